"""Plans in the SQL ledger (on SQLite and PostgreSQL): the writer mirrors the kind=plan entries
(a definition as plan.lua wrote it, the default flag moving, a deletion keeping the row as
deleted), an older entry replayed never overwrites a newer one, a malformed one is a dead
letter; and `rebuild` puts every plan SQL has back on every shard before the accounts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar import errors
from sidecar.ledger import outbox
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.outbox import FIELD, PoisonEntry
from sidecar.ledger.plans import Plans
from sidecar.ledger.results import Allowance, Plan, RateLimit, SpendLimit
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.rebuild_plans import plan_counts
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock
from tests.persistence.conftest import rows
from tests.persistence.test_writer import drain, make_writer

PRO = Plan(
    "Pro",
    Allowance(50_000, "month", mode="accumulate", rollover_max=10_000, priority=-5),
    rate_limit=RateLimit(100, 1000, 200),
    spend_limit=SpendLimit(70_000, "week", 2),
)
FREE = Plan("Free", Allowance(1000, "day"), spend_limit=SpendLimit(5000), default=True)


@pytest.fixture
def sharded(redis: RedisClient, clock: FakeClock) -> Iterator[Ledger]:
    ledger = Ledger(redis, KeySpace(shards=3), retention_ms=3_600_000, clock=clock)
    yield ledger
    ledger.close()


async def drain_all(ledger: Ledger, engine: AsyncEngine) -> None:
    writer = make_writer(ledger, engine)
    for shard in range(ledger.keys.shards):
        await writer.ensure_group(shard)
        while await writer.step(shard):
            pass


async def plan_rows(engine: AsyncEngine) -> dict[str, tuple[Any, ...]]:
    found = await rows(
        engine, "SELECT id, name, definition, is_default, deleted, updated_ms FROM plans"
    )
    return {
        r[0]: (
            r[1],
            r[2] if isinstance(r[2], dict) else orjson.loads(r[2]),
            bool(r[3]),
            bool(r[4]),
            r[5],
        )
        for r in found
    }


async def test_the_writer_mirrors_plans_into_sql(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    plans = Plans(ledger)
    await plans.put("free", FREE)
    await plans.put("pro", PRO)
    await drain(make_writer(ledger, engine))
    got = await plan_rows(engine)
    stored = orjson.loads(await ledger.redis.hget(ledger.keys.plans(0), "d:pro") or b"")
    assert got["pro"] == ("Pro", stored, False, False, clock.now)
    assert Plan.from_json(got["free"][1]) == FREE and got["free"][2] is True

    clock.advance(1000)
    await plans.put("pro", Plan("Pro", PRO.allowance, default=True))  # the flag moves
    await plans.remove("free")
    await drain(make_writer(ledger, engine))
    got = await plan_rows(engine)
    assert got["pro"][2] is True and got["pro"][1]["rate_limit"] is None
    assert got["free"][2:] == (False, True, clock.now)  # kept, as deleted
    assert got["free"][1]["default"] is False


async def test_an_older_plan_entry_replayed_changes_nothing(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    plans = Plans(ledger)
    await plans.put("pro", PRO)
    await plans.put("pro", FREE)
    entries: Any = await ledger.redis.xrange(ledger.keys.outbox(0))
    first_id, first = entries[0]
    await drain(make_writer(ledger, engine))
    await ledger.redis.xadd(ledger.keys.outbox(0), {**first, b"orig_id": first_id})
    await drain(make_writer(ledger, engine))
    assert (await plan_rows(engine))["pro"][0] == "Free"


async def test_a_malformed_plan_entry_is_a_dead_letter(ledger: Ledger, engine: AsyncEngine) -> None:
    bad = {"kind": "plan", "id": "tx_1", "plan": "pro", "ts": 1, "definition": {"name": "x"}}
    await ledger.redis.xadd(ledger.keys.outbox(0), {FIELD: orjson.dumps(bad)})
    await Plans(ledger).put("free", FREE)
    await drain(make_writer(ledger, engine, max_attempts=1))
    dead: Any = await ledger.redis.xrange(ledger.keys.dead_letters(0))
    assert len(dead) == 1 and b"definition" in dead[0][1][b"dl_error"]
    assert list(await plan_rows(engine)) == ["free"]


GOOD: dict[str, Any] = {
    "kind": "plan",
    "id": "tx_1",
    "plan": "pro",
    "ts": 5,
    "definition": {"name": "Pro", "allowance": {"credits": 5, "interval": "day"}},
    "default": False,
    "deleted": False,
}


@pytest.mark.parametrize(
    "change",
    [
        {"plan": "a b"},
        {"plan": "p" * 65},
        {"id": 7},
        {"ts": -1},
        {"ts": "5"},
        {"definition": "{}"},
        {"definition": {"name": "Pro", "allowance": {"credits": "5", "interval": "day"}}},
        {"definition": {"name": "", "allowance": {"credits": 5, "interval": "day"}}},
        {"definition": {"name": "Pro", "allowance": {"credits": 5, "interval": "hour"}}},
        {"default": 1},
        {"deleted": None},
    ],
)
def test_the_plan_entry_decoder_refuses_what_plan_lua_never_writes(change: dict[str, Any]) -> None:
    assert outbox.plan(GOOD).plan == "pro"
    with pytest.raises(PoisonEntry):
        outbox.plan(GOOD | change)


async def test_rebuild_puts_every_plan_back_on_every_shard(
    sharded: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    plans, redis, keys = Plans(sharded), sharded.redis, sharded.keys
    await plans.put("free", FREE)
    await plans.put("pro", PRO)
    await plans.put("gone", PRO)
    await plans.remove("gone")
    await sharded.configure_account("acme")
    await drain_all(sharded, engine)
    before = {s: await redis.hgetall(keys.plans(s)) for s in range(keys.shards)}
    await redis.flushall()
    restored = await rebuild(
        redis, keys, engine, now_ms=clock.now, retention_ms=sharded.retention_ms
    )
    assert restored == 1
    for shard in range(keys.shards):
        assert await redis.hgetall(keys.plans(shard)) == before[shard]
    assert await plans.list() == {"free": FREE, "pro": PRO}
    for shard in range(keys.shards):  # a rebuild appends nothing for SQL to write again
        assert await redis.xlen(keys.outbox(shard)) == 0
    assert await reconcile(redis, keys, engine) == []


async def test_after_a_rebuild_the_accounts_on_a_plan_still_keep_it_from_being_deleted(
    sharded: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    plans, redis, keys = Plans(sharded), sharded.redis, sharded.keys
    await plans.put("pro", PRO)
    for account in ("a", "b", "c", "d"):
        await sharded.configure_account(account, plan="pro")
    await drain_all(sharded, engine)
    await redis.flushall()
    await rebuild(redis, keys, engine, now_ms=clock.now, retention_ms=sharded.retention_ms)
    assert await plans.accounts("pro") == 4
    with pytest.raises(errors.PlanInUse) as e:
        await plans.remove("pro")
    assert e.value.accounts == 4
    for account in ("a", "b", "c", "d"):
        await sharded.update_account(account, plan=None)
    await plans.remove("pro")
    assert await plans.list() == {}


async def test_reconcile_names_a_plan_redis_and_sql_disagree_on(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    plans = Plans(ledger)
    await plans.put("pro", PRO)
    await plans.put("free", FREE)
    await drain(make_writer(ledger, engine))
    assert await reconcile(ledger.redis, ledger.keys, engine) == []
    await ledger.redis.hdel(ledger.keys.plans(0), "d:free", "default")
    await ledger.redis.hset(ledger.keys.plans(0), "d:pro", orjson.dumps({"name": "Other"}))
    diffs = {(d.account, d.what) for d in await reconcile(ledger.redis, ledger.keys, engine)}
    assert diffs == {("plan free", "missing in redis"), ("plan pro", "definition")}


async def test_plan_counts_are_the_accounts_on_each_plan_per_shard(
    sharded: Ledger, engine: AsyncEngine
) -> None:
    keys = sharded.keys
    for account in ("a", "b", "c", "d", "e"):
        await sharded.configure_account(account)
    await drain_all(sharded, engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE accounts SET plan = 'pro' WHERE id IN ('a', 'b', 'c')"))
        await conn.execute(text("UPDATE accounts SET plan = 'free' WHERE id = 'd'"))
    counts = await plan_counts(engine, keys)
    expected: dict[int, dict[str, int]] = {}
    for account, plan in (("a", "pro"), ("b", "pro"), ("c", "pro"), ("d", "free")):
        per = expected.setdefault(keys.shard_of(account), {})
        per[plan] = per.get(plan, 0) + 1
    assert counts == expected
