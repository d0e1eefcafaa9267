"""Buying credits end to end: packages, Checkout through the official stripe library (against
the fake), signed webhooks, the worker's grants; duplicates, reordering, refunds, disputes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from sidecar import errors
from sidecar.billing import purchases
from sidecar.http.errors import STATUS
from sidecar.http.state import SETTINGS
from sidecar.persistence.db import engine_for
from sidecar.persistence.writer import OutboxWriter
from tests.billing.conftest import MakeRig, Rig
from tests.conftest import admin, service


async def paid_session(rig: Rig, account: str = "acme", **checkout: Any) -> dict[str, Any]:
    """A Checkout Session created through the API and paid on the (fake) hosted page."""
    session = await rig.checkout(account, **checkout)
    return rig.fake.complete_session(session["id"], "paid")


async def test_packages_are_managed_through_the_admin_api(rig: Rig) -> None:
    await rig.package(credit_expiry_s=86400)
    r = await rig.client.get("/v1/admin/packages/starter", headers=service())
    assert (await r.json()) | {} == {
        "id": "starter",
        "name": "Starter",
        "credits": 1000,
        "stripe_price_id": "price_starter",
        "price": 500,
        "currency": "usd",
        "credit_expiry_s": 86400,
        "active": True,
        "price_display": "5.00 USD",
    }
    r = await rig.client.put(
        "/v1/admin/packages/other",
        json={"name": "x", "credits": 1, "stripe_price_id": "price_starter", "price": 500},
        headers=admin(),
    )
    assert r.status == 422 and (await r.json())["error"]["field"] == "stripe_price_id"
    bads: list[object] = [{"name": "x", "credits": 1.5, "price": 1}, {"credits": 1, "price": 1}, []]
    for bad in bads:
        r = await rig.client.put("/v1/admin/packages/p", json=bad, headers=admin())
        assert r.status in (400, 422), bad
    r = await rig.client.put("/v1/admin/packages/p", json={}, headers=service())
    assert r.status == 403


async def test_checkout_creates_a_session_for_the_accounts_stripe_customer(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    first = await rig.checkout("acme")
    second = await rig.checkout(
        "acme", items=[{"package_id": "starter", "quantity": 3}], package_id=None
    )
    assert first["url"].startswith("https://") and first["id"] != second["id"]
    assert len(rig.fake.customers) == 1  # one customer per account, reused
    (customer,) = rig.fake.customers.values()
    s = rig.fake.session(second["id"])
    assert s["customer"] == customer["id"] and s["client_reference_id"] == "acme"
    assert s["metadata"]["account"] == "acme" and s["mode"] == "payment"
    assert s["amount_total"] == 1500


async def test_checkout_refuses_bad_requests_without_calling_stripe(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    await rig.package("old", stripe_price_id="price_pro", price=2000, active=False)
    base = {"success_url": "https://a.test/ok", "cancel_url": "https://a.test/no"}
    cases: list[tuple[dict[str, str], int]] = [
        ({"account": "ghost", "package_id": "starter"}, 404),
        ({"account": "acme", "package_id": "nope"}, 404),
        ({"account": "acme", "package_id": "old"}, 404),
        ({"account": "acme"}, 422),
        ({"account": "acme", "package_id": "starter", "items": "starter"}, 422),
        ({"account": "acme", "package_id": "starter", "success_url": "ftp://x"}, 422),
    ]
    for body, status in cases:
        r = await rig.client.post("/v1/checkout", json=base | body, headers=service())
        assert r.status == status, (body, await r.text())
    assert rig.fake.sessions == {}


async def test_checkout_webhook_worker_balance_check_and_sql_end_to_end(rig: Rig) -> None:
    """checkout → signed webhook → worker grants → the credits are spendable through
    /v1/check → the purchase transaction reaches the SQL ledger."""
    await rig.account("acme")
    await rig.package()
    session = await paid_session(
        rig, items=[{"package_id": "starter", "quantity": 2}], package_id=None
    )
    r = await rig.webhook("checkout.session.completed", session)
    assert r.status == 200
    await rig.settle()
    assert await rig.balance("acme") == 2000
    r = await rig.client.post(
        "/v1/check",
        json={"account": "acme", "cost": 1500, "idempotency_key": "req-1"},
        headers=service(),
    )
    assert r.status == 200 and (await r.json())["balance"] == 500

    engine = engine_for(rig.client.app[SETTINGS])  # the app's own SQL ledger
    try:
        ledger = rig.billing.ledger
        writer = OutboxWriter(ledger.redis, engine, ledger.keys)
        await writer.ensure_group(0)
        while await writer.step(0):
            pass
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT type, amount, metadata FROM credit_transactions "
                        "WHERE account = 'acme' ORDER BY seq"
                    )
                )
            ).all()
            purchase = (
                await conn.execute(text("SELECT status, credits, account FROM stripe_purchases"))
            ).one()
    finally:
        await engine.dispose()
    assert [(t, a) for t, a, _ in rows] == [("purchase", 2000), ("usage", -1500)]
    assert session["id"] in rows[0][2] and "starter" in rows[0][2]
    assert tuple(purchase) == ("paid", 2000, "acme")


async def test_the_same_event_delivered_five_times_at_once_grants_once(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    session = await paid_session(rig)
    replies = await asyncio.gather(
        *(rig.webhook("checkout.session.completed", session, event_id="evt_dup") for _ in range(5))
    )
    assert [r.status for r in replies] == [200] * 5
    # A redelivery under a new event id (Stripe retries keep the id; a replay tool may not).
    await rig.webhook("checkout.session.completed", session, event_id="evt_other")
    await rig.settle()
    assert await rig.balance("acme") == 1000


async def test_unpaid_completion_waits_for_async_success_in_either_order(rig: Rig) -> None:
    await rig.account("acme")
    await rig.account("beta")
    await rig.package()
    for account, order in (("acme", "completed-first"), ("beta", "succeeded-first")):
        created = await rig.checkout(account)
        unpaid = rig.fake.complete_session(created["id"], "unpaid")
        paid = unpaid | {"payment_status": "paid"}
        events = [
            ("checkout.session.completed", unpaid),
            ("checkout.session.async_payment_succeeded", paid),
        ]
        if order == "succeeded-first":
            events.reverse()
        await rig.webhook(*events[0])
        await rig.settle()
        if order == "completed-first":
            assert await rig.balance(account) == 0  # not paid yet: nothing granted
        await rig.webhook(*events[1])
        await rig.settle()
        assert await rig.balance(account) == 1000, order
        purchase = await rig.billing.purchases.get(created["id"])
        assert purchase is not None and purchase["status"] == "paid"


async def test_async_payment_failure_grants_nothing_and_is_recorded(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    created = await rig.checkout("acme")
    unpaid = rig.fake.complete_session(created["id"], "unpaid")
    await rig.webhook("checkout.session.completed", unpaid)
    await rig.webhook("checkout.session.async_payment_failed", unpaid)
    await rig.settle()
    assert await rig.balance("acme") == 0
    purchase = await rig.billing.purchases.get(created["id"])
    assert purchase is not None and purchase["status"] == "failed"


async def test_an_unknown_price_ends_as_a_dead_letter_and_can_be_retried(make_rig: MakeRig) -> None:
    rig = await make_rig(event_max_attempts=1)
    await rig.account("acme")
    await rig.package()
    session = await paid_session(rig)
    await rig.client.put(
        "/v1/admin/packages/starter",
        json={"name": "Starter", "credits": 1000, "stripe_price_id": "price_pro", "price": 2000},
        headers=admin(),
    )
    await rig.webhook("checkout.session.completed", session, event_id="evt_x")
    await rig.settle()
    r = await rig.client.get("/v1/admin/billing/events?status=dead", headers=admin())
    (dead,) = (await r.json())["events"]
    assert dead["id"] == "evt_x" and "price_starter" in dead["error"]
    r = await rig.client.get("/v1/admin/billing/status", headers=admin())
    assert (await r.json())["events"] == {"dead": 1}
    assert await rig.balance("acme") == 0
    await rig.package()  # the operator maps the price again
    r = await rig.client.post("/v1/admin/billing/events/evt_x/retry", headers=admin())
    assert r.status == 200
    await rig.settle()
    assert await rig.balance("acme") == 1000


async def test_transient_stripe_errors_are_retried(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    session = await paid_session(rig)
    rig.fake.fail_next(6, 503)  # more than the library's own retries: the worker retries
    await rig.webhook("checkout.session.completed", session, event_id="evt_t")
    for _ in range(200):
        await rig.settle()
        if await rig.balance("acme") == 1000:
            break
        rig.clock.advance(10_000)  # the retry's backoff
        await asyncio.sleep(0.05)
    assert await rig.balance("acme") == 1000
    (ev,) = await rig.billing.events.listing(None, 10)
    assert ev["status"] == "processed" and ev["attempts"] >= 2


async def bought(rig: Rig, account: str = "acme") -> str:
    """acme buys the starter package (1,000 credits for 500 cents); returns its Charge id."""
    session = await paid_session(rig, account)
    await rig.webhook("checkout.session.completed", session)
    await rig.settle()
    rig.take_events()
    pi = rig.fake.payment_intents[session["payment_intent"]]
    return str(pi["latest_charge"])


async def test_partial_refunds_twice_take_back_the_right_credits_in_any_order(rig: Rig) -> None:
    await rig.account("acme")
    await rig.account("beta")
    await rig.package()
    for account, order in (("acme", "as sent"), ("beta", "reversed")):
        charge = await bought(rig, account)
        rig.fake.refund(charge, 150)
        rig.fake.refund(charge, 150)
        events = rig.take_events()
        if order == "reversed":
            events.reverse()
        await rig.deliver(*events, *events)  # every event twice
        await rig.settle()
        # 300 of 500 cents refunded in total: 60% of 1,000 credits taken back, once.
        assert await rig.balance(account) == 400, account


async def test_refund_policies_decide_what_happens_to_spent_credits(make_rig: MakeRig) -> None:
    for policy, expected in (("revoke_unspent", 0), ("allow_negative", -600), ("flag", 400)):
        rig = await make_rig(refund_policy=policy)
        account = f"acct-{policy.replace('_', '-')}"
        await rig.account(account)
        await rig.package()
        charge = await bought(rig, account)
        r = await rig.client.post(
            "/v1/check",
            json={"account": account, "cost": 600, "idempotency_key": "spend"},
            headers=service(),
        )
        assert r.status == 200
        rig.fake.refund(charge)
        await rig.deliver(*rig.take_events())
        await rig.settle()
        assert await rig.balance(account) == expected, policy
        purchase = await rig.billing.purchases.by_payment_intent(
            rig.fake.charges[charge]["payment_intent"]
        )
        assert purchase is not None
        assert (purchase["flagged"] is not None) == (policy == "flag")
        # Its billing worker must not take the next rig's events (one SQL ledger for all).
        await rig.client.close()


async def test_a_chargeback_takes_back_the_disputed_credits_once(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    rig.fake.dispute(charge, amount=250)
    events = rig.take_events()
    await rig.deliver(*events, *events, *events)
    await rig.settle()
    assert await rig.balance("acme") == 500
    # A refund is other money than the disputed part (Stripe cannot refund disputed money;
    # the fake, like Stripe, refuses it while the chargeback is open): 250 disputed + 150
    # refunded of 500 cents = 80% of the credits, as if both had happened.
    rig.fake.disputes[next(iter(rig.fake.disputes))]["is_charge_refundable"] = True
    rig.fake.refund(charge, 150)
    events = rig.take_events()
    await rig.deliver(*events, *events)
    await rig.settle()
    assert await rig.balance("acme") == 200


async def test_a_refund_before_its_purchase_is_retried_until_the_purchase_is_known(
    rig: Rig,
) -> None:
    await rig.account("acme")
    await rig.package()
    session = await paid_session(rig)
    charge = rig.fake.payment_intents[session["payment_intent"]]["latest_charge"]
    rig.take_events()
    rig.fake.refund(charge)
    await rig.deliver(*rig.take_events("charge.refunded"))
    await rig.settle()
    await rig.webhook("checkout.session.completed", session)
    await rig.settle()
    assert await rig.balance("acme") == 1000
    rig.clock.advance(60_000)
    await rig.settle()
    assert await rig.balance("acme") == 0


async def test_checkout_idempotency_keys_fit_stripe_and_never_collide_across_accounts(
    rig: Rig,
) -> None:
    """Issue 17 #5: "a" + "b-c" and "a-b" + "c" are two requests, not one key used twice (a
    409 for the second account); the longest account and key still give a key Stripe takes
    (at most 255 characters); a retry reuses its key and gets the same session."""
    await rig.package()
    longest = "x" * 128
    for account in ("a", "a-b", longest):
        await rig.account(account)
    first = await rig.checkout("a", idempotency_key="b-c")
    second = await rig.checkout("a-b", idempotency_key="c")
    assert first["id"] != second["id"]
    big = await rig.checkout(longest, idempotency_key="k" * 128)
    assert big["id"] in rig.fake.sessions
    again = await rig.checkout(longest, idempotency_key="k" * 128)
    assert again["id"] == big["id"]
    keys = [r.idempotency_key or "" for r in rig.fake.requests if r.method == "POST"]
    assert keys and all(len(k) <= 255 for k in keys)


async def test_invoices_and_stripe_tax_are_asked_of_checkout_by_setting(
    make_rig: MakeRig,
) -> None:
    """Issue 17 #12: SIDECAR_STRIPE_INVOICES and SIDECAR_STRIPE_AUTOMATIC_TAX; with tax, the
    customer pays more than the package's price, and a full refund still takes back exactly
    the purchase's credits (the ratio is of the Charge)."""
    rig = await make_rig(stripe_invoices=True, stripe_automatic_tax=True)
    rig.fake.tax_bps = 2000  # 20% on top
    await rig.account("acme")
    await rig.package()
    session = await rig.checkout("acme", email="ap@acme.test")
    stored = rig.fake.sessions[session["id"]]
    assert stored["invoice_creation"]["enabled"] and stored["automatic_tax"]["enabled"]
    assert stored["amount_total"] == 600
    (customer,) = rig.fake.customers.values()
    assert customer["email"] == "ap@acme.test"
    rig.take_events()
    done = rig.fake.complete_session(session["id"])
    assert done["invoice"]
    await rig.deliver(*rig.take_events("checkout.session.completed"))
    await rig.settle()
    assert await rig.balance("acme") == 1000
    charge = rig.fake.payment_intents[done["payment_intent"]]["latest_charge"]
    rig.fake.refund(charge, 300)  # half of what was paid, tax included
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert await rig.balance("acme") == 500


