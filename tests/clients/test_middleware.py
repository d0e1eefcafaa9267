"""The framework middleware against a real sidecar: Starlette and FastAPI (httpx's ASGI
transport), Flask (its test client), Django (its test client, minimal settings). Each: a free
route, priced routes allowed with the header convention, 402 and 429 with the sidecar's body and
headers, no account -> 401, a request id repeated -> charged once, the sidecar stopped ->
503 (fail_closed) or let through (fail_open)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import django
import httpx
import pytest
from django.conf import settings as django_settings
from fastapi import Depends, FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from credit_sidecar import AsyncClient, CheckResult, Client
from credit_sidecar.middleware.asgi import CreditsMiddleware, RequireCredits
from credit_sidecar.middleware.flask import FlaskCredits, require_credits
from tests.clients.conftest import Sidecar, funded
from tests.conftest import SERVICE

KEYS = {"key-acme": "acme", "key-poor": "poor", "key-busy": "busy"}


def account_of(conn: HTTPConnection) -> str | None:
    return KEYS.get(conn.headers.get("x-api-key", ""))


@pytest.fixture
def accounts(admin_client: Client) -> Client:
    funded(admin_client, "acme", 100)
    funded(admin_client, "poor", 5)
    funded(admin_client, "busy", 100, rate_limit={"requests": 1, "period_ms": 60_000})
    return admin_client


def starlette_app(client: AsyncClient) -> Starlette:
    async def things(request: Request) -> JSONResponse:
        return JSONResponse({"things": []})

    app = Starlette(
        routes=[Route("/free", things), Route("/things", things), Route("/big", things)]
    )
    app.add_middleware(
        CreditsMiddleware,
        client=client,
        account=account_of,
        costs={"GET /things": 1, "/big": 10},
    )
    return app


def fastapi_app(client: AsyncClient) -> FastAPI:
    app = FastAPI()
    app.add_middleware(CreditsMiddleware, client=client, account=account_of)

    @app.get("/free")
    async def free() -> dict[str, str]:
        return {"ok": "free"}

    @app.get("/search", dependencies=[Depends(RequireCredits(10))])
    async def search() -> dict[str, str]:
        return {"ok": "search"}

    @app.get("/one")
    async def one(charge: Annotated[CheckResult, Depends(RequireCredits(1))]) -> dict[str, Any]:
        return {"balance": charge.balance}

    return app


async def asgi_get(
    app: Any, path: str, key: str | None = "key-acme", **headers: str
) -> httpx.Response:
    if key:
        headers["X-API-Key"] = key
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        return await http.get(path, headers=headers)


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
async def test_asgi(kind: str, accounts: Client, sidecar: Sidecar) -> None:
    client = AsyncClient(sidecar.url, SERVICE)
    app = starlette_app(client) if kind == "starlette" else fastapi_app(client)
    big = "/big" if kind == "starlette" else "/search"
    r = await asgi_get(app, "/free")
    assert r.status_code == 200 and "x-credits-balance" not in r.headers
    r = await asgi_get(app, big)
    assert r.status_code == 200
    assert (r.headers["x-credits-account"], r.headers["x-credits-balance"]) == ("acme", "90")
    assert (r.headers["x-credits-cost"], r.headers["x-credits-replayed"]) == ("10", "false")
    assert r.headers["x-credits-transaction"] and r.headers["x-credits-reason"] == "allowed"
    # the same request id again: charged once, flagged a replay
    r1 = await asgi_get(app, big, **{"X-Request-Id": "req-42"})
    r2 = await asgi_get(app, big, **{"X-Request-Id": "req-42"})
    assert r1.headers["x-credits-balance"] == r2.headers["x-credits-balance"] == "80"
    assert r2.headers["x-credits-replayed"] == "true"
    # 402: the sidecar's body as is
    r = await asgi_get(app, big, key="key-poor")
    assert r.status_code == 402
    assert r.json() == {
        "allowed": False,
        "reason": "insufficient_credits",
        "account": "poor",
        "balance": 5,
        "required": 10,
    }
    assert (r.headers["x-credits-reason"], r.headers["x-credits-balance"]) == (
        "insufficient_credits",
        "5",
    )
    # 429 with Retry-After
    await asgi_get(app, big, key="key-busy")
    r = await asgi_get(app, big, key="key-busy")
    assert r.status_code == 429 and r.json()["reason"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # no account
    r = await asgi_get(app, big, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    if kind == "fastapi":
        r = await asgi_get(app, "/one")
        assert r.json() == {"balance": 79} and r.headers["x-credits-balance"] == "79"
    assert accounts.balance("acme").balance == (79 if kind == "fastapi" else 80)
    # the sidecar stopped: 503 (fail_closed), or through uncharged (fail_open)
    sidecar.stop()
    r = await asgi_get(app, big)
    assert r.status_code == 503 and r.json()["error"]["code"] == "credits_unavailable"
    opened = AsyncClient(sidecar.url, SERVICE, failure_policy="fail_open", backoff=0.01)
    app = starlette_app(opened) if kind == "starlette" else fastapi_app(opened)
    r = await asgi_get(app, big)
    assert r.status_code == 200 and "x-credits-balance" not in r.headers
    await client.aclose()
    await opened.aclose()


async def test_rate_limit_headers_from_the_check(accounts: Client, sidecar: Sidecar) -> None:
    async with AsyncClient(sidecar.url, SERVICE) as client:
        r = await asgi_get(starlette_app(client), "/things", key="key-busy")  # 1 a minute
    assert r.status_code == 200
    assert r.headers["ratelimit-policy"] == '"account";q=1;w=60'
    assert r.headers["ratelimit"].startswith('"account";r=0;t=')


def flask_app(client: Client) -> Flask:
    app = Flask(__name__)
    FlaskCredits(
        app,
        client=client,
        account=lambda request: KEYS.get(request.headers.get("X-API-Key", "")),
        costs={"GET /things": 1},
    )

    @app.get("/things")
    def things() -> dict[str, Any]:
        return {"things": []}

    @app.get("/search")
    @require_credits(10)
    def search() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/free")
    def free() -> dict[str, Any]:
        return {"ok": True}

    return app


def test_flask(accounts: Client, sidecar: Sidecar) -> None:
    with Client(sidecar.url, SERVICE) as client:
        http = flask_app(client).test_client()
        assert (
            "X-Credits-Balance" not in http.get("/free", headers={"X-API-Key": "key-acme"}).headers
        )
        r = http.get("/things", headers={"X-API-Key": "key-acme"})
        assert r.status_code == 200 and r.headers["X-Credits-Balance"] == "99"
        r = http.get("/search", headers={"X-API-Key": "key-acme", "X-Request-Id": "r-1"})
        assert r.headers["X-Credits-Balance"] == "89" and r.headers["X-Credits-Cost"] == "10"
        r = http.get("/search", headers={"X-API-Key": "key-acme", "X-Request-Id": "r-1"})
        assert r.headers["X-Credits-Replayed"] == "true"
        r = http.get("/search", headers={"X-API-Key": "key-poor"})
        assert r.status_code == 402 and r.get_json()["required"] == 10
        assert r.headers["X-Credits-Reason"] == "insufficient_credits"
        http.get("/things", headers={"X-API-Key": "key-busy"})
        r = http.get("/things", headers={"X-API-Key": "key-busy"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert http.get("/things").status_code == 401
        sidecar.stop()
        r = http.get("/things", headers={"X-API-Key": "key-acme"})
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "credits_unavailable"
    with Client(sidecar.url, SERVICE, failure_policy="fail_open", backoff=0.01) as opened:
        r = flask_app(opened).test_client().get("/search", headers={"X-API-Key": "key-acme"})
        assert r.status_code == 200


# -- Django: minimal settings, a URLconf of this module ---------------------------------------


def django_account(request: Any) -> str | None:
    return KEYS.get(request.headers.get("X-API-Key", ""))


def _django_views() -> list[Any]:
    from django.http import JsonResponse
    from django.urls import path

    from credit_sidecar.middleware.django import credits

    def free(request: Any) -> JsonResponse:
        return JsonResponse({"ok": True})

    @credits(10)
    def search(request: Any) -> JsonResponse:
        return JsonResponse({"ok": True})

    return [path("free", free), path("things", free), path("search", search)]


urlpatterns: list[Any] = []


@pytest.fixture
def django_setup(sidecar: Sidecar) -> Iterator[None]:
    if not django_settings.configured:
        django_settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["testserver"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=["credit_sidecar.middleware.django.CreditsMiddleware"],
            SECRET_KEY="test",
            CREDIT_SIDECAR={},
        )
        django.setup()
        urlpatterns[:] = _django_views()
    from django.test.utils import override_settings

    conf = {
        "URL": sidecar.url,
        "TOKEN": SERVICE,
        "ACCOUNT": f"{__name__}.django_account",
        "COSTS": {"GET /things": 1},
        "CLIENT": {"backoff": 0.01},
    }
    with override_settings(CREDIT_SIDECAR=conf):
        yield


def test_django(accounts: Client, sidecar: Sidecar, django_setup: None) -> None:
    from django.test import Client as DjangoClient
    from django.test.utils import override_settings

    http = DjangoClient()
    acme = {"HTTP_X_API_KEY": "key-acme"}
    assert "X-Credits-Balance" not in http.get("/free", **acme)  # type: ignore[arg-type]
    r = http.get("/things", **acme)  # type: ignore[arg-type]
    assert r.status_code == 200 and r["X-Credits-Balance"] == "99"
    r = http.get("/search", HTTP_X_REQUEST_ID="d-1", **acme)  # type: ignore[arg-type]
    assert r["X-Credits-Cost"] == "10" and r["X-Credits-Balance"] == "89"
    r = http.get("/search", HTTP_X_REQUEST_ID="d-1", **acme)  # type: ignore[arg-type]
    assert r["X-Credits-Replayed"] == "true" and r["X-Credits-Balance"] == "89"
    r = http.get("/search", HTTP_X_API_KEY="key-poor")
    assert r.status_code == 402 and r.json()["balance"] == 5
    http.get("/things", HTTP_X_API_KEY="key-busy")
    r = http.get("/things", HTTP_X_API_KEY="key-busy")
    assert r.status_code == 429 and int(r["Retry-After"]) >= 1
    assert http.get("/things").status_code == 401
    sidecar.stop()
    assert http.get("/things", **acme).status_code == 503  # type: ignore[arg-type]
    conf = dict(django_settings.CREDIT_SIDECAR, FAILURE_POLICY="fail_open")
    with override_settings(CREDIT_SIDECAR=conf):
        assert DjangoClient().get("/search", **acme).status_code == 200  # type: ignore[arg-type]


def test_django_by_api_key(accounts: Client, sidecar: Sidecar, django_setup: None) -> None:
    """API_KEY instead of ACCOUNT: the sidecar resolves the key (this sidecar does not trust
    X-Credits-Cost: its own route table prices, 1 credit a request)."""
    from django.test import Client as DjangoClient
    from django.test.utils import override_settings

    key = accounts.create_key("acme").key
    old = accounts.create_key("acme")
    accounts.revoke_key(old.key_id)
    conf = dict(django_settings.CREDIT_SIDECAR)
    del conf["ACCOUNT"]
    conf["API_KEY"] = f"{__name__}.django_key"
    with override_settings(CREDIT_SIDECAR=conf):
        http = DjangoClient()
        r = http.get("/search", HTTP_X_API_KEY=key)
        assert r.status_code == 200
        assert (r["X-Credits-Account"], r["X-Credits-Balance"]) == ("acme", "99")
        r = http.get("/search", HTTP_X_API_KEY=old.key)
        assert r.status_code == 401 and r.json()["reason"] == "invalid_api_key"


def django_key(request: Any) -> str | None:
    key: str | None = request.headers.get("X-API-Key")
    return key
