"""Proxy contracts, replayed exactly as each proxy sends them: nginx auth_request (2xx/401/403
only, real status in headers), Envoy ext_authz (200 allows, denials pass through), Traefik
ForwardAuth / Caddy forward_auth (X-Forwarded-* headers); plus pricing, retries and policies."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.gate.decision import Gate
from sidecar.gate.pricing import PricingError, load_pricing
from sidecar.http.app import create_app
from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import connect
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin
from tests.ports import free_port

Client = TestClient[web.Request, web.Application]

PRICING = """
default_cost = 1
[[route]]
name = "images"
methods = ["POST"]
path = "/v1/images/*"
cost = 10
[[route]]
name = "health"
path = "/v1/status"
cost = 0
[[route]]
name = "admin"
path = "/internal/*"
cost = "deny"
[[route]]
name = "search"
path = "/v1/search*"
cost = 1
rate_limit = { requests = 1, period_ms = 60000 }
"""


@pytest.fixture
def pricing_file(tmp_path: Path) -> Path:
    p = tmp_path / "pricing.toml"
    p.write_text(PRICING)
    return p


@pytest.fixture
async def proxy(
    settings: Settings, pricing_file: Path, redis: Any, clock: FakeClock
) -> AsyncIterator[tuple[Client, str]]:
    s = settings.model_copy(update={"pricing_file": pricing_file})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        yield c, await onboard(c, 25)


async def onboard(c: Client, credits: int) -> str:
    """Creates account acme with `credits` and returns a new API key of it."""
    await c.put("/v1/accounts/acme", json={}, headers=admin())
    grant = {"grant_id": "g", "credits": credits, "reason": "test"}
    await c.post("/v1/accounts/acme/grants", json=grant, headers=admin())
    r = await c.post("/v1/accounts/acme/keys", json={}, headers=admin())
    key: str = (await r.json())["key"]
    return key


def write(path: Path, text: str) -> None:
    path.write_text(text)


def nginx_headers(key: str, method: str, uri: str, rid: str = "") -> dict[str, str]:
    h = {"Authorization": f"Bearer {key}", "X-Original-Method": method, "X-Original-URI": uri}
    if rid:
        h["X-Request-Id"] = rid
    return h


async def test_nginx_allow_returns_200_with_upstream_headers(proxy: tuple[Client, str]) -> None:
    c, key = proxy
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "POST", "/v1/images/gen?q=1", "r1"))
    assert r.status == 200
    assert r.headers["X-Credits-Account"] == "acme"
    assert r.headers["X-Credits-Balance"] == "15"
    assert r.headers["X-Credits-Cost"] == "10"
    assert r.headers["X-Credits-Transaction"].startswith("tx_")


async def test_nginx_denials_are_403_carrying_the_real_status(proxy: tuple[Client, str]) -> None:
    c, key = proxy
    for rid in ("a", "b"):
        await c.get("/auth/nginx", headers=nginx_headers(key, "POST", "/v1/images/x", rid))
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "POST", "/v1/images/x", "c"))
    assert r.status == 403
    assert r.headers["X-Credits-Deny-Status"] == "402"
    assert r.headers["X-Credits-Reason"] == "insufficient_credits"
    assert r.headers["X-Credits-Balance"] == "5"
    await c.get("/auth/nginx", headers=nginx_headers(key, "GET", "/v1/search", "d"))
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "GET", "/v1/search?q=2", "e"))
    assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "429"
    assert int(r.headers["Retry-After"]) == 60


async def test_nginx_unknown_key_is_401_with_www_authenticate(proxy: tuple[Client, str]) -> None:
    c, _ = proxy
    r = await c.get("/auth/nginx", headers=nginx_headers("csk_nope", "GET", "/v1/x"))
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await c.get("/auth/nginx", headers={"X-Original-URI": "/v1/x"})
    assert r.status == 401 and r.headers["X-Credits-Reason"] == "missing_api_key"


async def test_retried_subrequest_with_same_request_id_charges_once(
    proxy: tuple[Client, str],
) -> None:
    c, key = proxy
    for _ in range(3):
        r = await c.get("/auth/nginx", headers=nginx_headers(key, "POST", "/v1/images/a", "same"))
        assert r.status == 200 and r.headers["X-Credits-Balance"] == "15"


async def test_free_route_authenticates_without_charging_and_denied_route_is_403(
    proxy: tuple[Client, str],
) -> None:
    c, key = proxy
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "GET", "/v1/status", "f"))
    assert r.status == 200 and r.headers["X-Credits-Balance"] == "25"
    assert "X-Credits-Transaction" not in r.headers
    r = await c.get("/auth/nginx", headers=nginx_headers("csk_nope", "GET", "/v1/status", "g"))
    assert r.status == 401
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "GET", "/internal/x", "h"))
    assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "403"
    assert r.headers["X-Credits-Reason"] == "route_denied"


async def test_envoy_ext_authz_allows_on_200_and_passes_denials_through(
    proxy: tuple[Client, str],
) -> None:
    """Envoy sends the original method, with the original path after path_prefix."""
    c, key = proxy
    h = {"Authorization": f"Bearer {key}", "X-Request-Id": "e1"}
    r = await c.post("/auth/envoy/v1/images/gen?x=1", headers=h)
    assert r.status == 200 and r.headers["X-Credits-Cost"] == "10"
    await c.post("/auth/envoy/v1/images/gen", headers={**h, "X-Request-Id": "e2"})
    r = await c.post("/auth/envoy/v1/images/gen", headers={**h, "X-Request-Id": "e3"})
    assert r.status == 402
    assert await r.json() == {
        "allowed": False,
        "reason": "insufficient_credits",
        "balance": 5,
        "required": 10,
    }
    r = await c.delete("/auth/envoy/internal/x", headers=h)
    assert r.status == 403


async def test_forward_auth_reads_x_forwarded_headers(proxy: tuple[Client, str]) -> None:
    """Traefik and Caddy send GET with X-Forwarded-Method / X-Forwarded-Uri."""
    c, key = proxy
    h = {
        "X-API-Key": key,
        "X-Forwarded-Method": "POST",
        "X-Forwarded-Uri": "/v1/images/gen",
        "X-Forwarded-Host": "api.example.com",
        "X-Forwarded-Proto": "https",
        "X-Request-Id": "f1",
    }
    r = await c.get("/auth/forward", headers=h)
    assert r.status == 200 and r.headers["X-Credits-Balance"] == "15"
    await c.get("/auth/forward", headers={**h, "X-Request-Id": "f2"})
    r = await c.get("/auth/forward", headers={**h, "X-Request-Id": "f3"})
    assert r.status == 402 and (await r.json())["reason"] == "insufficient_credits"
    r = await c.get("/auth/forward", headers={**h, "X-API-Key": "csk_bad"})
    assert r.status == 401


async def test_cost_header_is_honoured_only_when_trusted(
    settings: Settings, redis: Any, clock: FakeClock
) -> None:
    for trusted, expected in ((False, "24"), (True, "18")):
        await redis.flushall()
        s = settings.model_copy(update={"trust_cost_header": trusted})
        async with TestClient(TestServer(create_app(s, clock=clock))) as c:
            await c.put("/v1/accounts/acme", json={}, headers=admin())
            await c.post(
                "/v1/accounts/acme/grants",
                json={"grant_id": "g", "credits": 25, "reason": "test"},
                headers=admin(),
            )
            key = (await (await c.post("/v1/accounts/acme/keys", json={}, headers=admin())).json())[
                "key"
            ]
            h = {"Authorization": f"Bearer {key}", "X-Forwarded-Uri": "/x", "X-Credits-Cost": "7"}
            r = await c.get("/auth/forward", headers=h)
            assert r.headers["X-Credits-Balance"] == expected


async def test_sighup_reloads_pricing_and_a_broken_file_keeps_the_old_rules(
    proxy: tuple[Client, str], pricing_file: Path
) -> None:
    c, key = proxy
    write(pricing_file, '[[route]]\nname = "i"\npath = "/v1/images/*"\ncost = 3\n')
    os.kill(os.getpid(), signal.SIGHUP)
    r = await c.post("/auth/envoy/v1/images/a", headers={"Authorization": f"Bearer {key}"})
    assert r.headers["X-Credits-Cost"] == "3"
    write(pricing_file, "default_cost = -5\n")
    os.kill(os.getpid(), signal.SIGHUP)
    r = await c.post("/auth/envoy/v1/images/b", headers={"Authorization": f"Bearer {key}"})
    assert r.headers["X-Credits-Cost"] == "3"


def test_invalid_pricing_files_name_the_problem(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    for text, needle in [
        ("default_cost = 1.5", "default_cost"),
        ('[[route]]\nname = "a"\npath = "/x"\ncost = -1', "route.0.cost"),
        ('[[route]]\nname = "a"\npath = "/x"\ncost = 1\nprice = 2', "price"),
        (
            '[[route]]\nname="a"\npath="/x"\ncost=1\n[[route]]\nname="a"\npath="/y"\ncost=1',
            "unique",
        ),
        ("not toml [", "p.toml"),
    ]:
        p.write_text(text)
        with pytest.raises(PricingError, match=needle):
            load_pricing(p)


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_store_down_fails_closed_or_open(policy: str) -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}", retries=0)
    ledger = Ledger(dead, KeySpace())
    gate = Gate(ledger, ApiKeys(ledger), load_pricing(None), failure_policy=policy)  # type: ignore[arg-type]
    o = await gate.decide("GET", "/x", {"Authorization": "Bearer csk_anything"})
    assert (o.status, o.reason) == (
        (503, "store_unavailable") if policy == "fail_closed" else (200, "fail_open")
    )
    assert gate.stats.fail_open == (1 if policy == "fail_open" else 0)
    await dead.aclose()


async def test_shadow_mode_records_but_never_denies(
    settings: Settings, redis: Any, clock: FakeClock
) -> None:
    s = settings.model_copy(update={"shadow": True})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        await c.put("/v1/accounts/acme", json={}, headers=admin())
        await c.post(
            "/v1/accounts/acme/grants",
            json={"grant_id": "g", "credits": 1, "reason": "test"},
            headers=admin(),
        )
        key = (await (await c.post("/v1/accounts/acme/keys", json={}, headers=admin())).json())[
            "key"
        ]
        h = {"Authorization": f"Bearer {key}", "X-Forwarded-Uri": "/x"}
        r = await c.get("/auth/forward", headers={**h, "X-Request-Id": "s1"})
        assert r.status == 200 and r.headers["X-Credits-Balance"] == "0"
        r = await c.get("/auth/forward", headers={**h, "X-Request-Id": "s2"})
        assert r.status == 200 and r.headers["X-Credits-Shadow-Status"] == "402"
        r = await c.get("/auth/forward", headers={"X-Forwarded-Uri": "/x"})
        assert r.status == 200 and r.headers["X-Credits-Shadow-Status"] == "401"
