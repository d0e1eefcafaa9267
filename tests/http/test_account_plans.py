"""An account's plan over HTTP: `plan` and `plan_anchor` on PUT and PATCH, the default plan
of a new account, the plan on the balance, and bad input named by field (docs/plans.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import create_app
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, snapshot
from tests.test_plans import define, ms

Client = TestClient[web.Request, web.Application]

pytestmark = pytest.mark.sql_free  # (its writer is off: SQL is never reached)


@pytest.fixture
async def client(settings: Settings, redis: RedisClient, clock: FakeClock) -> AsyncIterator[Client]:
    await define(redis, KeySpace(settings.shards), "free", 100, "month")
    await define(redis, KeySpace(settings.shards), "pro", 1000, "month", mode="accumulate")
    async with TestClient(TestServer(create_app(settings, clock=clock))) as c:
        yield c


async def put(c: Client, account: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    r = await c.put(f"/v1/accounts/{account}", json=body, headers=admin())
    return r.status, await r.json()


async def patch(c: Client, account: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    r = await c.patch(f"/v1/accounts/{account}", json=body, headers=admin())
    return r.status, await r.json()


async def test_an_account_takes_a_plan_and_its_balance_shows_it(
    client: Client, clock: FakeClock
) -> None:
    clock.now = ms("2027-01-15T08:00:00")
    status, body = await put(
        client, "acme", {"plan": "free", "plan_anchor": "2026-12-31T00:00:00Z"}
    )
    assert status == 201
    assert (body["plan"], body["plan_anchor"]) == ("free", "2026-12-31T00:00:00.000Z")
    r = await client.get("/v1/accounts/acme/balance", headers=admin())
    b = await r.json()
    assert b["balance"] == 100
    assert b["plan"] == {
        "plan": "free",
        "anchor": "2026-12-31T00:00:00.000Z",
        "next_renewal_at": "2027-01-31T00:00:00.000Z",
    }
    assert [x["source"] for x in b["buckets"]] == ["allowance"]
    status, body = await patch(client, "acme", {"overdraft_limit": 5})  # the plan stays
    assert status == 200 and body["plan"] == "free"
    status, body = await patch(client, "acme", {"plan": "pro"})
    assert status == 200 and body["plan"] == "pro"
    r = await client.get("/v1/accounts/acme/balance", headers=admin())
    assert (await r.json())["balance"] == 1000


async def test_a_new_account_gets_the_default_plan_and_put_without_one_removes_it(
    client: Client, redis: RedisClient, settings: Settings
) -> None:
    await redis.hset(KeySpace(settings.shards).plans(0), "default", "free")
    status, body = await put(client, "acme", {})
    assert status == 201 and body["plan"] == "free"
    status, body = await put(client, "acme", {"overdraft_limit": 1})
    assert status == 200 and body["plan"] is None
    status, body = await put(client, "beta", {"plan": None})
    assert status == 201 and body["plan"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"plan": "nope"}, "plan"),
        ({"plan": "bad plan"}, "plan"),
        ({"plan": "free", "plan_anchor": "10000-01-01T00:00:00Z"}, "plan_anchor"),
        ({"plan": "free", "plan_anchor": "yesterday"}, "plan_anchor"),
        ({"plan_anchor": "2027-01-01T00:00:00Z"}, "plan_anchor"),
    ],
)
async def test_bad_plan_settings_are_422s_naming_the_field_and_change_nothing(
    client: Client, redis: RedisClient, body: dict[str, Any], field: str
) -> None:
    assert (await put(client, "acme", {}))[0] == 201
    before = await snapshot(redis)
    status, err = await patch(client, "acme", body)
    assert status == 422, err
    assert err["error"]["field"] == field
    assert await snapshot(redis) == before


async def test_a_plan_anchored_near_year_9999_answers_times_the_api_can_say(
    client: Client, redis: RedisClient, clock: FakeClock, settings: Settings
) -> None:
    await define(redis, KeySpace(settings.shards), "decade", 5, "year", count=10)
    clock.now = ms("9999-06-01T00:00:00")
    status, body = await put(client, "acme", {"plan": "decade"})
    assert status == 201, body
    r = await client.get("/v1/accounts/acme/balance", headers=admin())
    assert r.status == 200, await r.text()
    b = await r.json()
    assert b["plan"]["next_renewal_at"] == "9999-12-31T23:59:59.999Z"
    assert b["buckets"][0]["expires_at"] == "9999-12-31T23:59:59.999Z"
