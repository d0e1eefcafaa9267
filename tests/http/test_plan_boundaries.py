"""A plan's allowance at a period boundary, issued exactly once however the account is reached:
150 concurrent checks right after the boundary on one sidecar, on two sidecars sharing one
Redis, and the sweeper racing the hot path. Also run unchanged on the Redis Cluster suite
(tests/cluster/test_plans_on_cluster.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import create_app
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, outbox_entries, service
from tests.test_plans import DAY, define

Client = TestClient[web.Request, web.Application]

pytestmark = pytest.mark.sql_free  # (its writer is off: SQL is never reached)


@pytest.fixture
async def plan(settings: Settings, redis: RedisClient) -> AsyncIterator[None]:
    await define(redis, KeySpace(settings.shards), "daily", 1000, "day")
    yield


async def check(c: Client, key: str) -> int:
    body = {"account": "acme", "cost": 1, "idempotency_key": key}
    return (await c.post("/v1/check", json=body, headers=service())).status


async def issued(redis: RedisClient) -> list[dict[str, Any]]:
    return [
        e for e in await outbox_entries(redis) if e["kind"] == "txn" and e["type"] == "allowance"
    ]


async def balance(c: Client) -> int:
    r = await c.get("/v1/accounts/acme/balance", headers=admin())
    b: int = (await r.json())["balance"]
    return b


async def on_plan(c: Client, clock: FakeClock) -> None:
    r = await c.put("/v1/accounts/acme", json={"plan": "daily"}, headers=admin())
    assert r.status == 201
    for i in range(10):
        assert await check(c, f"before-{i}") == 200
    clock.advance(DAY)  # the boundary has just passed


async def test_150_checks_right_after_a_boundary_issue_the_allowance_once(
    plan: None, settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    async with TestClient(TestServer(create_app(settings, clock=clock))) as c:
        await on_plan(c, clock)
        statuses = await asyncio.gather(*(check(c, f"k{i}") for i in range(150)))
        assert set(statuses) == {200}
        assert len(await issued(redis)) == 2
        assert await balance(c) == 1000 - 150


async def test_two_sidecars_and_the_sweeper_at_a_boundary_issue_the_allowance_once(
    plan: None, settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    async with (
        TestClient(TestServer(create_app(settings, clock=clock))) as one,
        TestClient(TestServer(create_app(settings, clock=clock))) as two,
    ):
        await on_plan(one, clock)
        sweeper = Ledger(redis, KeySpace(settings.shards), clock=clock)
        try:
            keys = [f"k{i}" for i in range(150)]
            results = await asyncio.gather(
                *(check(one, k) for k in keys),
                *(check(two, k) for k in keys),  # the same ids: a retry racing its first send
                *(sweeper.sweep() for _ in range(5)),
            )
        finally:
            sweeper.close()
        assert set(results[:300]) == {200}
        assert len(await issued(redis)) == 2
        assert await balance(two) == 1000 - 150
