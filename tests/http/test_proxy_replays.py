"""A proxy request id replays only the same request, only for the replay window: the same id on
another URI, method or key is a conflict (nginx: 403 carrying 409), never a free pass past the
balance or the rate limit; after the window the id is a new request. Refund records keep the
retention whatever the window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import create_app
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin
from tests.http.test_proxy import PRICING, Client, nginx_headers, onboard


@pytest.fixture
async def proxy(
    settings: Settings, tmp_path: Path, redis: Any, clock: FakeClock
) -> AsyncIterator[tuple[Client, str]]:
    (tmp_path / "pricing.toml").write_text(PRICING)
    s = settings.model_copy(update={"pricing_file": tmp_path / "pricing.toml"})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        yield c, await onboard(c, 25)


async def balance(c: Client) -> int:
    r = await c.get("/v1/accounts/acme/balance", headers=admin())
    value: int = (await r.json())["balance"]
    return value


async def test_same_request_id_on_other_uris_is_a_conflict_not_a_free_pass(
    proxy: tuple[Client, str],
) -> None:
    c, key = proxy
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "GET", "/v1/a", "rid"))
    assert r.status == 200
    for uri in ("/v1/b", "/v1/c", "/v1/a?x=1", "/v1/d/e", "/v1/f", "/v1/g", "/v1/h"):
        r = await c.get("/auth/nginx", headers=nginx_headers(key, "GET", uri, "rid"))
        # nginx turns any other status than 2xx/401/403 into a 500: a 403 carrying the real one
        assert r.status == 403, uri
        assert r.headers["X-Credits-Deny-Status"] == "409"
        assert r.headers["X-Credits-Reason"] == "idempotency_conflict"
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "POST", "/v1/a", "rid"))
    assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "409"
    assert await balance(c) == 24


async def test_envoy_and_forward_answer_a_reused_request_id_with_409(
    proxy: tuple[Client, str],
) -> None:
    c, key = proxy
    auth = {"Authorization": f"Bearer {key}", "X-Request-Id": "r-env"}
    assert (await c.get("/auth/envoy/v1/a", headers=auth)).status == 200
    r = await c.get("/auth/envoy/v1/b", headers=auth)
    assert r.status == 409
    assert (await r.json())["reason"] == "idempotency_conflict"
    fwd = auth | {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/c"}
    assert (await c.get("/auth/forward", headers=fwd)).status == 409
    assert await balance(c) == 24


async def test_a_replay_is_not_answered_200_once_the_balance_is_spent_elsewhere(
    proxy: tuple[Client, str],
) -> None:
    c, key = proxy
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "POST", "/v1/images/a", "old"))
    assert r.status == 200
    for i in range(15):
        await c.get("/auth/nginx", headers=nginx_headers(key, "GET", "/v1/x", f"spend{i}"))
    assert await balance(c) == 0
    # the old id on another request: refused, not a replay
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "POST", "/v1/images/b", "old"))
    assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "409"
    # the same request again is a replay of what was decided (the retry a proxy makes)
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "POST", "/v1/images/a", "old"))
    assert r.status == 200 and r.headers["X-Credits-Balance"] == "15"
    assert await balance(c) == 0


async def test_replays_on_other_paths_do_not_pass_the_rate_limit(
    proxy: tuple[Client, str],
) -> None:
    c, key = proxy  # /v1/search*: 1 request per minute
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "GET", "/v1/search?q=1", "s1"))
    assert r.status == 200
    for q in range(2, 6):
        h = nginx_headers(key, "GET", f"/v1/search?q={q}", "s1")
        r = await c.get("/auth/nginx", headers=h)
        assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "409"
    r = await c.get("/auth/nginx", headers=nginx_headers(key, "GET", "/v1/search?q=9", "s2"))
    assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "429"
    assert await balance(c) == 24


async def test_the_same_request_id_with_another_api_key_is_a_conflict(
    proxy: tuple[Client, str],
) -> None:
    c, key = proxy
    r = await c.post("/v1/accounts/acme/keys", json={}, headers=admin())
    other: str = (await r.json())["key"]
    assert (await c.get("/auth/nginx", headers=nginx_headers(key, "GET", "/v1/a", "k"))).status
    r = await c.get("/auth/nginx", headers=nginx_headers(other, "GET", "/v1/a", "k"))
    assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "409"


async def test_after_the_replay_window_the_request_id_is_a_new_request_but_stays_refundable(
    settings: Settings, tmp_path: Path, redis: RedisClient, clock: FakeClock
) -> None:
    (tmp_path / "pricing.toml").write_text(PRICING)
    s = settings.model_copy(
        update={"pricing_file": tmp_path / "pricing.toml", "proxy_replay_window_s": 1}
    )
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        key = await onboard(c, 25)
        h = nginx_headers(key, "GET", "/v1/a", "w")
        first = await c.get("/auth/nginx", headers=h)
        assert first.status == 200
        tx = first.headers["X-Credits-Transaction"]
        ks = KeySpace()
        assert 0 < await redis.pttl(ks.idempotency("acme", "w")) <= 1000
        assert await redis.pttl(ks.usage("acme", tx)) > 3_000_000  # the retention: an hour
        await asyncio.sleep(1.2)  # the window is Redis' own expiry: real time
        again = await c.get("/auth/nginx", headers=h)
        assert again.status == 200 and again.headers["X-Credits-Transaction"] != tx
        assert await balance(c) == 23
        refund = {"account": "acme", "refund_id": "rf", "transaction_id": tx, "reason": "test"}
        r = await c.post("/v1/refunds", json=refund, headers=admin())
        assert r.status == 201 and (await r.json())["refunded"] == 1


async def test_check_api_replays_only_the_same_description_and_metadata(
    client: Client,
) -> None:
    await client.put("/v1/accounts/acme", json={}, headers=admin())
    await client.post(
        "/v1/accounts/acme/grants",
        json={"grant_id": "g", "credits": 10, "reason": "test"},
        headers=admin(),
    )
    body = {"account": "acme", "cost": 2, "idempotency_key": "k", "description": "chat"}
    first = await client.post("/v1/check", json=body, headers=admin())
    assert first.status == 200
    replay = await client.post("/v1/check", json=body, headers=admin())
    assert (await replay.json())["replayed"] is True
    for other in ({"description": "other"}, {"metadata": {"x": 1}}):
        r = await client.post("/v1/check", json=body | other, headers=admin())
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "idempotency_conflict"
    r = await client.get("/v1/accounts/acme/balance", headers=admin())
    assert (await r.json())["balance"] == 8