async def test_a_package_must_agree_with_its_stripe_price(rig: Rig) -> None:
    """Issue 17 #13: checked through Stripe's API when the package is saved."""
    rig.fake.add_price("price_sub", 500, recurring=True)
    rig.fake.add_price("price_old", 500, active=False)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"price": 400}, "price", "500"),
        ({"currency": "eur"}, "currency", "usd"),
        ({"stripe_price_id": "price_nope"}, "stripe_price_id", "no price"),
        ({"stripe_price_id": "price_sub"}, "stripe_price_id", "recurring"),
        ({"stripe_price_id": "price_old"}, "stripe_price_id", "inactive"),
    ]
    base = {"name": "Starter", "credits": 1000, "stripe_price_id": "price_starter", "price": 500}
    for change, field, words in cases:
        r = await rig.client.put("/v1/admin/packages/starter", json=base | change, headers=admin())
        assert r.status == 422, change
        err = (await r.json())["error"]
        assert err["field"] == field and words in err["message"], (change, err)
    r = await rig.client.put("/v1/admin/packages/starter", json=base, headers=admin())
    assert r.status == 201


async def test_zero_and_three_decimal_currencies_use_their_own_minor_units(rig: Rig) -> None:
    """Issue 17 #13: JPY has no minor unit (500 = 500 yen), KWD three digits that Stripe
    wants to end in 0; a package in cents-thinking (50000 for 500 yen) is refused."""
    rig.fake.add_price("price_yen", 500, "jpy")
    rig.fake.add_price("price_won", 9900, "krw")
    base = {"name": "Yen", "credits": 1000, "stripe_price_id": "price_yen", "currency": "jpy"}
    r = await rig.client.put(
        "/v1/admin/packages/yen", json=base | {"price": 50000}, headers=admin()
    )
    assert r.status == 422 and "500 JPY" in (await r.json())["error"]["message"]
    r = await rig.client.put("/v1/admin/packages/yen", json=base | {"price": 500}, headers=admin())
    assert r.status == 201 and (await r.json())["price_display"] == "500 JPY"
    won = {"name": "Won", "credits": 100, "stripe_price_id": "price_won", "currency": "krw"}
    r = await rig.client.put("/v1/admin/packages/won", json=won | {"price": 9900}, headers=admin())
    assert (await r.json())["price_display"] == "9900 KRW"
    r = await rig.client.put(
        "/v1/admin/packages/dinar",
        json={"name": "KWD", "credits": 1, "price": 5125, "currency": "kwd"},
        headers=admin(),
    )
    assert r.status == 422 and "end in 0" in (await r.json())["error"]["message"]
    await rig.account("acme")
    session = await rig.checkout("acme", package_id="yen")
    assert rig.fake.sessions[session["id"]]["amount_total"] == 500
    rig.take_events()
    done = rig.fake.complete_session(session["id"])
    await rig.deliver(*rig.take_events("checkout.session.completed"))
    await rig.settle()
    assert await rig.balance("acme") == 1000
    charge = rig.fake.payment_intents[done["payment_intent"]]["latest_charge"]
    assert (rig.fake.charges[charge]["amount"], rig.fake.charges[charge]["currency"]) == (
        500,
        "jpy",
    )
    rig.fake.refund(charge, 125)  # 125 yen of 500
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert await rig.balance("acme") == 750


