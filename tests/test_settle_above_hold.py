"""Settling a hold above its amount (the cost was known only at the end): the extra is drawn in
burn order like a check, into the overdraft as far as the account allows, and what neither
covers is answered as ``uncovered`` and not charged (sidecar/lua/close_hold.lua)."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar import errors
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import Allowed, HoldResult, Insufficient, SpendLimit
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock, outbox_entries, snapshot, stream


async def last_txn(redis: RedisClient) -> dict[str, Any]:
    return [e for e in await outbox_entries(redis) if e["kind"] == "txn"][-1]


async def test_the_extra_is_drawn_in_burn_order_and_one_settle_transaction_says_so(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "first", 10, priority=-1)
    await ledger.grant("a", "second", 20)
    await ledger.hold("a", "h", 8, 60_000)  # 8 of first
    s = await ledger.settle("a", "h", 15)  # the hold's 8, then first's 2 and second's 5
    assert (s.charged, s.uncovered, s.balance, s.state) == (15, 0, 15, "settled")
    b = await ledger.balance("a")
    # (an emptied bucket leaves the listing, as after a check)
    assert ({x.id: x.remaining for x in b.buckets}, b.held, b.debt) == ({"second": 15}, 0, 0)
    t = await last_txn(redis)
    assert (t["type"], t["amount"], t["charged"], t["overdraft"], t["uncovered"]) == (
        "settle",
        -7,
        15,
        0,
        0,
    )
    assert t["alloc"] == [["first", -2], ["second", -5]]
    assert t["held"] == [["first", -8]]


async def test_the_overdraft_covers_what_the_balance_cannot_and_the_rest_is_uncovered(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a", overdraft_limit=10)
    await ledger.grant("a", "g", 12)
    await ledger.hold("a", "h", 7, 60_000)  # 5 left in the bucket
    s = await ledger.settle("a", "h", 30)  # 7 held + 5 + 10 of overdraft = 22 charged; 8 not
    assert (s.charged, s.uncovered, s.balance) == (22, 8, -10)
    b = await ledger.balance("a")
    assert (b.available, b.debt, b.balance) == (0, 10, -10)
    t = await last_txn(redis)
    assert (t["amount"], t["overdraft"], t["uncovered"], t["debt"]) == (-15, 10, 8, 10)
    # the account is refused new checks like any negative balance at its overdraft limit
    assert await ledger.deduct("a", 1, "k") == Insufficient(-10, 1)


async def test_an_account_already_past_its_overdraft_is_charged_the_hold_only(
    ledger: Ledger,
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 5)
    await ledger.hold("a", "h", 5, 60_000)
    s = await ledger.settle("a", "h", 9)
    assert (s.charged, s.uncovered, s.balance) == (5, 4, 0)
    assert (await ledger.balance("a")).debt == 0


async def test_a_replay_is_the_same_amount_asked_and_answers_what_it_charged(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    await ledger.hold("a", "h", 4, 60_000)
    first = await ledger.settle("a", "h", 25)  # 10 charged, 15 uncovered
    assert (first.charged, first.uncovered) == (10, 15)
    await ledger.grant("a", "g2", 100)  # a replay must not draw what has come in since
    before = await snapshot(redis)
    again = await ledger.settle("a", "h", 25)
    assert again.replayed and (again.transaction_id, again.charged, again.uncovered) == (
        first.transaction_id,
        10,
        15,
    )
    with pytest.raises(errors.IdempotencyConflict, match="already settled for 25"):
        await ledger.settle("a", "h", 10)  # what it charged is not what it was asked
    assert await snapshot(redis) == before


async def test_a_settle_above_the_hold_is_refundable_overdraft_first(ledger: Ledger) -> None:
    await ledger.configure_account("a", overdraft_limit=5)
    await ledger.grant("a", "g", 10)
    await ledger.hold("a", "h", 6, 60_000)
    s = await ledger.settle("a", "h", 12)  # 6 held, 4 left in g, 2 of overdraft
    assert (s.charged, s.uncovered, s.balance) == (12, 0, -2)
    r = await ledger.refund("a", "rf", s.transaction_id, 3)  # repays the 2 of debt, then 1 to g
    assert (r.refunded, r.balance) == (3, 1)
    rest = await ledger.refund("a", "rf2", s.transaction_id)
    assert (rest.refunded, rest.balance) == (9, 10)
    b = await ledger.balance("a")
    assert ({x.id: x.remaining for x in b.buckets}, b.debt) == ({"g": 10}, 0)


async def test_the_extra_counts_against_the_spending_limit_but_is_never_refused_by_it(
    ledger: Ledger,
) -> None:
    await ledger.configure_account("a", spend_limit=SpendLimit(10, "month"))
    await ledger.grant("a", "g", 100)
    h = await ledger.hold("a", "h", 6, 60_000)
    assert isinstance(h, HoldResult)
    s = await ledger.settle("a", "h", 14)  # the work is done: 14 > the limit's 10
    assert (s.charged, s.uncovered) == (14, 0)
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 14
    assert not isinstance(await ledger.deduct("a", 1, "k"), Allowed)


async def test_a_settle_that_draws_below_a_threshold_emits_its_events(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("a", low_balance_threshold=20)
    await ledger.grant("a", "g", 50)
    await ledger.hold("a", "h", 10, 60_000)  # 40 left: above the threshold
    await ledger.settle("a", "h", 35)  # 15 left
    events = await stream(redis, KeySpace().events(0))
    assert [(e["type"], e["balance"]) for e in events] == [("low_balance", "15")]


async def test_a_lapsed_hold_is_not_settled_above_it_either(
    ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10)
    await ledger.hold("a", "h", 4, 1000)
    clock.advance(1000)
    with pytest.raises(errors.HoldExpired):
        await ledger.settle("a", "h", 9)
    assert (await ledger.balance("a")).balance == 10
