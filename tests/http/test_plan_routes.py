"""Plans over HTTP (docs/plans.md, "Defining a plan"): PUT creates (201) or replaces (200),
GET lists and reads, DELETE deletes (204) unless accounts are on the plan (409 plan_in_use
with the count); a bad definition is a 422 naming the field and writes nothing; the admin
token only."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import create_app
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, service, snapshot

Client = TestClient[web.Request, web.Application]
PRO: dict[str, Any] = {
    "name": "Pro",
    "allowance": {
        "credits": 50000,
        "interval": "month",
        "mode": "accumulate",
        "rollover_max": 10000,
    },
    "rate_limit": {"requests": 100, "period_ms": 1000, "burst": 200},
    "default": False,
}
PRO_VIEW = {
    "plan": "pro",
    "name": "Pro",
    "allowance": {
        "credits": 50000,
        "interval": "month",
        "interval_count": 1,
        "mode": "accumulate",
        "rollover_max": 10000,
        "priority": -1,
        "trigger": "period",
    },
    "rate_limit": {"requests": 100, "period_ms": 1000, "burst": 200},
    "spend_limit": None,
    "default": False,
    "accounts": 0,
}
FREE = {"name": "Free", "allowance": {"credits": 1000, "interval": "month"}, "default": True}

pytestmark = pytest.mark.sql_free  # (its writer is off: SQL is never reached)


async def put(c: Client, plan: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    r = await c.put(f"/v1/plans/{plan}", json=body, headers=admin())
    return r.status, await r.json()


async def test_a_plan_is_created_read_listed_replaced_and_deleted(client: Client) -> None:
    assert await put(client, "pro", PRO) == (201, PRO_VIEW)
    r = await client.get("/v1/plans/pro", headers=admin())
    assert r.status == 200 and await r.json() == PRO_VIEW
    status, free = await put(client, "free", FREE)
    assert status == 201 and free["default"] is True and free["allowance"]["mode"] == "reset"
    r = await client.get("/v1/plans", headers=admin())
    assert [p["plan"] for p in (await r.json())["plans"]] == ["free", "pro"]

    status, body = await put(client, "pro", PRO | {"default": True, "rate_limit": None})
    assert status == 200 and body["default"] is True and body["rate_limit"] is None
    listed = (await (await client.get("/v1/plans", headers=admin())).json())["plans"]
    assert [(p["plan"], p["default"]) for p in listed] == [("free", False), ("pro", True)]

    r = await client.delete("/v1/plans/pro", headers=admin())
    assert r.status == 204 and await r.read() == b""
    r = await client.get("/v1/plans/pro", headers=admin())
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_plan"
    r = await client.delete("/v1/plans/pro", headers=admin())
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_plan"


async def test_a_plan_with_accounts_on_it_is_not_deleted(
    client: Client, redis: RedisClient
) -> None:
    await put(client, "pro", PRO)
    await redis.hset(KeySpace().plans(0), "n:pro", 3)  # account.lua counts them
    before = await snapshot(redis)
    r = await client.delete("/v1/plans/pro", headers=admin())
    assert r.status == 409
    error = (await r.json())["error"]
    assert error["code"] == "plan_in_use" and "3 account" in error["message"]
    assert await snapshot(redis) == before


async def test_plans_need_the_admin_token(client: Client) -> None:
    assert (await client.get("/v1/plans")).status == 401
    assert (await client.get("/v1/plans", headers=service())).status == 403
    r = await client.put("/v1/plans/pro", json=PRO, headers=service())
    assert r.status == 403


def _with(path: str, value: Any) -> dict[str, Any]:
    """PRO with the field at ``path`` (dotted) set to ``value`` (None: removed)."""
    body: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in PRO.items()}
    *parents, name = path.split(".")
    target = body
    for p in parents:
        target = target[p]
    if value is None:
        del target[name]
    else:
        target[name] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_with("name", ""), "name"),
        (_with("name", "x" * 201), "name"),
        (_with("name", None), "name"),
        (_with("allowance", None), "allowance"),
        (_with("allowance.credits", 0), "allowance.credits"),
        (_with("allowance.credits", 2**53), "allowance.credits"),
        (_with("allowance.credits", "5"), "allowance.credits"),
        (_with("allowance.interval", "hour"), "allowance.interval"),
        (_with("allowance.interval_count", 0), "allowance.interval_count"),
        (_with("allowance.interval_count", 1001), "allowance.interval_count"),
        (_with("allowance.mode", "keep"), "allowance.mode"),
        (_with("allowance.rollover_max", 50001), "allowance.rollover_max"),
        (_with("allowance.rollover_max", -1), "allowance.rollover_max"),
        (_with("allowance.mode", "reset"), "allowance.rollover_max"),
        (_with("allowance.priority", 2**31), "allowance.priority"),
        (_with("allowance.trigger", "invoice"), "allowance.trigger"),
        (_with("allowance.extra", 1), "allowance.extra"),
        (_with("rate_limit.requests", 0), "rate_limit.requests"),
        (_with("spend_limit", {"credits": 5, "interval_count": 2}), "spend_limit.interval_count"),
        (_with("spend_limit", {"credits": 0}), "spend_limit.credits"),
        (_with("default", "yes"), "default"),
        (_with("color", "red"), "color"),
    ],
)
async def test_a_bad_definition_is_refused_naming_the_field_and_writes_nothing(
    client: Client, redis: RedisClient, body: dict[str, Any], field: str
) -> None:
    await put(client, "pro", PRO)
    before = await snapshot(redis)
    status, answer = await put(client, "pro", body)
    assert status == 422, answer
    assert answer["error"]["field"] == field, answer
    assert await snapshot(redis) == before


@pytest.mark.parametrize("plan", ["p" * 65, "a b", "caf\u00e9"])
async def test_a_bad_plan_id_is_refused(client: Client, plan: str) -> None:
    status, answer = await put(client, plan, PRO)
    assert status == 422 and answer["error"]["field"] == "plan"


async def test_on_several_shards_a_plan_reaches_each_and_its_accounts_are_counted_on_all(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    keys = KeySpace(shards=4)
    app = create_app(settings.model_copy(update={"shards": 4}), clock=clock)
    async with TestClient(TestServer(app)) as c:
        assert (await put(c, "pro", PRO))[0] == 201
        for shard in range(4):
            assert await redis.hget(keys.plans(shard), "a:pro") is not None
        await redis.hset(keys.plans(2), "n:pro", 1)
        await redis.hset(keys.plans(3), "n:pro", 2)
        r = await c.get("/v1/plans/pro", headers=admin())
        assert (await r.json())["accounts"] == 3
        r = await c.get("/v1/plans", headers=admin())
        assert [p["accounts"] for p in (await r.json())["plans"]] == [3]
        await redis.hdel(keys.plans(3), "n:pro")
        r = await c.delete("/v1/plans/pro", headers=admin())
        assert r.status == 409 and "1 account" in (await r.json())["error"]["message"]
        await redis.hdel(keys.plans(2), "n:pro")
        assert (await c.delete("/v1/plans/pro", headers=admin())).status == 204
        for shard in range(4):
            assert await redis.hgetall(keys.plans(shard)) == {}


async def test_plans_and_the_accounts_on_them_end_to_end(client: Client) -> None:
    """The plan routes with the account side: the default plan reaches a new account and
    issues its allowance; a plan with an account on it is not deleted until none is; a
    definition changed is what the next account gets."""
    assert (await put(client, "free", FREE))[0] == 201
    r = await client.put("/v1/accounts/cust_42", json={}, headers=admin())
    assert r.status == 201 and (await r.json())["plan"] == "free"
    r = await client.get("/v1/accounts/cust_42/balance", headers=admin())
    assert (await r.json())["balance"] == 1000

    r = await client.delete("/v1/plans/free", headers=admin())
    assert r.status == 409 and "1 account" in (await r.json())["error"]["message"]
    status, _ = await put(client, "pro", PRO)
    assert status == 201
    r = await client.patch("/v1/accounts/cust_42", json={"plan": "pro"}, headers=admin())
    assert r.status == 200 and (await r.json())["plan"] == "pro"
    r = await client.get("/v1/plans", headers=admin())
    assert {p["plan"]: p["accounts"] for p in (await r.json())["plans"]} == {"free": 0, "pro": 1}
    assert (await client.delete("/v1/plans/free", headers=admin())).status == 204
    r = await client.delete("/v1/plans/pro", headers=admin())
    assert r.status == 409
    r = await client.patch("/v1/accounts/cust_42", json={"plan": None}, headers=admin())
    assert r.status == 200 and (await r.json())["plan"] is None
    assert (await client.delete("/v1/plans/pro", headers=admin())).status == 204

    # no default plan left: a new account gets none
    r = await client.put("/v1/accounts/cust_43", json={}, headers=admin())
    assert r.status == 201 and (await r.json())["plan"] is None
