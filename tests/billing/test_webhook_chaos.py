"""Stripe's events as a hostile network delivers them: each several times, shuffled (refunds and
disputes before the purchase they are about), concurrently to two sidecars' workers on one
ledger. Credits are created once and taken back only for money that really left."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.billing.conftest import MakeRig, Rig
from tests.billing.test_purchases import paid_session
from tests.conftest import service


async def storm(rigs: list[Rig], events: list[dict[str, Any]], seed: int) -> None:
    """Every event three times, shuffled, all at once, spread over the rigs."""
    rnd = random.Random(seed)
    copies = events * 3
    rnd.shuffle(copies)
    await asyncio.gather(*(rigs[i % len(rigs)].deliver(e) for i, e in enumerate(copies)))
    for _ in range(3):  # events about a purchase not known yet are retried later
        for r in rigs:
            await r.settle(30)
        rigs[0].clock.advance(60_000)
    for r in rigs:
        await r.settle(30)


Step = tuple[Any, ...]  # ("refund" | "failed_refund", cents) | ("dispute" | "inquiry", cents, *how)

# (what happens after the purchase, the credits left of 1,000 bought for 500 cents)
STORIES: dict[str, tuple[list[Step], int]] = {
    "nothing": ([], 1000),
    "refund 100 cents": ([("refund", 100)], 800),
    "refund 100, a refund of 200 that fails": ([("refund", 100), ("failed_refund", 200)], 800),
    "chargeback of all, won": ([("dispute", 500, "won")], 1000),
    "chargeback of all, lost": ([("dispute", 500, "lost")], 0),
    "inquiry closed": ([("inquiry", 500, "warning_closed")], 1000),
    "inquiry escalated, lost": ([("inquiry", 500, "escalate", "lost")], 0),
    "inquiry escalated, won": ([("inquiry", 500, "escalate", "won")], 1000),
    "refund 100, chargeback of the rest won": ([("refund", 100), ("dispute", 400, "won")], 800),
    "refund 100, chargeback of the rest lost": ([("refund", 100), ("dispute", 400, "lost")], 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
async def test_purchase_events_shuffled_repeated_and_raced_over_two_workers_leave_the_right_credits(
    make_rig: MakeRig, seed: int
) -> None:
    first, second = await make_rig(), await make_rig()
    await first.package()
    first.take_events()
    everything: list[dict[str, Any]] = []
    expected: dict[str, int] = {}
    for n, (story, left) in enumerate(STORIES.values()):
        account = f"acct-{n}"
        await first.account(account)
        session = await paid_session(first, account)
        pi = first.fake.payment_intents[session["payment_intent"]]
        charge = str(pi["latest_charge"])
        for step in story:
            if step[0] == "refund":
                first.fake.refund(charge, step[1])
            elif step[0] == "failed_refund":
                r = first.fake.refund(charge, step[1])
                first.fake.fail_refund(r["id"])
            else:
                d = first.fake.dispute(charge, amount=step[1], inquiry=step[0] == "inquiry")
                for how in step[2:]:
                    if how == "escalate":
                        first.fake.escalate(d["id"])
                    else:
                        first.fake.close_dispute(d["id"], how)
        everything += first.take_events()
        expected[account] = left
    await storm([first, second], everything, seed)
    got = {a: await first.balance(a) for a in expected}
    assert got == expected


HELD: dict[
    str, tuple[list[Step], int]
] = {  # all 1,000 credits held while it happens; the credits left once the hold is released
    "refund 100 cents": ([("refund", 100)], 800),
    "refund 200 that fails": ([("failed_refund", 200)], 1000),
    "chargeback won": ([("dispute", 500, "won")], 1000),
    "chargeback lost": ([("dispute", 500, "lost")], 0),
    "inquiry closed": ([("inquiry", 500, "warning_closed")], 1000),
}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 4])
async def test_held_credits_under_shuffled_raced_refunds_and_disputes_come_back_right(
    make_rig: MakeRig, seed: int
) -> None:
    first, second = await make_rig(), await make_rig()
    await first.package()
    first.take_events()
    everything: list[dict[str, Any]] = []
    accounts = [f"held-{n}" for n in range(len(HELD))]
    for account, (story, _) in zip(accounts, HELD.values(), strict=True):
        await first.account(account)
        session = await paid_session(first, account)
        await first.deliver(*first.take_events())
        await first.settle()
        r = await first.client.post(
            "/v1/holds",
            json={"account": account, "hold_id": "job", "amount": 1000, "ttl_ms": 3_600_000},
            headers=service(),
        )
        assert r.status == 201, await r.text()
        charge = str(first.fake.payment_intents[session["payment_intent"]]["latest_charge"])
        for step in story:
            if step[0] == "refund":
                first.fake.refund(charge, step[1])
            elif step[0] == "failed_refund":
                first.fake.fail_refund(first.fake.refund(charge, step[1])["id"])
            else:
                d = first.fake.dispute(charge, amount=step[1], inquiry=step[0] == "inquiry")
                for how in step[2:]:
                    first.fake.close_dispute(d["id"], how)
        everything += first.take_events()
    await storm([first, second], everything, seed)
    for account, (_, left) in zip(accounts, HELD.values(), strict=True):
        r = await first.client.post(
            "/v1/holds/job/release", json={"account": account}, headers=service()
        )
        assert r.status == 200, await r.text()
        assert await first.balance(account) == left, account
