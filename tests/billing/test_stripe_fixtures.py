"""The fake Stripe and the webhook handlers against Stripe's own example objects (the OpenAPI
fixtures Stripe publishes for API version 2024-06-20, tests/billing/stripe_fixtures/): every
field the fake returns exists in Stripe's object with the same JSON type, every field billing
reads is there, and events built from Stripe's objects are handled as Stripe means them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import stripe

from tests.billing.conftest import Rig
from tests.billing.fakestripe import API_VERSION, FakeStripe
from tests.billing.test_purchases import bought

FIXTURES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "stripe_fixtures" / "fixtures3.json").read_text()
)["resources"]

# Fields Stripe documents that its example objects leave out because they only appear in some
# states. https://docs.stripe.com/api/refunds/object: failure_reason and
# failure_balance_transaction once a refund failed.
CONDITIONAL = {"refund": {"failure_reason", "failure_balance_transaction"}}

# What sidecar/billing reads of each object (the webhook payloads and the API's answers).
READ = {
    "charge": {"id", "amount", "currency", "payment_intent"},
    "refund": {"id", "amount", "currency", "status", "charge", "payment_intent"},
    "dispute": {
        "id",
        "amount",
        "currency",
        "status",
        "balance_transactions",
        "charge",
        "payment_intent",
    },
    "balance_transaction": {"amount"},
    "payment_intent": {
        "id",
        "status",
        "metadata",
        "last_payment_error",
        "payment_method",
        "created",
    },
    "checkout.session": {
        "id",
        "client_reference_id",
        "metadata",
        "payment_intent",
        "amount_total",
        "currency",
        "payment_status",
        "mode",
        "setup_intent",
        "status",
    },
    "item": {"id", "price", "quantity", "amount_total", "currency"},
    "price": {"id", "active", "type", "unit_amount", "currency"},
    "payment_method": {"id", "customer", "type", "card"},
    "setup_intent": {"payment_method"},
    "customer": {"id", "email"},
    "webhook_endpoint": {"id", "url", "api_version", "status"},
    "event": {"id", "type", "data", "api_version", "created"},
}


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return type(v).__name__


def drift(resource: str, ours: dict[str, Any], path: str = "") -> list[str]:
    """Fields of ``ours`` that Stripe's example object does not have, or has with another JSON
    type (null matches anything: Stripe's examples leave many fields null)."""
    theirs = FIXTURES[resource]
    out = []
    for key, value in ours.items():
        if key in CONDITIONAL.get(resource, ()):
            continue
        if key not in theirs:
            out.append(f"{resource}{path}.{key}: not in Stripe's object")
            continue
        a, b = _kind(value), _kind(theirs[key])
        if "null" not in (a, b) and a != b:
            out.append(f"{resource}{path}.{key}: {a} here, {b} at Stripe")
    return out


def test_the_fixtures_have_every_field_billing_reads() -> None:
    for resource, fields in READ.items():
        missing = fields - set(FIXTURES[resource]) - CONDITIONAL.get(resource, set())
        assert not missing, (resource, missing)


async def fake_objects(fake: FakeStripe, client: stripe.StripeClient) -> dict[str, list[Any]]:
    """One of each object the fake makes, through the official library where it can."""
    fake.add_price("price_small", 500)
    customer = await client.v1.customers.create_async(params={"email": "a@b.test"})
    pm = fake.add_payment_method(customer.id)
    session = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "payment",
            "customer": customer.id,
            "line_items": [{"price": "price_small", "quantity": 1}],
            "success_url": "https://example.test/ok",
        }
    )
    done = fake.complete_session(session.id, payment_method=pm)
    pi = fake.payment_intents[done["payment_intent"]]
    charge = pi["latest_charge"]
    refund = fake.refund(charge, 100)
    failed = fake.fail_refund(fake.refund(charge, 100)["id"])
    dispute = fake.dispute(charge)
    setup = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "setup",
            "customer": customer.id,
            "currency": "usd",
            "success_url": "https://example.test/ok",
        }
    )
    saved = fake.complete_session(setup.id)
    fake.add_webhook_endpoint("https://example.test/webhooks/stripe", api_version=API_VERSION)
    items = await client.v1.checkout.sessions.line_items.list_async(session.id)
    return {
        "customer": [fake.customers[customer.id]],
        "checkout.session": [done, saved, session.to_dict()],
        "item": [items.data[0].to_dict()],
        "payment_intent": [pi],
        "charge": [fake.charges[charge]],
        "refund": [refund, failed],
        "dispute": [dispute],
        "balance_transaction": list(dispute["balance_transactions"]),
        "payment_method": [fake.payment_methods[pm]],
        "setup_intent": list(fake.setup_intents.values()),
        "price": [fake.prices["price_small"]],
        "webhook_endpoint": list(fake.webhook_endpoints.values()),
        "event": fake.events[:3],
    }


