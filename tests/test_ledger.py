"""Behaviour of each ledger operation against a real Redis: burn order, expiry, overdraft,
holds, refunds, idempotency and conflicts, rate limits, exactness at 2^53-1."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar import errors
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
    HoldResult,
    Insufficient,
    RateLimit,
    RateLimited,
)
from sidecar.ledger.units import (
    MAX_CREDITS,
)
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock, outbox_entries, snapshot, stream


async def txns(redis: RedisClient) -> list[dict[str, Any]]:
    return [e for e in await outbox_entries(redis) if e["kind"] == "txn"]


async def remaining(ledger: Ledger, account: str) -> dict[str, int]:
    return {b.id: b.remaining for b in (await ledger.balance(account)).buckets}


async def test_fifo_with_equal_priorities_burns_oldest_first(
    ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "first", 10)
    clock.advance(1)
    await ledger.grant("a", "second", 10)
    r = await ledger.deduct("a", 15, "k1")
    assert isinstance(r, Allowed) and r.balance == 5
    assert await remaining(ledger, "a") == {"second": 5}


async def test_burn_order_priority_then_expiry_then_age(ledger: Ledger, clock: FakeClock) -> None:
    """Lower priority first; among equals the soonest expiry, never-expiring last, then oldest."""
    now = clock.now
    await ledger.configure_account("a")
    await ledger.grant("a", "old-forever", 1)
    clock.advance(1)
    await ledger.grant("a", "late-expiry", 1, expires_at=now + 10_000)
    await ledger.grant("a", "soon-expiry", 1, expires_at=now + 5_000)
    await ledger.grant("a", "promo", 1, priority=-1, expires_at=now + 20_000)
    await ledger.grant("a", "last", 1, priority=5)
    order = [b.id for b in (await ledger.balance("a")).buckets]
    assert order == ["promo", "soon-expiry", "late-expiry", "old-forever", "last"]
    for i, expected in enumerate(order):
        r = await ledger.deduct("a", 1, f"k{i}")
        assert isinstance(r, Allowed)
        assert (await txns(ledger.redis))[-1]["alloc"] == [[expected, -1]]


async def test_expired_bucket_is_never_drawn_and_records_one_expiry(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "promo", 50, expires_at=clock.now + 1000, priority=-1)
    await ledger.grant("a", "paid", 10)
    clock.advance(1000)
    r = await ledger.deduct("a", 20, "k1")
    assert r == Insufficient(balance=10, required=20)
    await ledger.balance("a")
    await ledger.sweep()
    expiries = [t for t in await txns(redis) if t["type"] == "expiry"]
    assert len(expiries) == 1
    assert expiries[0]["amount"] == -50 and expiries[0]["bucket"] == "promo"


async def test_sweep_expires_untouched_accounts(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "promo", 7, expires_at=clock.now + 10)
    assert await ledger.sweep() == 0
    clock.advance(10)
    assert await ledger.sweep() == 1
    assert await ledger.sweep() == 0
    assert (await ledger.balance("a")).balance == 0
    assert await redis.zcard(KeySpace().due(0)) == 0


async def test_drained_bucket_expires_without_a_transaction(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "promo", 5, expires_at=clock.now + 10)
    await ledger.deduct("a", 5, "k")
    clock.advance(10)
    await ledger.sweep()
    assert [t["type"] for t in await txns(redis)] == ["grant", "usage"]


async def test_overdraft_records_debt_and_next_grant_repays_it(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a", overdraft_limit=10)
    await ledger.grant("a", "g1", 5)
    r = await ledger.deduct("a", 12, "k1")
    assert isinstance(r, Allowed) and r.balance == -7
    assert await ledger.deduct("a", 4, "k2") == Insufficient(balance=-7, required=4)
    g = await ledger.grant("a", "g2", 10, source="purchase")
    assert g.balance == 3
    b = await ledger.balance("a")
    assert (b.debt, b.available, [k.remaining for k in b.buckets]) == (0, 3, [3])
    purchase = (await txns(redis))[-1]
    assert (purchase["type"], purchase["amount"], purchase["repaid"]) == ("purchase", 10, 7)


async def test_low_balance_event_emitted_once_per_crossing(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a", low_balance_threshold=50)
    await ledger.grant("a", "g", 100)
    flags = []
    for i in range(4):
        r = await ledger.deduct("a", 20, f"k{i}")
        assert isinstance(r, Allowed)
        flags.append(r.low_balance)
    assert flags == [False, False, True, False]
    events = await stream(redis, KeySpace().events(0))
    assert len(events) == 1 and events[0]["balance"] == "40"


async def test_repeated_idempotency_key_returns_first_result(ledger: Ledger) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    first = await ledger.deduct("a", 3, "req-1")
    again = await ledger.deduct("a", 3, "req-1")
    assert isinstance(first, Allowed) and isinstance(again, Allowed)
    assert again.transaction_id == first.transaction_id and again.replayed
    assert (await ledger.balance("a")).balance == 7


async def test_idempotency_key_with_other_cost_is_a_conflict(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    await ledger.deduct("a", 3, "req-1")
    before = await snapshot(redis)
    with pytest.raises(errors.IdempotencyConflict):
        await ledger.deduct("a", 4, "req-1")
    assert await snapshot(redis) == before


async def test_grant_replay_and_conflict(ledger: Ledger, redis: RedisClient) -> None:
    await ledger.configure_account("a")
    g = await ledger.grant("a", "g", 10, metadata={"x": 1, "y": 2})
    again = await ledger.grant("a", "g", 10, metadata={"y": 2, "x": 1})
    assert again.replayed and again.transaction_id == g.transaction_id
    before = await snapshot(redis)
    with pytest.raises(errors.IdempotencyConflict):
        await ledger.grant("a", "g", 11)
    assert await snapshot(redis) == before
    assert (await ledger.balance("a")).balance == 10


async def test_hold_settle_returns_the_rest(ledger: Ledger, redis: RedisClient) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 100)
    h = await ledger.hold("a", "h1", 60, 10_000)
    assert isinstance(h, HoldResult) and h.balance == 40
    b = await ledger.balance("a")
    assert (b.held, b.buckets[0].remaining, b.buckets[0].held) == (60, 40, 60)
    s = await ledger.settle("a", "h1", 25)
    assert (s.balance, s.charged, s.state) == (75, 25, "settled")
    again = await ledger.settle("a", "h1", 25)
    assert again.replayed and again.transaction_id == s.transaction_id
    with pytest.raises(errors.IdempotencyConflict):
        await ledger.settle("a", "h1", 26)
    with pytest.raises(errors.HoldClosed):
        await ledger.release("a", "h1")
    assert (await ledger.balance("a")).held == 0
    types = [(t["type"], t["amount"]) for t in await txns(redis)]
    assert types == [("grant", 100), ("hold", -60), ("settle", 35)]


async def test_hold_beyond_balance_is_refused_without_change(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a", overdraft_limit=100)
    await ledger.grant("a", "g", 10)
    before = await snapshot(redis)
    assert await ledger.hold("a", "h", 11, 1000) == Insufficient(balance=10, required=11)
    assert await snapshot(redis) == before


async def test_hold_releases_itself_when_its_ttl_passes(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    await ledger.hold("a", "h", 4, 1000)
    clock.advance(1000)
    assert await ledger.sweep() == 1
    assert (await ledger.balance("a")).balance == 10
    with pytest.raises(errors.HoldExpired):
        await ledger.settle("a", "h", 1)
    r = await ledger.release("a", "h")
    assert r.state == "expired" and r.replayed
    assert [t["type"] for t in await txns(redis)][-1] == "release"


async def test_settle_before_ttl_lapses_in_the_same_call_reports_expiry(
    ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    await ledger.hold("a", "h", 4, 1000)
    clock.advance(1500)
    with pytest.raises(errors.HoldExpired):
        await ledger.settle("a", "h", 4)
    assert (await ledger.balance("a")).balance == 10


async def test_held_credits_of_an_expired_bucket_are_forfeited_on_release(
    ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "promo", 10, expires_at=clock.now + 100)
    await ledger.hold("a", "h", 6, 10_000)
    clock.advance(100)
    r = await ledger.release("a", "h")
    assert (r.forfeited, r.balance) == (6, 0)


async def test_refund_returns_credits_to_their_buckets_at_most_once(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g1", 5)
    clock.advance(1)
    await ledger.grant("a", "g2", 10)
    u = await ledger.deduct("a", 8, "k")
    assert isinstance(u, Allowed)
    r1 = await ledger.refund("a", "rf1", u.transaction_id, 2)
    assert (r1.refunded, r1.balance) == (2, 9)
    assert await remaining(ledger, "a") == {"g2": 9}  # last drawn, first returned
    r2 = await ledger.refund("a", "rf2", u.transaction_id)
    assert (r2.refunded, r2.balance) == (6, 15)
    assert await remaining(ledger, "a") == {"g1": 5, "g2": 10}
    assert (await ledger.refund("a", "rf2", u.transaction_id)).replayed
    with pytest.raises(errors.FullyRefunded):
        await ledger.refund("a", "rf3", u.transaction_id, 1)


async def test_refund_more_than_taken_is_rejected(ledger: Ledger, redis: RedisClient) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    u = await ledger.deduct("a", 3, "k")
    assert isinstance(u, Allowed)
    before = await snapshot(redis)
    with pytest.raises(errors.InvalidInput):
        await ledger.refund("a", "rf", u.transaction_id, 4)
    with pytest.raises(errors.UnknownTransaction):
        await ledger.refund("a", "rf", "tx_nope")
    assert await snapshot(redis) == before


async def test_refund_of_overdraft_reduces_debt_then_creates_a_refund_bucket(
    ledger: Ledger,
) -> None:
    await ledger.configure_account("a", overdraft_limit=10)
    u = await ledger.deduct("a", 6, "k")
    assert isinstance(u, Allowed) and u.balance == -6
    await ledger.grant("a", "g", 10)  # repays the 6
    r = await ledger.refund("a", "rf", u.transaction_id)
    assert r.balance == 10
    b = await ledger.balance("a")
    assert b.debt == 0 and {k.source for k in b.buckets} == {"manual", "refund"}


async def test_rate_limit_denies_without_deducting(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.configure_account("a", rate_limit=RateLimit(2, 1000, 2))
    await ledger.grant("a", "g", 100)
    assert isinstance(await ledger.deduct("a", 1, "k1"), Allowed)
    assert isinstance(await ledger.deduct("a", 1, "k2"), Allowed)
    r = await ledger.deduct("a", 1, "k3")
    assert isinstance(r, RateLimited) and r.retry_after_ms == 500
    assert (await ledger.balance("a")).balance == 98
    clock.advance(500)
    assert isinstance(await ledger.deduct("a", 1, "k3"), Allowed)


async def test_credits_stay_exact_at_2_pow_53_minus_1(ledger: Ledger, redis: RedisClient) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "big", MAX_CREDITS - 1)
    await ledger.grant("a", "one", 1)
    with pytest.raises(errors.BalanceOverflow):
        await ledger.grant("a", "over", 1)
    r = await ledger.deduct("a", MAX_CREDITS - 2, "k")
    assert isinstance(r, Allowed) and r.balance == 2
    assert (await ledger.balance("a")).buckets[0].remaining == 1
    assert (await txns(redis))[0]["amount"] == MAX_CREDITS - 1


@pytest.mark.parametrize(
    ("cost", "field"),
    [(-1, "cost"), (MAX_CREDITS + 1, "cost")],
)
async def test_script_rejects_bad_arguments_before_writing(
    ledger: Ledger, redis: RedisClient, cost: int, field: str
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    before = await snapshot(redis)
    with pytest.raises(errors.InvalidInput) as e:
        await ledger.deduct("a", cost, "k")
    assert e.value.field == field
    assert await snapshot(redis) == before


async def test_unknown_account_is_an_error(ledger: Ledger, redis: RedisClient) -> None:
    with pytest.raises(errors.UnknownAccount):
        await ledger.deduct("ghost", 1, "k")
    with pytest.raises(errors.UnknownAccount):
        await ledger.grant("ghost", "g", 1)
    assert await redis.dbsize() == 0


async def test_every_mutation_appends_one_transaction_with_sequence(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    u = await ledger.deduct("a", 4, "k")
    assert isinstance(u, Allowed)
    await ledger.hold("a", "h", 2, 1000)
    await ledger.release("a", "h")
    await ledger.refund("a", "r", u.transaction_id)
    t = await txns(redis)
    assert [x["type"] for x in t] == ["grant", "usage", "hold", "release", "refund"]
    assert [x["seq"] for x in t] == [1, 2, 3, 4, 5]
    assert sum(x["amount"] for x in t) == (await ledger.balance("a")).balance == 10


async def test_settling_a_lapsed_hold_reports_expiry_whatever_the_amount(
    ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    await ledger.hold("a", "h", 4, 1000)
    clock.advance(1000)
    with pytest.raises(errors.HoldExpired):
        await ledger.settle("a", "h", 99)


async def test_accounts_with_colons_cannot_replay_each_others_requests(ledger: Ledger) -> None:
    await ledger.configure_account("a")
    await ledger.configure_account("a:b")
    await ledger.grant("a", "g", 10)
    await ledger.grant("a:b", "g", 10)
    first = await ledger.deduct("a", 1, "b:c")
    other = await ledger.deduct("a:b", 1, "c")
    assert isinstance(first, Allowed) and isinstance(other, Allowed)
    assert not other.replayed and other.transaction_id != first.transaction_id
    assert (await ledger.balance("a:b")).balance == 9


async def test_a_settled_holds_charge_is_refundable_like_a_usage(ledger: Ledger) -> None:
    await ledger.configure_account("acme")
    await ledger.grant("acme", "a", 5, priority=0)
    await ledger.grant("acme", "b", 20, priority=1)
    await ledger.hold("acme", "h", 10, 60_000)  # 5 from a, 5 from b
    settled = await ledger.settle("acme", "h", 7)  # charges a's 5, then 2 of b's
    assert (await ledger.balance("acme")).balance == 18
    r = await ledger.refund("acme", "rf1", settled.transaction_id, 3)  # b's 2, then 1 of a's
    assert (r.refunded, r.forfeited, r.balance) == (3, 0, 21)
    again = await ledger.refund("acme", "rf1", settled.transaction_id, 3)
    assert again.replayed and again.balance == 21
    rest = await ledger.refund("acme", "rf2", settled.transaction_id)
    assert rest.refunded == 4 and rest.balance == 25
    with pytest.raises(errors.FullyRefunded):
        await ledger.refund("acme", "rf3", settled.transaction_id)
    remaining = {b.id: b.remaining for b in (await ledger.balance("acme")).buckets}
    assert remaining == {"a": 5, "b": 20}
    await ledger.hold("acme", "h2", 1, 60_000)
    released = await ledger.release("acme", "h2")
    with pytest.raises(errors.UnknownTransaction):  # a release charged nothing
        await ledger.refund("acme", "rf4", released.transaction_id)


async def test_a_call_with_text_redis_cannot_take_fails_alone(ledger: Ledger) -> None:
    """A lone surrogate (what a non-UTF-8 byte in a header becomes) in one call's description
    or idempotency key is that call's invalid input; the concurrent calls of the same account
    and of another account, in the same auto-pipelined batch, are answered and charged."""
    for a in ("a", "b"):
        await ledger.configure_account(a)
        await ledger.grant(a, "g", 100)
    results = await asyncio.gather(
        *(ledger.deduct("a", 1, f"a-{i}") for i in range(20)),
        ledger.deduct("b", 1, "b-bad", description="GET /caf\udce9"),
        ledger.deduct("b", 1, "b-bad-\udce9"),
        *(ledger.deduct("b", 1, f"b-{i}") for i in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(r, errors.InvalidInput) for r in results[20:22]), results[20:22]
    ok = results[:20] + results[22:]
    assert all(isinstance(r, Allowed) for r in ok), ok
    assert (await ledger.balance("a")).balance == 80
    assert (await ledger.balance("b")).balance == 80
