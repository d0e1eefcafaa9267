"""Spending limits in the SQL ledger: an account's and an API key's limit, what each spent
(moved by checks, holds, settles and refunds) and the windows their usages counted in reach
SQL, and `rebuild` restores Redis exactly from it."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.results import (
    Allowed,
    SpendLimit,
    SpendLimited,
)
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock
from tests.persistence.test_rebuild import redis_state
from tests.persistence.test_writer import drain, make_writer


async def test_limits_what_they_spent_and_their_windows_survive_rebuild(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    keys = ApiKeys(ledger)
    await ledger.configure_account("acme", spend_limit=SpendLimit(50, "month"))
    await ledger.grant("acme", "g", 100)
    capped, _ = await keys.create("acme", spend_limit=SpendLimit(10, "day"))
    free, _ = await keys.create("acme")
    reset, _ = await keys.create("acme", spend_limit=SpendLimit(3, "week"))
    await keys.set_spend_limit(reset.key_id, None)  # the record is re-encoded, the state gone
    usage = await ledger.deduct("acme", 6, "r1", key_id=capped.key_id)
    assert isinstance(usage, Allowed)
    assert isinstance(await ledger.deduct("acme", 5, "r2", key_id=capped.key_id), SpendLimited)
    assert isinstance(await ledger.deduct("acme", 9, "r3", key_id=free.key_id), Allowed)
    await ledger.hold("acme", "h1", 7, 60_000)
    await ledger.hold("acme", "h2", 4, 60_000)
    await ledger.settle("acme", "h2", 3)
    await ledger.refund("acme", "f1", usage.transaction_id, 2)  # room back for key and account
    await drain(make_writer(ledger, engine))
    assert await reconcile(redis, ledger.keys, engine) == []
    before = await redis_state(redis, ledger.keys)

    await redis.flushall()
    await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=ledger.retention_ms)
    after = await redis_state(redis, ledger.keys)
    name = ledger.keys.for_account("acme").account.encode()
    del before[name][1][b"clock"], after[name][1][b"clock"]
    records = ledger.keys.api_keys("acme").encode()
    assert {k: v for k, v in after.items() if k != records} == {
        k: v for k, v in before.items() if k != records
    }

    # key records: the same JSON (a removed limit's null may come back absent)
    def parsed(state: dict[bytes, Any]) -> dict[bytes, Any]:
        return {
            f: {k: v for k, v in orjson.loads(raw).items() if v is not None}
            for f, raw in state[records][1].items()
        }

    assert parsed(after) == parsed(before)
    listed = {k.key_id: k for k in await keys.list("acme")}
    capped_spend = listed[capped.key_id].spend
    assert capped_spend is not None and capped_spend.spent == 4
    assert listed[reset.key_id].spend_limit is None
    spend = (await ledger.balance("acme")).spend
    assert spend is not None and spend.spent == 6 - 2 + 9 + 7 + 3
    # the active hold still gives its room back when released, as before the rebuild
    await ledger.release("acme", "h1")
    spend = (await ledger.balance("acme")).spend
    assert spend is not None and spend.spent == 16


async def test_a_keys_limit_changed_after_its_row_was_written_reaches_sql_and_rebuild(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    keys = ApiKeys(ledger)
    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 100)
    capped, _ = await keys.create("acme", spend_limit=SpendLimit(10, "day"))
    uncapped, _ = await keys.create("acme", spend_limit=SpendLimit(3, "day"))
    await drain(make_writer(ledger, engine))  # the keys' rows are in SQL
    await keys.set_spend_limit(capped.key_id, SpendLimit(500, "day"))
    await keys.set_spend_limit(uncapped.key_id, None)
    await drain(make_writer(ledger, engine))
    await redis.flushall()
    await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=ledger.retention_ms)
    listed = {k.key_id: k for k in await keys.list("acme")}
    assert listed[capped.key_id].spend_limit == SpendLimit(500, "day")
    assert listed[uncapped.key_id].spend_limit is None
    assert isinstance(await ledger.deduct("acme", 20, "r1", key_id=capped.key_id), Allowed)
    assert isinstance(await ledger.deduct("acme", 20, "r2", key_id=uncapped.key_id), Allowed)
