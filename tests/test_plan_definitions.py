"""Plan definitions (docs/plans.md) on every shard: plan.lua's fields, the default flag moving,
a delete refused while accounts are on the plan (n:<plan>, set here directly: account.lua
keeps it) or while it is being deleted, validation before any write, and a change that failed
part way across shards converging when made again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from sidecar import errors
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.plans import Plans, plan_from_json, run_plan_script
from sidecar.ledger.results import Allowance, Plan, RateLimit, SpendLimit
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock, outbox_entries, snapshot

PRO = Plan(
    name="Pro",
    allowance=Allowance(50_000, "month", mode="accumulate", rollover_max=10_000),
    rate_limit=RateLimit(100, 1000, 200),
    spend_limit=SpendLimit(70_000, "month"),
)
FREE = Plan(name="Free", allowance=Allowance(1000, "day", interval_count=7), default=True)


@pytest.fixture
def plans(ledger: Ledger) -> Plans:
    return Plans(ledger)


@pytest.fixture
def sharded(redis: RedisClient, clock: FakeClock) -> Iterator[Plans]:
    ledger = Ledger(redis, KeySpace(shards=4), retention_ms=3_600_000, clock=clock)
    yield Plans(ledger)
    ledger.close()


async def fields(
    redis: RedisClient, shard: int = 0, keys: KeySpace | None = None
) -> dict[str, str]:
    raw: dict[Any, Any] = await redis.hgetall((keys or KeySpace()).plans(shard))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def plan_lua(plans: Plans, shard: int, plan_id: str, mode: Any, *args: str | int) -> Any:
    """plan.lua as plans.py runs it (the outbox entry on shard 0 only)."""
    ledger = plans.ledger
    common: list[str | int] = [plan_id, ledger.clock(), "tx_test", ledger.retention_ms, ""]
    return await run_plan_script(
        ledger.redis, ledger.scripts.plan, ledger.keys, shard, common, mode, args, deadline_s=5
    )


async def test_a_plan_is_stored_as_the_scripts_read_it(plans: Plans, redis: RedisClient) -> None:
    assert await plans.put("pro", PRO) is True
    f = await fields(redis)
    assert f["a:pro"] == "50000:month:1:accumulate:10000:-1"
    assert f["r:pro"] == "100:1000:200"
    assert f["s:pro"] == "70000:month:1"
    assert "default" not in f and "n:pro" not in f and "x:pro" not in f
    assert orjson.loads(f["d:pro"]) == {
        "plan": "pro",
        "name": "Pro",
        "allowance": {
            "credits": 50_000,
            "interval": "month",
            "interval_count": 1,
            "mode": "accumulate",
            "rollover_max": 10_000,
            "priority": -1,
            "trigger": "period",
        },
        "rate_limit": {"requests": 100, "period_ms": 1000, "burst": 200},
        "spend_limit": {"credits": 70_000, "interval": "month", "interval_count": 1},
        "default": False,
    }
    assert await plans.get("pro") == PRO
    assert await plans.list() == {"pro": PRO}


async def test_replacing_a_plan_drops_limits_it_no_longer_has(
    plans: Plans, redis: RedisClient
) -> None:
    await plans.put("pro", PRO)
    assert await plans.put("pro", FREE) is False
    f = await fields(redis)
    assert f["a:pro"] == "1000:day:7:reset::-1"
    assert "r:pro" not in f and "s:pro" not in f
    assert await plans.get("pro") == FREE


async def test_a_lifetime_spending_limit_is_stored_as_the_accounts_is(
    plans: Plans, redis: RedisClient
) -> None:
    plan = Plan("Trial", Allowance(10, "year"), spend_limit=SpendLimit(500))
    await plans.put("trial", plan)
    assert (await fields(redis))["s:trial"] == "500:life:1"
    assert await plans.get("trial") == plan


async def test_each_change_appends_one_plan_entry(plans: Plans, redis: RedisClient) -> None:
    await plans.put("pro", PRO)
    await plans.remove("pro")
    put, deleted = await outbox_entries(redis)
    assert put["kind"] == "plan" and put["plan"] == "pro" and put["id"].startswith("tx_")
    assert put["definition"]["name"] == "Pro" and put["default"] is False
    assert put["deleted"] is False and put["ts"] == plans.ledger.clock()
    assert deleted["deleted"] is True and deleted["definition"] == put["definition"]


async def test_setting_the_default_moves_the_flag(plans: Plans, redis: RedisClient) -> None:
    await plans.put("free", FREE)
    assert (await fields(redis))["default"] == "free"
    await plans.put("pro", Plan("Pro", PRO.allowance, default=True))
    f = await fields(redis)
    assert f["default"] == "pro"
    assert orjson.loads(f["d:free"])["default"] is False
    assert (await plans.get("free")).default is False
    assert (await plans.get("pro")).default is True
    # the plan that lost the flag gets an entry too, so SQL moves it as well
    moved = [e for e in await outbox_entries(redis)][-2:]
    assert [(e["plan"], e["default"]) for e in moved] == [("free", False), ("pro", True)]


async def test_a_default_plan_put_without_the_flag_leaves_no_default(
    plans: Plans, redis: RedisClient
) -> None:
    await plans.put("free", FREE)
    await plans.put("pro", PRO)
    assert (await fields(redis))["default"] == "free"  # another plan: the flag stays
    await plans.put("free", Plan("Free", FREE.allowance))
    assert "default" not in await fields(redis)


async def test_deleting_the_default_plan_leaves_no_default(
    plans: Plans, redis: RedisClient
) -> None:
    await plans.put("free", FREE)
    await plans.remove("free")
    assert await fields(redis) == {}
    with pytest.raises(errors.UnknownPlan):
        await plans.get("free")


async def test_a_delete_is_refused_while_accounts_are_on_the_plan(
    plans: Plans, redis: RedisClient
) -> None:
    await plans.put("pro", PRO)
    await redis.hset(KeySpace().plans(0), "n:pro", 2)
    before = await snapshot(redis)
    with pytest.raises(errors.PlanInUse) as e:
        await plans.remove("pro")
    assert e.value.accounts == 2 and "2 account" in e.value.message
    assert await snapshot(redis) == before  # unretired: as it was
    await redis.hset(KeySpace().plans(0), "n:pro", 0)
    await plans.remove("pro")
    assert await fields(redis) == {}


async def test_deleting_an_unknown_plan_changes_nothing(plans: Plans, redis: RedisClient) -> None:
    await plans.put("pro", PRO)
    before = await snapshot(redis)
    with pytest.raises(errors.UnknownPlan):
        await plans.remove("basic")
    assert await snapshot(redis) == before


async def test_a_plan_being_deleted_cannot_be_changed(plans: Plans, redis: RedisClient) -> None:
    await plans.put("pro", PRO)
    assert await plan_lua(plans, 0, "pro", "retire") == [1, 0]
    before = await snapshot(redis)
    with pytest.raises(errors.PlanBusy):
        await plans.put("pro", FREE)
    assert await snapshot(redis) == before
    await plan_lua(plans, 0, "pro", "unretire")
    await plans.put("pro", FREE)
    assert await plans.get("pro") == FREE


async def test_plan_lua_deletes_only_a_retired_plan_without_accounts(
    plans: Plans, redis: RedisClient
) -> None:
    await plans.put("pro", PRO)
    with pytest.raises(errors.PlanBusy):
        await plan_lua(plans, 0, "pro", "delete")
    await redis.hset(KeySpace().plans(0), "n:pro", 1)
    assert await plan_lua(plans, 0, "pro", "retire") == [1, 1]
    with pytest.raises(errors.PlanInUse):
        await plan_lua(plans, 0, "pro", "delete")
    await redis.hdel(KeySpace().plans(0), "n:pro")
    assert await plan_lua(plans, 0, "pro", "delete") == 1
    assert await plan_lua(plans, 0, "pro", "delete") == 0  # a retry: nothing left to do
    assert await fields(redis) == {}


GOOD = [
    "Pro",
    "100:month:1:accumulate:50:-1",
    "10:1000:10",
    "500:week:2",
    "0",
    "period",
    "000000000000001:tx_test",
]


@pytest.mark.parametrize(
    ("index", "value", "field"),
    [
        (0, "", "name"),
        (0, "x" * 801, "name"),
        (0, "x" * 201, "name"),
        (1, "0:month:1:reset::-1", "allowance.credits"),
        (1, "9007199254740992:month:1:reset::-1", "allowance.credits"),
        (1, "100:hour:1:reset::-1", "allowance.interval"),
        (1, "100:month:0:reset::-1", "allowance.interval_count"),
        (1, "100:month:1001:reset::-1", "allowance.interval_count"),
        (1, "100:month:1:keep::-1", "allowance.mode"),
        (1, "100:month:1:reset:5:-1", "allowance.rollover_max"),
        (1, "100:month:1:accumulate:101:-1", "allowance.rollover_max"),
        (1, "100:month:1:accumulate:-1:-1", "allowance.rollover_max"),
        (1, "100:month:1:reset::2147483648", "allowance.priority"),
        (1, "100:month", "allowance"),
        (2, "0:1000:10", "rate_limit.requests"),
        (2, "10:0:10", "rate_limit.period_ms"),
        (2, "10:1000", "rate_limit"),
        (3, "0:week:1", "spend_limit.credits"),
        (3, "5:life:2", "spend_limit.interval_count"),
        (3, "5:fortnight:1", "spend_limit.interval"),
        (4, "yes", "default"),
        (5, "invoice", "allowance.trigger"),
        (6, "1:tx_test", "stamp"),
    ],
)
async def test_plan_lua_checks_everything_before_writing(
    plans: Plans, redis: RedisClient, index: int, value: str, field: str
) -> None:
    await plans.put("free", FREE)
    before = await snapshot(redis)
    args = list(GOOD)
    args[index] = value
    with pytest.raises(errors.InvalidInput) as e:
        await plan_lua(plans, 0, "pro", "put", *args)
    assert e.value.field == field, e.value.message
    assert await snapshot(redis) == before


async def test_plan_lua_refuses_a_bad_plan_id_or_mode(plans: Plans, redis: RedisClient) -> None:
    with pytest.raises(errors.InvalidInput):
        await plan_lua(plans, 0, "p" * 65, "put", *GOOD)
    with pytest.raises(errors.InvalidInput):
        await plan_lua(plans, 0, "pro", "rename")
    assert await snapshot(redis) == {}


async def test_a_name_is_counted_in_characters(plans: Plans) -> None:
    plan = Plan("\u00e9" * 200, Allowance(1, "day"))  # 400 bytes
    await plans.put("long", plan)
    assert (await plans.get("long")).name == plan.name


def test_a_definition_reads_back_as_its_plan() -> None:
    raw = orjson.dumps(
        {
            "plan": "x",
            "name": "X",
            "allowance": {"credits": 5, "interval": "week"},
            "rate_limit": None,
            "spend_limit": None,
        }
    )
    assert plan_from_json(raw) == Plan("X", Allowance(5, "week"))
    with pytest.raises(ValueError):
        plan_from_json(orjson.dumps({"name": "X", "allowance": {"credits": 5, "interval": "hour"}}))


# -- several shards ------------------------------------------------------------------------


async def test_a_plan_reaches_every_shard_and_sql_hears_of_it_once(
    sharded: Plans, redis: RedisClient
) -> None:
    keys = sharded.keys
    assert await sharded.put("pro", PRO) is True
    for shard in range(4):
        assert (await fields(redis, shard, keys))["a:pro"] == "50000:month:1:accumulate:10000:-1"
    assert [e["kind"] for e in await outbox_entries(redis, 0)] == ["plan"]
    for shard in (1, 2, 3):
        assert await redis.xlen(keys.outbox(shard)) == 0


async def test_a_delete_counts_the_accounts_of_every_shard(
    sharded: Plans, redis: RedisClient
) -> None:
    keys = sharded.keys
    await sharded.put("pro", PRO)
    await redis.hset(keys.plans(1), "n:pro", 2)
    await redis.hset(keys.plans(3), "n:pro", 1)
    assert await sharded.accounts("pro") == 3
    with pytest.raises(errors.PlanInUse) as e:
        await sharded.remove("pro")
    assert e.value.accounts == 3
    for shard in range(4):
        assert "x:pro" not in await fields(redis, shard, keys)
    await redis.hdel(keys.plans(1), "n:pro")
    await redis.hdel(keys.plans(3), "n:pro")
    await sharded.remove("pro")
    for shard in range(4):
        assert await fields(redis, shard, keys) == {}
    assert [e["deleted"] for e in await outbox_entries(redis, 0)] == [False, True]


async def test_a_put_that_failed_part_way_converges_when_made_again(
    sharded: Plans, redis: RedisClient
) -> None:
    keys = sharded.keys
    await redis.set(keys.plans(1), "not a hash")  # shard 1 refuses every write (WRONGTYPE)
    with pytest.raises(errors.StoreUnavailable):
        await sharded.put("pro", PRO)
    # shards 3 and 2 have it; shard 0, which reads see and whose entry reaches SQL, does not
    assert "d:pro" in await fields(redis, 3, keys) and "d:pro" in await fields(redis, 2, keys)
    with pytest.raises(errors.UnknownPlan):
        await sharded.get("pro")
    assert await redis.xlen(keys.outbox(0)) == 0
    await redis.delete(keys.plans(1))
    assert await sharded.put("pro", PRO) is True
    first = await fields(redis, 0, keys)
    for shard in range(1, 4):
        assert await fields(redis, shard, keys) == first
    assert len(await outbox_entries(redis, 0)) == 1


async def test_a_delete_that_failed_part_way_leaves_the_plan_as_it_was(
    sharded: Plans, redis: RedisClient
) -> None:
    keys = sharded.keys
    await sharded.put("pro", PRO)
    saved = keys.plans(1) + ":saved"  # (the same slot)
    await redis.rename(keys.plans(1), saved)
    await redis.set(keys.plans(1), "not a hash")
    with pytest.raises(errors.StoreUnavailable):
        await sharded.remove("pro")
    for shard in (0, 2, 3):  # the delete's marks cleared: the plan can change again
        assert "x:pro" not in await fields(redis, shard, keys)
    await redis.delete(keys.plans(1))
    await redis.rename(saved, keys.plans(1))
    await sharded.put("pro", FREE)
    await sharded.remove("pro")
    for shard in range(4):
        assert await fields(redis, shard, keys) == {}
