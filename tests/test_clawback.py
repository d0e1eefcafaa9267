"""Clawbacks of refunded or disputed purchases in the ledger (sidecar/lua/revoke.lua and the
"Clawbacks" helpers of _lib.lua): held credits are taken when their hold gives them back,
a lower target gives credits back, older views change nothing, credits a usage refund brings
back to a clawed-back bucket are taken, every step is one idempotent script call."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from sidecar import errors
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.results import (
    Allowed,
    HoldResult,
    RevokeResult,
)
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock, outbox_entries, snapshot

BUCKET = "purchase:cs_1:li_1"
Policy = Literal["unspent", "negative"]


async def bought(ledger: Ledger, credits: int = 1000, account: str = "a") -> None:
    await ledger.configure_account(account)
    await ledger.grant(account, BUCKET, credits, source="purchase")


async def revoke(
    ledger: Ledger, target: int, version: int, policy: Policy = "unspent"
) -> RevokeResult:
    return await ledger.revoke(
        "a", "cs_1", target, buckets=[BUCKET], policy=policy, version=version
    )


async def state(ledger: Ledger) -> tuple[int, int, int, int]:
    """(balance, bucket remaining, held, debt)."""
    b = await ledger.balance("a")
    left = {x.id: x.remaining for x in b.buckets}.get(BUCKET, 0)
    return b.balance, left, b.held, b.debt


async def revokes(redis: RedisClient) -> list[dict[str, Any]]:
    return [e for e in await outbox_entries(redis) if e.get("type") == "revoke"]


@pytest.mark.parametrize("policy", ["unspent", "negative"])
async def test_held_credits_of_a_refunded_purchase_are_taken_when_the_hold_releases_them(
    ledger: Ledger, redis: RedisClient, policy: Policy
) -> None:
    await bought(ledger)
    assert isinstance(await ledger.hold("a", "h", 1000, 60_000), HoldResult)
    r = await revoke(ledger, 1000, 1, policy)
    assert (r.taken, r.pending, r.debt_added, r.unrecovered) == (0, 1000, 0, 0)
    assert await state(ledger) == (0, 0, 1000, 0)
    released = await ledger.release("a", "h")
    assert released.balance == 0
    assert await state(ledger) == (0, 0, 0, 0)  # the released credits were taken back
    (first, applied) = await revokes(redis)
    assert (first["amount"], applied["amount"]) == (0, -1000)
    assert applied["state"]["tk"] == [1000] and applied["state"]["pd"] == [0]


@pytest.mark.parametrize(
    ("policy", "after"), [("unspent", (0, 0, 0, 0)), ("negative", (-400, 0, 0, 400))]
)
async def test_held_credits_a_hold_charged_are_unrecovered_or_debt_by_policy(
    ledger: Ledger, policy: Policy, after: tuple[int, int, int, int]
) -> None:
    await bought(ledger)
    await ledger.hold("a", "h", 1000, 60_000)
    await revoke(ledger, 1000, 1, policy)
    await ledger.settle("a", "h", 400)  # 600 come back and are taken; 400 were used
    assert await state(ledger) == after


async def test_a_hold_that_expires_gives_its_credits_to_the_clawback(
    ledger: Ledger, clock: FakeClock
) -> None:
    await bought(ledger)
    await ledger.hold("a", "h", 700, 1_000)
    await revoke(ledger, 1000, 1)
    assert await state(ledger) == (0, 0, 700, 0)
    clock.advance(1_000)
    await ledger.sweep()
    assert await state(ledger) == (0, 0, 0, 0)


@pytest.mark.parametrize(("policy", "during"), [("unspent", 0), ("negative", -600)])
async def test_a_lower_target_gives_back_what_was_taken(
    ledger: Ledger, redis: RedisClient, policy: Policy, during: int
) -> None:
    await bought(ledger)
    assert isinstance(await ledger.deduct("a", 600, "spend"), Allowed)
    r = await revoke(ledger, 1000, 1, policy)
    assert r.taken == 400 and await state(ledger) == (during, 0, 0, -during)
    back = await revoke(ledger, 0, 2, policy)
    assert back.given_back == 400 - during and back.target == 0
    assert await state(ledger) == (400, 400, 0, 0)  # as if nothing had been refunded
    assert [e["amount"] for e in await revokes(redis)] == [-400 + during, 400 - during]


async def test_half_given_back_keeps_the_taken_part_first(ledger: Ledger) -> None:
    await bought(ledger)
    await ledger.deduct("a", 600, "spend")
    await revoke(ledger, 1000, 1)  # 400 taken, 600 unrecovered
    r = await revoke(ledger, 500, 2)
    assert r.given_back == 0  # the unrecovered part goes first
    assert await state(ledger) == (0, 0, 0, 0)
    r = await revoke(ledger, 200, 3)
    assert r.given_back == 200 and await state(ledger) == (200, 200, 0, 0)


async def test_an_older_view_arriving_late_changes_nothing(
    ledger: Ledger, redis: RedisClient
) -> None:
    await bought(ledger)
    await revoke(ledger, 0, 3)  # the newest view: nothing to take back
    before = await snapshot(redis)
    stale = await revoke(ledger, 1000, 2)
    assert stale.transaction_id is None and stale.version == 3
    again = await revoke(ledger, 0, 3)
    assert again.transaction_id is None
    assert await snapshot(redis) == before
    assert await state(ledger) == (1000, 1000, 0, 0)


async def test_debt_a_later_purchase_repaid_comes_back_as_credits(ledger: Ledger) -> None:
    await bought(ledger)
    await ledger.deduct("a", 1000, "spend")
    await revoke(ledger, 1000, 1, "negative")  # all of it becomes debt
    assert await state(ledger) == (-1000, 0, 0, 1000)
    await ledger.grant("a", "later", 1500)  # repays the debt: 500 left
    assert (await ledger.balance("a")).balance == 500
    r = await revoke(ledger, 0, 2, "negative")  # the dispute was won
    assert r.given_back == 1000
    b = await ledger.balance("a")
    assert (b.balance, b.debt) == (1500, 0)
    assert any(x.id.startswith("clawback:") and x.remaining == 1000 for x in b.buckets)


async def test_credits_a_usage_refund_brings_back_to_a_refunded_purchase_are_taken(
    ledger: Ledger,
) -> None:
    await bought(ledger)
    used = await ledger.deduct("a", 600, "spend")
    assert isinstance(used, Allowed)
    await revoke(ledger, 1000, 1)  # 400 taken, 600 spent: unrecovered
    r = await ledger.refund("a", "rf", used.transaction_id)
    assert r.refunded == 600 and r.balance == 0
    assert await state(ledger) == (0, 0, 0, 0)


async def test_a_clawback_written_by_the_previous_release_is_kept_and_never_given_back(
    ledger: Ledger, redis: RedisClient
) -> None:
    await bought(ledger)
    # what the previous revoke.lua left: only the target, 300 credits taken
    await ledger.grant("a", "other", 1)
    await redis.hset(ledger.keys.for_account("a").account, "cb:cs_1", "300")
    r = await revoke(ledger, 500, 1)
    assert r.taken == 200 and r.target == 500
    r = await revoke(ledger, 0, 2)
    assert r.given_back == 200  # the 300 of the earlier release are not known: kept


async def test_revoke_arguments_are_validated_before_any_write(
    ledger: Ledger, redis: RedisClient
) -> None:
    await bought(ledger)
    before = await snapshot(redis)
    with pytest.raises(errors.InvalidInput):
        await ledger.revoke("a", "cs_1", 1, buckets=[BUCKET], policy="unspent", version=-1)
    await revoke(ledger, 10, 1)
    with pytest.raises(errors.InvalidInput):
        await ledger.revoke("a", "cs_1", 20, buckets=["other"], policy="unspent", version=2)
    assert (await ledger.balance("a")).balance == 990
    assert before != await snapshot(redis)