async def test_every_field_the_fake_returns_is_one_stripe_returns(fake: FakeStripe) -> None:
    http = stripe.AIOHTTPClient()
    client = stripe.StripeClient(
        fake.api_key,
        base_addresses={"api": fake.url},
        http_client=http,
        stripe_version=API_VERSION,
    )
    try:
        objects = await fake_objects(fake, client)
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    problems = [p for resource, objs in objects.items() for o in objs for p in drift(resource, o)]
    assert problems == []
    assert set(objects) == set(READ)
    # and the comparison does catch drift
    assert drift("charge", {"amount": "500", "amount_refundable": 1}) == [
        "charge.amount: str here, number at Stripe",
        "charge.amount_refundable: not in Stripe's object",
    ]


def stripes(resource: str, **changes: Any) -> dict[str, Any]:
    """Stripe's example object, with ``changes`` (ids that tie it to a purchase)."""
    return copy.deepcopy(FIXTURES[resource]) | changes


async def test_stripes_example_dispute_an_inquiry_takes_nothing_back(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    pi = rig.fake.charges[charge]["payment_intent"]
    d = stripes("dispute", charge=charge, payment_intent=pi, amount=500)
    assert d["status"] == "warning_needs_response" and d["balance_transactions"] == []
    await rig.webhook("charge.dispute.created", d)
    await rig.settle()
    assert await rig.balance("acme") == 1000
    # the same dispute once its funds were withdrawn (Stripe's balance transaction)
    withdrawal = stripes("balance_transaction", amount=-500, reporting_category="dispute")
    lost = d | {"status": "needs_response", "balance_transactions": [withdrawal]}
    await rig.webhook("charge.dispute.funds_withdrawn", lost)
    await rig.settle()
    assert await rig.balance("acme") == 0


async def test_stripes_example_refund_takes_back_its_share(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    charge = await bought(rig)
    pi = rig.fake.charges[charge]["payment_intent"]
    r = stripes("refund", charge=charge, payment_intent=pi)
    assert (r["status"], r["amount"], r["currency"]) == ("succeeded", 100, "usd")
    await rig.webhook("refund.created", r)
    await rig.settle()
    assert await rig.balance("acme") == 800  # 100 of the charge's 500 cents
    failed = r | {"status": "failed", "failure_reason": "expired_or_canceled_card"}
    await rig.webhook("refund.failed", failed)
    await rig.settle()
    assert await rig.balance("acme") == 1000


async def test_stripes_example_session_unpaid_waits_for_its_payment(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    s = stripes("checkout.session", client_reference_id="acme")
    assert (s["payment_status"], s["mode"]) == ("unpaid", "payment")
    await rig.webhook("checkout.session.completed", s)
    await rig.settle()
    assert await rig.balance("acme") == 0
    purchase = await rig.billing.purchases.get(s["id"])
    assert purchase is not None and purchase["status"] == "awaiting_payment"
