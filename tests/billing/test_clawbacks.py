"""Refunds and disputes as Stripe sends them (the fake's events, delivered in any order and
more than once): held credits are taken back, inquiries take nothing, won disputes and failed
refunds give the credits back, the ratio is the Charge's own, what cannot be reconciled is a
dead letter that says why."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from tests.billing.conftest import MakeRig, Rig
from tests.billing.test_purchases import bought, paid_session
from tests.conftest import admin, service


async def hold(rig: Rig, account: str, amount: int, hold_id: str = "job") -> None:
    r = await rig.client.post(
        "/v1/holds",
        json={"account": account, "hold_id": hold_id, "amount": amount, "ttl_ms": 600_000},
        headers=service(),
    )
    assert r.status == 201, await r.text()


async def close(rig: Rig, account: str, how: str, amount: int = 0, hold_id: str = "job") -> None:
    body: dict[str, Any] = {"account": account}
    if how == "settle":
        body["amount"] = amount
    r = await rig.client.post(f"/v1/holds/{hold_id}/{how}", json=body, headers=service())
    assert r.status == 200, await r.text()


async def debt(rig: Rig, account: str) -> int:
    r = await rig.client.get(f"/v1/accounts/{account}/balance", headers=admin())
    return int((await r.json())["debt"])


async def purchase_of(rig: Rig, charge: str) -> dict[str, Any]:
    pi = rig.fake.charges[charge]["payment_intent"]
    p = await rig.billing.purchases.by_payment_intent(pi)
    assert p is not None
    return p


async def dead_letters(rig: Rig) -> list[dict[str, Any]]:
    r = await rig.client.get("/v1/admin/billing/events?status=dead", headers=admin())
    events: list[dict[str, Any]] = (await r.json())["events"]
    return events


@pytest.mark.parametrize("cause", ["refund", "chargeback"])
@pytest.mark.parametrize("policy", ["revoke_unspent", "allow_negative"])
async def test_held_credits_are_taken_back_when_their_purchase_is_refunded_or_disputed(
    make_rig: MakeRig, policy: str, cause: str
) -> None:
    """Issue 17 #1: 1,000 credits bought and all held; a full refund (or chargeback) takes
    them back when the hold releases them; the credits a hold charged are, by policy, spent
    (unrecovered) or debt."""
    rig = await make_rig(refund_policy=policy)
    for account in ("acme", "beta"):
        await rig.account(account)
    await rig.package()
    for account, ending in (("acme", "release"), ("beta", "settle")):
        charge = await bought(rig, account)
        await hold(rig, account, 1000)
        if cause == "refund":
            rig.fake.refund(charge)
        else:
            rig.fake.dispute(charge)
        await rig.deliver(*rig.take_events())
        await rig.settle()
        assert await rig.balance(account) == 0
        if ending == "release":
            await close(rig, account, "release")
            assert (await rig.balance(account), await debt(rig, account)) == (0, 0)
        else:
            await close(rig, account, "settle", 400)  # 600 come back: taken
            expected = -400 if policy == "allow_negative" else 0
            assert await rig.balance(account) == expected, (policy, cause)


async def test_with_the_flag_policy_the_note_counts_the_held_credits(make_rig: MakeRig) -> None:
    rig = await make_rig(refund_policy="flag")
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    await hold(rig, "acme", 700)
    rig.fake.refund(charge)
    await rig.deliver(*rig.take_events())
    await rig.settle()
    flagged = (await purchase_of(rig, charge))["flagged"]
    assert "1000 credits would be taken back" in flagged and "700" in flagged
    await close(rig, "acme", "release")
    assert await rig.balance("acme") == 1000  # flag: recorded only


async def test_an_inquiry_takes_no_credits_back_until_it_becomes_a_chargeback(rig: Rig) -> None:
    """Issue 17 #2: warning_needs_response moves no money."""
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    inquiry = rig.fake.dispute(charge, inquiry=True)
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert await rig.balance("acme") == 1000
    rig.fake.escalate(inquiry["id"])
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert await rig.balance("acme") == 0


