"""Requests decided by the customer's API key (``authorize``, the middlewares' ``api_key=``):
the sidecar finds the key's account, applies its limits, and refuses a revoked or unknown key
with its own 401, which the middleware answers as it is. The sidecar trusts ``X-Credits-Cost``
here (SIDECAR_TRUST_COST_HEADER), so the app's route table prices the requests."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from credit_sidecar import (
    AsyncClient,
    Client,
    InsufficientCredits,
    SpendLimitReached,
    Unauthorized,
)
from credit_sidecar.middleware.asgi import CreditsMiddleware
from credit_sidecar.middleware.flask import FlaskCredits
from sidecar.settings import Settings
from tests.clients.conftest import Sidecar, funded
from tests.conftest import SERVICE


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"trust_cost_header": True})


@pytest.fixture
def keys(admin_client: Client) -> dict[str, str]:
    funded(admin_client, "acme", 100)
    funded(admin_client, "poor", 5)
    made = {
        "acme": admin_client.create_key("acme", name="prod"),
        "revoked": admin_client.create_key("acme", name="old"),
        "poor": admin_client.create_key("poor"),
        "capped": admin_client.create_key("acme", spend_limit={"credits": 3, "interval": "day"}),
    }
    admin_client.revoke_key(made["revoked"].key_id, reason="leaked")
    out = {}
    for name, k in made.items():
        assert k.key is not None
        out[name] = k.key
    return out


def test_authorize_by_api_key(keys: dict[str, str], service_client: Client) -> None:
    c = service_client
    r = c.authorize(keys["acme"], "GET", "/v1/search?q=x", request_id="r-1", cost=10)
    assert (r.account, r.balance, r.cost, r.replayed) == ("acme", 90, 10, False)
    assert r.transaction_id
    again = c.authorize(keys["acme"], "GET", "/v1/search?q=x", request_id="r-1", cost=10)
    assert again.replayed and again.balance == 90
    with pytest.raises(Unauthorized) as e:
        c.authorize(keys["revoked"], "GET", "/v1/search", cost=1)
    assert (e.value.status, e.value.code) == (401, "invalid_api_key")
    with pytest.raises(Unauthorized):
        c.authorize("csk_nope", "GET", "/v1/search", cost=1)
    with pytest.raises(InsufficientCredits) as e2:
        c.authorize(keys["poor"], "GET", "/v1/search", cost=10)
    assert (e2.value.balance, e2.value.required) == (5, 10)
    with pytest.raises(SpendLimitReached) as e3:
        c.authorize(keys["capped"], "GET", "/v1/search", cost=5)
    assert e3.value.code == "key_spend_limit"


def key_of(conn: HTTPConnection) -> str | None:
    return conn.headers.get("x-api-key")


async def test_asgi_by_api_key(keys: dict[str, str], sidecar: Sidecar) -> None:
    async def search(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async with AsyncClient(sidecar.url, SERVICE) as client:
        app = Starlette(routes=[Route("/search", search)])
        app.add_middleware(CreditsMiddleware, client=client, api_key=key_of, costs={"/search": 10})
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            r = await http.get("/search", headers={"X-API-Key": keys["acme"]})
            assert r.status_code == 200
            assert (r.headers["x-credits-account"], r.headers["x-credits-balance"]) == (
                "acme",
                "90",
            )
            r = await http.get("/search", headers={"X-API-Key": keys["revoked"]})
            assert r.status_code == 401
            assert r.json() == {"allowed": False, "reason": "invalid_api_key"}
            assert r.headers["x-credits-reason"] == "invalid_api_key"
            assert "www-authenticate" in r.headers
            r = await http.get("/search", headers={"X-API-Key": keys["poor"]})
            assert r.status_code == 402 and r.json()["required"] == 10
            assert (await http.get("/search")).status_code == 401


def test_flask_by_api_key(keys: dict[str, str], sidecar: Sidecar) -> None:
    with Client(sidecar.url, SERVICE) as client:
        app = Flask(__name__)
        FlaskCredits(
            app,
            client=client,
            api_key=lambda request: request.headers.get("X-API-Key"),
            costs={"/search": 10},
        )

        @app.get("/search")
        def search() -> dict[str, Any]:
            return {"ok": True}

        http = app.test_client()
        r = http.get("/search?q=1", headers={"X-API-Key": keys["acme"]})
        assert r.status_code == 200 and r.headers["X-Credits-Balance"] == "90"
        r = http.get("/search", headers={"X-API-Key": keys["revoked"]})
        assert r.status_code == 401 and r.get_json()["reason"] == "invalid_api_key"
