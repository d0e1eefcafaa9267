"""What a check says of the rate limit it passed (docs/http-api.md "Response headers"): the
tightest of the account's, key's and route's limiters, in the answer (`rate_limit`) and, for the
proxies, as the IETF RateLimit header fields; nothing when no limiter applies, nor for a
replay; a dry run answers what the check would leave and leaves the limiter as it was."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, admin, service

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.sql_free  # the writer is off; nothing is read from SQL


async def check(c: Client, key: str, **more: Any) -> tuple[int, Any]:
    body = {"account": "acme", "cost": 1, "idempotency_key": key} | more
    r = await c.post("/v1/check", json=body, headers=service())
    return r.status, await r.json()


async def acme(c: Client, **settings: Any) -> None:
    r = await c.put("/v1/accounts/acme", json=settings, headers=admin())
    assert r.status in (200, 201), await r.text()
    grant = {"grant_id": "g", "credits": 100, "reason": "test"}
    r = await c.post("/v1/accounts/acme/grants", json=grant, headers=admin())
    assert r.status in (200, 201), await r.text()


async def test_a_check_without_a_rate_limit_says_none(client: Client) -> None:
    await acme(client)
    status, body = await check(client, "a")
    assert status == 200 and body["rate_limit"] is None


async def test_a_check_counts_down_the_accounts_limit_then_429(
    client: Client, clock: FakeClock
) -> None:
    await acme(client, rate_limit={"requests": 3, "period_ms": 60_000})
    left = []
    for i in range(3):
        status, body = await check(client, f"k{i}")
        assert status == 200
        rl = body["rate_limit"]
        assert rl["policy"] == "account" and rl["limit"] == 3 and rl["period_ms"] == 60_000
        left.append(rl["remaining"])
        assert rl["reset_ms"] == 20_000 * (i + 1)  # one request's share of the period each
    assert left == [2, 1, 0]
    status, body = await check(client, "k3")
    assert status == 429 and body["retry_after_ms"] == 20_000
    # a replay consumed nothing now: nothing to say
    status, body = await check(client, "k0")
    assert status == 200 and body["replayed"] is True and body["rate_limit"] is None
    clock.advance(20_000)
    # a dry run says what the check would leave, and leaves the limiter as it was
    for _ in range(2):
        status, body = await check(client, "dry", dry_run=True)
        assert status == 200 and body["rate_limit"]["remaining"] == 0
    status, body = await check(client, "k4")
    assert status == 200 and body["rate_limit"]["remaining"] == 0


async def test_the_tightest_limiter_is_the_one_reported(client: Client) -> None:
    await acme(client, rate_limit={"requests": 100, "period_ms": 1000})
    r = await client.post(
        "/v1/accounts/acme/keys",
        json={"name": "k", "rate_limit": {"requests": 5, "period_ms": 10_000, "burst": 2}},
        headers=admin(),
    )
    key = (await r.json())["key"]
    h = {"Authorization": f"Bearer {key}", "X-Forwarded-Uri": "/things", "X-Request-Id": "r1"}
    r = await client.get("/auth/forward", headers=h)
    assert r.status == 200
    # the key's: 2 of burst, 1 left; whole again in one request's share (2 s)
    assert r.headers["RateLimit-Policy"] == '"key";q=5;w=10'
    assert r.headers["RateLimit"] == '"key";r=1;t=2'
    r = await client.get("/auth/forward", headers=h | {"X-Request-Id": "r2"})
    assert r.headers["RateLimit"] == '"key";r=0;t=4'
    r = await client.get("/auth/forward", headers=h | {"X-Request-Id": "r3"})
    assert r.status == 429 and r.headers["Retry-After"] == "2"
    assert "RateLimit" not in r.headers


async def test_an_account_without_limits_gets_no_ratelimit_headers(client: Client) -> None:
    await acme(client)
    r = await client.post("/v1/accounts/acme/keys", json={"name": "k"}, headers=admin())
    key = (await r.json())["key"]
    h = {"Authorization": f"Bearer {key}", "X-Forwarded-Uri": "/things"}
    r = await client.get("/auth/forward", headers=h)
    assert r.status == 200 and "X-Credits-Balance" in r.headers
    assert "RateLimit" not in r.headers and "RateLimit-Policy" not in r.headers