async def test_a_closed_inquiry_takes_nothing(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    inquiry = rig.fake.dispute(charge, inquiry=True)
    rig.fake.close_dispute(inquiry["id"], "warning_closed")
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert await rig.balance("acme") == 1000


@pytest.mark.parametrize("order", ["as sent", "reversed", "closed first", "twice"])
async def test_a_won_chargeback_gives_the_credits_back_in_any_order(rig: Rig, order: str) -> None:
    """Issue 17 #2: funds withdrawn take the credits, funds reinstated (a won dispute) give
    them back, whatever order and however often the events arrive."""
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    d = rig.fake.dispute(charge)
    withdrawn = rig.take_events()
    await rig.deliver(*withdrawn)
    await rig.settle()
    assert await rig.balance("acme") == 0
    rig.fake.close_dispute(d["id"], "won")
    won = rig.take_events()
    events = withdrawn + won
    if order == "reversed":
        events.reverse()
    elif order == "closed first":
        events = won[:1] + withdrawn + won[1:]
    elif order == "twice":
        events = events + list(reversed(events))
    await rig.deliver(*events)
    await rig.settle()
    assert await rig.balance("acme") == 1000
    assert (await purchase_of(rig, charge))["amount_disputed"] == 0


async def test_a_lost_chargeback_keeps_the_credits_taken(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    d = rig.fake.dispute(charge)
    rig.fake.close_dispute(d["id"], "lost")
    await rig.deliver(*reversed(rig.take_events()))
    await rig.settle()
    assert await rig.balance("acme") == 0


async def test_credits_given_back_by_a_won_dispute_return_to_what_the_customer_had(
    make_rig: MakeRig,
) -> None:
    """allow_negative: the spent part became debt and the rest was taken; winning cancels
    both."""
    rig = await make_rig(refund_policy="allow_negative")
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    r = await rig.client.post(
        "/v1/check",
        json={"account": "acme", "cost": 300, "idempotency_key": "spend"},
        headers=service(),
    )
    assert r.status == 200
    d = rig.fake.dispute(charge)
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert (await rig.balance("acme"), await debt(rig, "acme")) == (-300, 300)
    rig.fake.close_dispute(d["id"], "won")
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert (await rig.balance("acme"), await debt(rig, "acme")) == (700, 0)


@pytest.mark.parametrize("order", ["as sent", "failure first"])
async def test_a_refund_that_fails_gives_its_credits_back(rig: Rig, order: str) -> None:
    """Issue 17 #3: the refund fails after charge.refunded was sent; the clawback follows
    the refunds that did not fail."""
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    first = rig.fake.refund(charge, 250)
    rig.fake.refund(charge, 100)
    sent = rig.take_events()
    if order == "as sent":
        await rig.deliver(*sent)
        await rig.settle()
        assert await rig.balance("acme") == 300  # 350 of 500 cents
    rig.fake.fail_refund(first["id"])
    failed = rig.take_events()
    events = sent + failed if order == "as sent" else failed + sent
    await rig.deliver(*events)
    await rig.settle()
    assert await rig.balance("acme") == 800  # only the 100 cents that went back
    assert (await purchase_of(rig, charge))["amount_refunded"] == 100


async def test_a_pending_refund_counts_until_it_fails(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    pending = rig.fake.refund(charge, status="pending")
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert await rig.balance("acme") == 0
    rig.fake.fail_refund(pending["id"], "insufficient_funds")
    await rig.deliver(*rig.take_events("refund.failed"))
    await rig.settle()
    assert await rig.balance("acme") == 1000


async def test_the_ratio_is_the_charges_own_amount_not_the_sessions(rig: Rig) -> None:
    """Issue 17 #4: with Adaptive Pricing the customer pays another amount in another
    currency than the session's amount_total: 230 of a 460 EUR charge is half the credits."""
    await rig.account("acme")
    await rig.package()
    session = await rig.checkout("acme")
    done = rig.fake.complete_session(session["id"])
    pi = rig.fake.payment_intents[done["payment_intent"]]
    for obj in (pi, rig.fake.charges[pi["latest_charge"]]):
        obj.update(amount=460, currency="eur")
    await rig.webhook("checkout.session.completed", done)
    await rig.settle()
    rig.take_events()
    rig.fake.refund(pi["latest_charge"], 230)
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert await rig.balance("acme") == 500


async def test_a_refund_in_another_currency_than_its_charge_is_a_dead_letter(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    rig.fake.refund(charge, 100)
    (created,) = rig.take_events("refund.created")
    created["data"]["object"]["currency"] = "eur"
    await rig.deliver(created)
    await rig.settle()
    (dead,) = await dead_letters(rig)
    assert "eur" in dead["error"] and "usd" in dead["error"] and dead["attempts"] == 1
    assert await rig.balance("acme") == 1000
    assert (await purchase_of(rig, charge))["clawback_state"] is None  # nothing stored


async def test_a_charge_of_another_payment_intent_is_a_dead_letter(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    other = await bought(rig)  # a second purchase of acme
    rig.fake.refund(other, 100)
    (created,) = rig.take_events("charge.refunded")
    mine = rig.fake.charges[charge]["payment_intent"]
    created["data"]["object"]["payment_intent"] = mine  # the charge names another purchase
    await rig.deliver(created)
    await rig.settle()
    (dead,) = await dead_letters(rig)
    assert other in dead["error"]
    assert await rig.balance("acme") == 2000


async def test_refunds_and_disputes_in_every_order_end_in_the_same_balance(rig: Rig) -> None:
    """A partial refund, a chargeback on the rest that is won, and a refund that fails: every
    order of their events (each delivered twice) leaves the same credits."""
    accounts = []
    await rig.package()
    rig.take_events()
    charges: list[str] = []
    for i in range(6):
        accounts.append(f"acct-{i}")
        await rig.account(accounts[-1])
        charges.append(await bought(rig, accounts[-1]))
    scripts: list[list[dict[str, Any]]] = []
    for charge in charges:
        r = rig.fake.refund(charge, 100)
        doomed = rig.fake.refund(charge, 50)
        rig.fake.fail_refund(doomed["id"])
        d = rig.fake.dispute(charge, amount=350)
        rig.fake.close_dispute(d["id"], "won")
        assert r
        scripts.append(rig.take_events())
    for perm, _account, events in zip(
        itertools.islice(itertools.permutations(range(len(scripts[0]))), 0, None, 997),
        accounts,
        scripts,
        strict=False,
    ):
        ordered = [events[i] for i in perm]
        await rig.deliver(*ordered, *ordered)
    await rig.settle()
    for account in accounts:
        assert await rig.balance(account) == 800, account  # 100 of 500 cents refunded


async def test_a_purchase_refunded_before_this_release_is_read_complete(rig: Rig) -> None:
    """A purchase the previous release already took credits back for (no view recorded): the
    first event reads all its refunds and disputes from Stripe."""
    await rig.account("acme")
    await rig.package()
    session = await paid_session(rig)
    await rig.webhook("checkout.session.completed", session)
    await rig.settle()
    charge = rig.fake.payment_intents[session["payment_intent"]]["latest_charge"]
    rig.fake.refund(charge, 100)
    inquiry = rig.fake.dispute(charge, inquiry=True, amount=400)
    rig.take_events()
    rig.fake.escalate(inquiry["id"])
    await rig.deliver(*rig.take_events("charge.dispute.updated"))  # no funds_withdrawn
    await rig.settle()
    assert await rig.balance("acme") == 0  # 100 refunded + 400 withdrawn, read from Stripe


async def test_two_workers_racing_on_one_purchases_events_agree(make_rig: MakeRig) -> None:
    """Two sidecars (two workers on one SQL ledger and one Redis) take a purchase's refund and
    dispute events at the same time: the merged view is compare-and-set on its version and the
    ledger ignores an older view, so the result is the newest state's."""
    first = await make_rig()
    second = await make_rig()
    await first.account("acme")
    await first.package()
    charge = await bought(first)
    first.fake.refund(charge, 100)
    doomed = first.fake.refund(charge, 200)
    first.fake.fail_refund(doomed["id"])
    d = first.fake.dispute(charge, amount=200)
    first.fake.close_dispute(d["id"], "won")
    events = first.take_events()
    await asyncio.gather(
        *(rig.deliver(e) for e in events for rig in (first, second)),
    )
    await first.settle()
    await second.settle()
    assert await first.balance("acme") == 800  # 100 of 500 cents refunded, nothing else
    p = await purchase_of(first, charge)
    assert (p["amount_refunded"], p["amount_disputed"], p["clawback_target"]) == (100, 0, 200)
