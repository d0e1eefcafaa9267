"""Accounts on plans in the SQL ledger: allowances, their expiries and rollover cuts, plan
changes and removals reach SQL (reconcile clean), and `rebuild` restores Redis exactly: the
plan, its anchor, the next renewal (which then happens once, not again) and the shard's count
of accounts on each plan."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger.calls import Ledger
from sidecar.ledger.results import SpendLimit
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock, outbox_entries
from tests.persistence.test_rebuild import redis_state
from tests.persistence.test_writer import drain, make_writer
from tests.test_plans import DAY, define, ms


async def plans(redis: RedisClient, ledger: Ledger) -> None:
    await define(redis, ledger.keys, "free", 100, "day")
    await define(
        redis, ledger.keys, "pro", 1000, "week", mode="accumulate", rollover=300,
        spend=SpendLimit(2000, "week"),
    )  # fmt: skip


async def allowances(redis: RedisClient) -> int:
    return sum(
        1 for e in await outbox_entries(redis) if e["kind"] == "txn" and e["type"] == "allowance"
    )


async def test_plans_reach_sql_and_rebuild_restores_them_to_renew_once(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    await plans(redis, ledger)
    await ledger.configure_account("f", plan="free")
    await ledger.configure_account("p", plan="pro")
    await ledger.configure_account("moved", plan="free")
    await ledger.configure_account("left", plan="pro")
    await ledger.deduct("p", 900, "k1")  # 100 left: below the cap
    await ledger.deduct("f", 30, "k1")
    clock.advance(7 * DAY)  # f renews (reset), p renews (accumulate)
    await ledger.balance("f")
    await ledger.balance("p")
    await ledger.update_account("moved", plan="pro")  # free's allowance ends now
    await ledger.update_account("left", plan=None)  # pro's stays, nothing more
    clock.advance(1000)
    await drain(make_writer(ledger, engine))
    assert await reconcile(redis, ledger.keys, engine) == []
    before = await redis_state(redis, ledger.keys)

    await redis.flushall()
    await plans(redis, ledger)  # (the plans themselves: restored by the plans' own rebuild)
    await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=ledger.retention_ms)
    after = await redis_state(redis, ledger.keys)
    for account in ("f", "p", "moved", "left"):
        name = ledger.keys.for_account(account).account.encode()
        del before[name][1][b"clock"], after[name][1][b"clock"]

    def kept(state: dict[bytes, object]) -> dict[bytes, object]:
        # the checks' records are days past the retention (Redis expires them on its own clock)
        return {k: v for k, v in state.items() if b":i:" not in k and b":u:" not in k}

    assert kept(after) == kept(before)

    issued = await allowances(redis)  # (the outbox was flushed: counted from 0)
    assert issued == 0
    await ledger.balance("f")
    assert await allowances(redis) == 0  # already issued for this day: not again
    clock.advance(DAY)
    await ledger.balance("f")
    await ledger.balance("p")
    assert await allowances(redis) == 1  # f's next day; p's week is not over


async def test_concurrent_checks_at_a_boundary_then_reconcile_is_clean(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    await plans(redis, ledger)
    await ledger.configure_account("f", plan="free")
    clock.advance(DAY)
    await asyncio.gather(*(ledger.deduct("f", 1, f"k{i}") for i in range(150)), ledger.sweep())
    assert await allowances(redis) == 2
    await drain(make_writer(ledger, engine))
    assert await reconcile(redis, ledger.keys, engine) == []


# A year of monthly periods from anchors on the 29th, 30th and 31st (2028 is a leap year):
# each month's renewal on the anchor's day, clamped to the month's last day.
CLAMPED = {
    29: ["02-28", "03-29", "04-29", "05-29", "06-29", "07-29", "08-29", "09-29", "10-29",
         "11-29", "12-29", "01-29", "02-29"],
    30: ["02-28", "03-30", "04-30", "05-30", "06-30", "07-30", "08-30", "09-30", "10-30",
         "11-30", "12-30", "01-30", "02-29"],
    31: ["02-28", "03-31", "04-30", "05-31", "06-30", "07-31", "08-31", "09-30", "10-31",
         "11-30", "12-31", "01-31", "02-29"],
}  # fmt: skip


@pytest.mark.parametrize("day", sorted(CLAMPED))
async def test_a_year_of_months_from_the_29th_30th_and_31st_then_reconcile_is_clean(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine, day: int
) -> None:
    await define(redis, ledger.keys, "monthly", 7, "month")
    clock.now = ms(f"2027-01-{day}T12:00:00")
    await ledger.configure_account("a", plan="monthly", plan_anchor=ms(f"2027-01-{day}T09:30:00"))
    seen = []
    for _ in range(13):
        b = await ledger.balance("a")
        assert b.plan is not None
        clock.now = b.plan.next_renewal
        seen.append(datetime.fromtimestamp(clock.now / 1000, UTC).strftime("%m-%d %H:%M"))
        assert (await ledger.balance("a")).balance == 7  # reset: this month's 7 only
    assert seen == [f"{d} 09:30" for d in CLAMPED[day]]
    assert await allowances(redis) == 14
    await drain(make_writer(ledger, engine))
    assert await reconcile(redis, ledger.keys, engine) == []