async def test_a_regrant_records_the_credits_its_bucket_was_granted_not_todays_package(
    make_rig: MakeRig,
) -> None:
    """The session's bucket was granted 1,000 credits and spent; the package now gives 3,000.
    A redelivered (or late async) event finds the bucket granted: the purchase keeps 1,000,
    as the bucket and its SQL record say, so a full refund takes back 1,000 credits, not
    3,000 (allow_negative: the spent ones become debt)."""
    rig = await make_rig(refund_policy="allow_negative")
    await rig.account("acme")
    await rig.package()
    session = await paid_session(rig)
    await rig.webhook("checkout.session.completed", session, event_id="evt_first")
    await rig.settle()
    r = await rig.client.post(
        "/v1/check",
        json={"account": "acme", "cost": 1000, "idempotency_key": "all"},
        headers=service(),
    )
    assert r.status == 200 and (await r.json())["balance"] == 0
    await rig.package(credits=3000)
    await rig.webhook("checkout.session.completed", session, event_id="evt_again")
    await rig.settle()
    purchase = await rig.billing.purchases.get(session["id"])
    assert purchase is not None and (purchase["status"], purchase["credits"]) == ("paid", 1000)
    assert await rig.balance("acme") == 0
    rig.fake.refund(rig.fake.payment_intents[session["payment_intent"]]["latest_charge"])
    await rig.deliver(*rig.take_events("charge.refunded"))
    await rig.settle()
    assert await rig.balance("acme") == -1000


