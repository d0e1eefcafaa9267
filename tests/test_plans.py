"""Plans with renewing allowances, on the account side (docs/plans.md): the allowance issued
once per period by the scripts (a check, a balance read, the sweeper), reset and accumulate
modes, rollover caps, periods nobody saw, plan changes and removal, the plan's limits, and
spending windows aligned to the anchor."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from sidecar.errors import InvalidInput
from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
    Insufficient,
    RateLimit,
    RateLimited,
    SpendLimit,
    SpendLimited,
)
from sidecar.ledger.units import MAX_CREDITS
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock, outbox_entries

DAY = 86_400_000


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


async def define(
    redis: RedisClient,
    keys: KeySpace,
    plan: str,
    credits: int,
    interval: str = "month",
    count: int = 1,
    mode: str = "reset",
    rollover: int | None = None,
    priority: int = -1,
    rate: RateLimit | None = None,
    spend: SpendLimit | None = None,
) -> None:
    """The plan as plan.lua stores it on every shard (docs/plans.md "How it is stored")."""
    roll = "" if rollover is None else str(rollover)
    for shard in range(keys.shards):
        fields = [f"a:{plan}", f"{credits}:{interval}:{count}:{mode}:{roll}:{priority}"]
        if rate:
            fields += [f"r:{plan}", f"{rate.requests}:{rate.period_ms}:{rate.burst}"]
        if spend:
            fields += [f"s:{plan}", spend.spec()]
        await redis.hset(keys.plans(shard), items=fields)


async def txns(redis: RedisClient, ttype: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in await outbox_entries(redis)
        if e["kind"] == "txn" and (ttype is None or e["type"] == ttype)
    ]


async def allowance_buckets(ledger: Ledger, account: str) -> dict[str, int]:
    b = await ledger.balance(account)
    return {x.id: x.remaining for x in b.buckets if x.source == "allowance"}


async def test_setting_a_plan_issues_the_current_period_at_once_and_each_period_once(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(redis, ledger.keys, "free", 100, "month")
    clock.now = ms("2027-01-15T08:00:00")
    await ledger.configure_account("a", plan="free", plan_anchor=ms("2026-12-01T00:00:00"))
    assert await allowance_buckets(ledger, "a") == {f"allowance:free:{ms('2027-01-01')}": 100}
    await ledger.deduct("a", 30, "k1")
    clock.now = ms("2027-02-01T00:00:00")  # the boundary: a balance read renews
    b = await ledger.balance("a")
    assert b.balance == 100
    assert await allowance_buckets(ledger, "a") == {f"allowance:free:{ms('2027-02-01')}": 100}
    assert (await ledger.balance("a")).balance == 100  # once
    issued = await txns(redis, "allowance")
    assert [(t["plan"], t["period"], t["amount"]) for t in issued] == [
        ("free", ms("2027-01-01"), 100),
        ("free", ms("2027-02-01"), 100),
    ]
    expired = await txns(redis, "expiry")
    assert [(t["amount"], t["bucket"]) for t in expired] == [
        (-70, f"allowance:free:{ms('2027-01-01')}")
    ]


async def test_many_concurrent_checks_right_after_a_boundary_issue_the_allowance_once(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(redis, ledger.keys, "free", 1000, "day")
    await ledger.configure_account("a", plan="free")
    clock.advance(DAY)
    results = await asyncio.gather(*(ledger.deduct("a", 1, f"k{i}") for i in range(150)))
    assert all(isinstance(r, Allowed) for r in results)
    assert len(await txns(redis, "allowance")) == 2
    assert (await ledger.balance("a")).balance == 1000 - 150


async def test_the_sweeper_renews_an_account_nobody_touches(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(redis, ledger.keys, "free", 10, "week")
    await ledger.configure_account("a", plan="free")
    clock.advance(7 * DAY)
    assert await ledger.sweep() >= 1
    assert len(await txns(redis, "allowance")) == 2
    assert await ledger.sweep() == 0


async def test_accumulate_keeps_unused_credits_and_cuts_them_to_the_rollover_cap(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(redis, ledger.keys, "pro", 100, "day", mode="accumulate", rollover=30)
    await ledger.configure_account("a", plan="pro")
    await ledger.deduct("a", 40, "k1")  # 60 left
    clock.advance(DAY)
    b = await ledger.balance("a")
    assert b.balance == 30 + 100
    cut = (await txns(redis, "expiry"))[-1]
    assert (cut["amount"], cut["reason"], cut["plan"]) == (-30, "rollover", "pro")
    clock.advance(DAY)  # 130 unused: 30 kept, 100 new
    assert (await ledger.balance("a")).balance == 130


async def test_periods_nobody_saw_are_renewed_once_as_the_design_says(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(redis, ledger.keys, "reset", 100, "day")
    await define(redis, ledger.keys, "acc", 100, "day", mode="accumulate")
    await define(redis, ledger.keys, "capped", 100, "day", mode="accumulate", rollover=30)
    for plan in ("reset", "acc", "capped"):
        await ledger.configure_account(plan, plan=plan)
        await ledger.deduct(plan, 10, "k")  # 90 left of the first period
    clock.advance(5 * DAY + 1000)  # five boundaries passed unseen
    balances = {p: (await ledger.balance(p)).balance for p in ("reset", "acc", "capped")}
    # reset: this period's 100; acc: 90 + 5 x 100; capped: the cap 30 + 100
    assert balances == {"reset": 100, "acc": 590, "capped": 130}
    issued = [t for t in await txns(redis, "allowance") if t["periods"] == 5]
    assert sorted((t["account"], t["amount"]) for t in issued) == [
        ("acc", 500),
        ("capped", 100),  # 60 of the 90 cut, 30 kept: the cap
        ("reset", 100),
    ]


async def test_months_are_anchored_to_the_anchors_day_clamped_to_the_months_end(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(redis, ledger.keys, "m", 1, "month")
    clock.now = ms("2027-01-31T12:00:00")
    await ledger.configure_account("a", plan="m", plan_anchor=ms("2027-01-31T10:00:00"))
    starts = []
    for _ in range(13):
        nxt = int(await redis.hget(ledger.keys.for_account("a").account, "pn"))  # type: ignore[arg-type]
        clock.now = nxt
        await ledger.balance("a")
        starts.append(datetime.fromtimestamp(nxt / 1000, UTC).strftime("%m-%d %H"))
    assert starts == [
        "02-28 10",
        "03-31 10",
        "04-30 10",
        "05-31 10",
        "06-30 10",
        "07-31 10",
        "08-31 10",
        "09-30 10",
        "10-31 10",
        "11-30 10",
        "12-31 10",
        "01-31 10",
        "02-29 10",  # 2028 is a leap year
    ]
    assert len(await txns(redis, "allowance")) == 14


async def test_another_plan_ends_the_old_allowance_now_and_removal_keeps_it(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(redis, ledger.keys, "free", 100, "month")
    await define(redis, ledger.keys, "pro", 1000, "month", mode="accumulate")
    await ledger.configure_account("a", plan="free")
    await ledger.deduct("a", 10, "k")
    clock.advance(1000)
    c = await ledger.update_account("a", plan="pro")
    assert (c.plan, c.plan_anchor) == ("pro", clock.now)
    cut = (await txns(redis, "expiry"))[-1]
    assert (cut["amount"], cut["reason"], cut["plan"]) == (-90, "plan_change", "free")
    assert (await ledger.balance("a")).balance == 1000
    clock.advance(1000)
    c = await ledger.update_account("a", plan=None)
    assert c.plan is None
    assert (await ledger.balance("a")).balance == 1000  # what it issued stays
    clock.advance(40 * DAY)
    assert (await ledger.balance("a")).balance == 1000  # and nothing more comes


async def test_the_plans_limits_apply_unless_the_account_sets_its_own(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(
        redis,
        ledger.keys,
        "capped",
        1000,
        "month",
        rate=RateLimit(1, 60_000, 2),
        spend=SpendLimit(5, "month"),
    )
    await ledger.configure_account("a", plan="capped", plan_anchor=ms("2027-01-10T00:00:00"))
    assert isinstance(await ledger.deduct("a", 3, "k1"), Allowed)
    assert isinstance(await ledger.deduct("a", 3, "k2"), SpendLimited)  # the plan's 5
    assert isinstance(await ledger.deduct("a", 2, "k3"), Allowed)
    assert isinstance(await ledger.deduct("a", 0, "k4"), RateLimited)  # burst 2 used
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.ends_at == ms("2027-02-10T00:00:00")  # the anchor's
    await ledger.update_account("a", rate_limit=RateLimit(100, 1000, 100))
    assert isinstance(await ledger.deduct("a", 0, "k5"), Allowed)


async def test_a_dry_run_at_a_boundary_counts_the_new_allowance_and_changes_nothing(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(redis, ledger.keys, "free", 10, "day")
    await ledger.configure_account("a", plan="free")
    await ledger.deduct("a", 10, "k1")
    clock.advance(DAY)
    dry = await ledger.deduct("a", 8, "k2", dry_run=True)
    assert isinstance(dry, Allowed) and dry.balance == 2
    assert len(await txns(redis, "allowance")) == 1
    assert isinstance(await ledger.deduct("a", 8, "k2"), Allowed)


async def test_a_new_account_gets_the_default_plan_unless_it_names_one(
    ledger: Ledger, redis: RedisClient
) -> None:
    await define(redis, ledger.keys, "free", 10, "day")
    await redis.hset(ledger.keys.plans(0), "default", "free")
    c = await ledger.put_account("a")
    assert c.created and c.plan == "free"
    c = await ledger.put_account("b", plan=None)
    assert c.plan is None
    c = await ledger.put_account("c", overdraft_limit=5)
    c = await ledger.put_account("c", overdraft_limit=5)  # replaced: no plan named, none
    assert c.plan is None


async def test_an_unknown_plan_or_an_anchor_without_a_plan_is_refused_naming_the_field(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a")
    with pytest.raises(InvalidInput) as e:
        await ledger.update_account("a", plan="nope")
    assert e.value.field == "plan"
    with pytest.raises(InvalidInput) as e:
        await ledger.update_account("a", plan_anchor=1)
    assert e.value.field == "plan_anchor"
    assert len(await txns(redis)) == 0


async def test_a_dry_run_counts_a_lapsing_holds_credits_in_the_rollover_cut(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    """The renewal runs after the hold lapsed (its deadline comes first): the credits the hold
    gives back to the allowance are unused, so the rollover cap cuts them too."""
    await define(redis, ledger.keys, "pro", 30, "week", mode="accumulate", rollover=10)
    await ledger.configure_account("a", plan="pro")
    await ledger.hold("a", "h", 20, 30_000)
    clock.advance(7 * DAY)
    dry = await ledger.deduct("a", 45, "k", dry_run=True)
    assert dry == Insufficient(40, 45)  # 10 kept + 30 new, not 30 + 30
    assert await ledger.deduct("a", 45, "k") == dry


async def test_a_dry_run_caps_the_renewal_by_what_the_account_holds_after_expiries(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    """Near 2^53-1 credits, the renewal is capped by what the account holds when it runs:
    after a huge bucket due at the same time expired, not before."""
    await define(redis, ledger.keys, "free", 20, "day")
    await ledger.configure_account("a", plan="free")
    await ledger.grant("a", "huge", MAX_CREDITS - 25, expires_at=clock.now + 1000)
    clock.advance(DAY)
    dry = await ledger.deduct("a", 10, "k", dry_run=True)
    assert isinstance(dry, Allowed) and dry.balance == 10
    real = await ledger.deduct("a", 10, "k")
    assert isinstance(real, Allowed) and real.balance == 10


async def test_an_anchor_moving_only_the_periods_end_keeps_its_allowance_and_moves_renewal(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    """Anchored on Jan 30, then on Jan 31: on Mar 1 both periods start on Feb 28 (clamped),
    but end on Mar 30 and Mar 31: the period's allowance (issued once for the period starting
    Feb 28) stays, and the next renewal moves to Mar 31 (docs/plans.md)."""
    await define(redis, ledger.keys, "m", 100, "month")
    clock.now = ms("2027-03-01T12:00:00")
    await ledger.configure_account("a", plan="m", plan_anchor=ms("2027-01-30T00:00:00"))
    await ledger.deduct("a", 10, "k")
    await ledger.update_account("a", plan_anchor=ms("2027-01-31T00:00:00"))
    b = await ledger.balance("a")
    assert b.balance == 90 and b.plan is not None
    assert b.plan.next_renewal == ms("2027-03-31T00:00:00")


async def test_an_api_keys_window_on_a_plan_counts_from_the_anchor_in_listings_and_checks(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await define(redis, ledger.keys, "m", 1000, "month")
    clock.now = ms("2027-01-20T00:00:00")
    await ledger.configure_account("a", plan="m", plan_anchor=ms("2027-01-10T06:00:00"))
    keys = ApiKeys(ledger)
    info, _ = await keys.create("a", spend_limit=SpendLimit(5, "month"))
    assert isinstance(await ledger.deduct("a", 4, "k1", key_id=info.key_id), Allowed)
    (listed,) = await keys.list("a")
    assert listed.spend is not None
    assert (listed.spend.spent, listed.spend.ends_at) == (4, ms("2027-02-10T06:00:00"))
    clock.now = ms("2027-02-05T00:00:00")  # a calendar month later, the same anchored window
    refused = await ledger.deduct("a", 2, "k2", key_id=info.key_id)
    assert isinstance(refused, SpendLimited) and refused.scope == "key"
    (listed,) = await keys.list("a")
    assert listed.spend is not None and listed.spend.spent == 4