async def test_the_billing_email_comes_from_stripe_first_never_from_a_later_checkout_call(
    rig: Rig,
) -> None:
    """A Checkout call's `email` (a caller's input) sets the email of an account without one
    only; the email Stripe's Checkout recorded for the payer (customer_details.email) becomes
    the account's: auto top-up receipts go there, not to an address a caller passed later."""
    await rig.account("acme")
    await rig.package()
    session = await paid_session(rig, email="first@acme.test")
    (customer,) = rig.fake.customers.values()
    assert customer["email"] == "first@acme.test"
    paid = session | {"customer_details": {"email": "payer@acme.test"}}
    await rig.webhook("checkout.session.completed", paid)
    await rig.settle()
    assert await rig.billing.customers.billing_email("acme") == "payer@acme.test"
    await rig.checkout("acme", email="attacker@evil.test")
    assert await rig.billing.customers.billing_email("acme") == "payer@acme.test"
    assert rig.fake.customers[customer["id"]]["email"] == "first@acme.test"


async def test_a_checkout_that_would_grant_more_than_the_ledger_holds_is_refused_before_stripe(
    rig: Rig,
) -> None:
    """Refused at checkout, not once paid: the grant would fail after the money was taken."""
    await rig.account("acme")
    await rig.package(credits=10**13)
    body = {
        "account": "acme",
        "items": [{"package_id": "starter", "quantity": 1000}],
        "success_url": "https://app.test/ok",
        "cancel_url": "https://app.test/no",
    }
    r = await rig.client.post("/v1/checkout", json=body, headers=admin())
    assert r.status == 422, await r.text()
    assert (await r.json())["error"]["field"] == "quantity"
    assert rig.fake.sessions == {}


async def test_billing_portal_url_is_for_the_accounts_customer_or_a_409(
    rig: Rig, make_rig: MakeRig
) -> None:
    b = rig.billing
    await rig.account("acme")
    await rig.package()
    assert not await purchases.has_billing_customer(b, "acme")
    with pytest.raises(errors.NoBillingCustomer) as e:
        await purchases.billing_portal_url(b, "acme", "https://app.test/portal/")
    assert STATUS[type(e.value)] == 409 and e.value.code == "no_billing_customer"
    assert not rig.fake.customers  # none made for it
    with pytest.raises(errors.UnknownAccount):
        await purchases.billing_portal_url(b, "ghost", "https://app.test/portal/")

    await rig.checkout("acme")  # makes the account's customer
    assert await purchases.has_billing_customer(b, "acme")
    url = await purchases.billing_portal_url(b, "acme", "https://app.test/portal/")
    (session,) = rig.fake.portal_sessions.values()
    assert url == session["url"] and session["return_url"] == "https://app.test/portal/"
    assert session["customer"] == await b.customers.customer("acme")
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200 and "Stripe customer portal (fake)" in await r.text()

    rig.fake.fail_next(5, 500)  # Stripe down (the library's retries included)
    with pytest.raises(errors.PaymentProviderError):
        await purchases.billing_portal_url(b, "acme", "https://app.test/portal/")
    no_stripe = await make_rig(stripe_api_key=None)
    with pytest.raises(errors.BillingNotConfigured):
        await purchases.billing_portal_url(no_stripe.billing, "acme", "https://app.test/")


async def test_checkout_status_pending_until_granted_and_unknown_for_anyone_else(
    rig: Rig,
) -> None:
    """What the portal polls after Checkout: the sidecar's own SQL only."""
    b = rig.billing
    await rig.account("acme")
    await rig.account("beta")
    await rig.package()
    created = await rig.checkout("acme")
    sid = created["id"]
    status = purchases.checkout_status
    assert await status(b, "acme", sid) == purchases.CheckoutStatus(sid, "pending", None)
    # another account's session and one nobody made answer alike
    assert (await status(b, "beta", sid)).status == "unknown"
    assert await status(b, "acme", "cs_test_nobody") == purchases.CheckoutStatus(
        "cs_test_nobody", "unknown", None
    )
    paid = rig.fake.complete_session(sid, "paid")
    assert (await status(b, "acme", sid)).status == "pending"  # paid, webhook not yet in
    requests_before = len(rig.fake.requests)
    await rig.webhook("checkout.session.completed", paid)
    await rig.settle()
    assert await status(b, "acme", sid) == purchases.CheckoutStatus(sid, "granted", 1000)
    assert (await status(b, "beta", sid)).status == "unknown"
    stripe_calls = [r for r in rig.fake.requests[requests_before:] if "line_items" not in r.path]
    assert stripe_calls == []  # (the worker listed line items; polling called nobody)
    # a replayed create (same idempotency key) keeps the purchase as it is
    again = await rig.checkout("acme", idempotency_key="k1")
    assert await rig.checkout("acme", idempotency_key="k1") == again
    assert (await status(b, "acme", again["id"])).status == "pending"
    assert (await status(b, "acme", sid)).status == "granted"
    # an auto top-up's PaymentIntent id is no Checkout Session of the account
    await b.purchases.started("pi_123", "auto_topup", "acme", 0)
    assert (await status(b, "acme", "pi_123")).status == "unknown"


async def test_checkout_status_expired_failed_and_bad_ids(rig: Rig) -> None:
    b = rig.billing
    await rig.account("acme")
    await rig.package()
    expiring = await rig.checkout("acme")
    rig.fake.expire_session(expiring["id"])
    (expired,) = rig.take_events("checkout.session.expired")
    await rig.deliver(expired)
    await rig.settle()
    assert (await purchases.checkout_status(b, "acme", expiring["id"])).status == "expired"
    failing = await rig.checkout("acme")
    unpaid = rig.fake.complete_session(failing["id"], "unpaid")
    await rig.webhook("checkout.session.completed", unpaid)
    await rig.settle()
    assert (await purchases.checkout_status(b, "acme", failing["id"])).status == "pending"
    await rig.webhook("checkout.session.async_payment_failed", unpaid)
    await rig.settle()
    assert (await purchases.checkout_status(b, "acme", failing["id"])).status == "failed"
    assert await rig.balance("acme") == 0
    for bad in ("", "cs_a/b", "cs test", "cs_" + "x" * 300, "cs_\x00"):
        with pytest.raises(errors.InvalidInput) as e:
            await purchases.checkout_status(b, "acme", bad)
        assert e.value.field == "session_id"
