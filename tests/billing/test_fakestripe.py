"""The fake Stripe, driven by the official stripe library exactly as the billing code drives it:
if these pass, what the library sends is understood and what the fake answers is what the
library expects (objects, errors, idempotency, retries, webhook signatures)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import stripe
from stripe.params import PaymentIntentCreateParams

from tests.billing.fakestripe import (
    API_VERSION,
    FakeStripe,
    FormDecodeError,
    decode_form,
    event,
    sign_webhook,
)

MakeClient = Callable[..., Awaitable[stripe.StripeClient]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with FakeStripe() as f:
        f.add_price("price_small", 500)
        f.add_price("price_big", 2000, description="2000 credits")
        yield f


@pytest.fixture
async def make_client(fake: FakeStripe) -> AsyncIterator[MakeClient]:
    """StripeClients on the fake, as the gateway builds them; closed after the test."""
    http_clients: list[stripe.AIOHTTPClient] = []

    async def make(
        *, api_key: str | None = None, max_network_retries: int | None = None
    ) -> stripe.StripeClient:
        http_client = stripe.AIOHTTPClient()
        http_clients.append(http_client)
        return stripe.StripeClient(
            api_key or fake.api_key,
            base_addresses={"api": fake.url},
            http_client=http_client,
            stripe_version=API_VERSION,
            max_network_retries=max_network_retries,
        )

    yield make
    for http_client in http_clients:
        await http_client.close_async()  # type: ignore[no-untyped-call]


@pytest.fixture
async def client(make_client: MakeClient) -> stripe.StripeClient:
    return await make_client()


async def _customer(client: stripe.StripeClient, account: str = "acme") -> str:
    c = await client.v1.customers.create_async(
        params={"metadata": {"account": account}, "description": f"account {account}"},
        options={"idempotency_key": f"customer-{account}"},
    )
    return str(c.id)


async def _session(
    client: stripe.StripeClient, customer: str, key: str = "checkout-1"
) -> stripe.checkout.Session:
    return await client.v1.checkout.sessions.create_async(
        params={
            "mode": "payment",
            "customer": customer,
            "client_reference_id": "acme",
            "metadata": {"account": "acme", "source": "credit-sidecar"},
            "payment_intent_data": {"metadata": {"account": "acme"}},
            "line_items": [
                {"price": "price_small", "quantity": 2},
                {"price": "price_big", "quantity": 1},
            ],
            "success_url": "https://example.test/ok",
            "cancel_url": "https://example.test/cancel",
        },
        options={"idempotency_key": key},
    )


def test_form_decoding_builds_nested_dicts_and_lists_with_string_leaves() -> None:
    pairs = [
        ("mode", "payment"),
        ("metadata[account]", "acme"),
        ("line_items[0][price]", "p1"),
        ("line_items[0][quantity]", "2"),
        ("line_items[1][price]", "p2"),
        ("payment_intent_data[metadata][account]", "acme"),
        ("confirm", "true"),
        ("expand[]", "a"),
        ("expand[]", "b"),
        ("description", ""),
    ]
    assert decode_form(pairs) == {
        "mode": "payment",
        "metadata": {"account": "acme"},
        "line_items": [{"price": "p1", "quantity": "2"}, {"price": "p2"}],
        "payment_intent_data": {"metadata": {"account": "acme"}},
        "confirm": "true",
        "expand": ["a", "b"],
        "description": "",
    }


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", "1"), ("a[b]", "2")],
        [("a[b]", "2"), ("a", "1")],
        [("a", "1"), ("a", "2")],
        [("a[0]", "x"), ("a[2]", "y")],
        [("a[b", "1")],
        [("a[][b]", "1")],
    ],
)
def test_form_decoding_refuses_conflicting_duplicate_or_malformed_names(
    pairs: list[tuple[str, str]],
) -> None:
    with pytest.raises(FormDecodeError):
        decode_form(pairs)


async def test_customer_create_with_the_same_idempotency_key_returns_the_first_customer(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    first = await _customer(client)
    again = await _customer(client)

    assert again == first
    assert list(fake.customers) == [first]
    assert fake.customers[first]["metadata"] == {"account": "acme"}
    assert fake.customers[first]["description"] == "account acme"
    assert [(r.method, r.path, r.idempotency_key) for r in fake.requests] == [
        ("POST", "/v1/customers", "customer-acme"),
        ("POST", "/v1/customers", "customer-acme"),
    ]
    assert fake.requests[0].params == {
        "metadata": {"account": "acme"},
        "description": "account acme",
    }


async def test_reusing_an_idempotency_key_with_other_parameters_is_an_idempotency_error(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    await _customer(client)
    with pytest.raises(stripe.IdempotencyError) as e:
        await client.v1.customers.create_async(
            params={"metadata": {"account": "other"}},
            options={"idempotency_key": "customer-acme"},
        )
    assert e.value.http_status == 400
    assert len(fake.customers) == 1


async def test_checkout_session_is_created_retrieved_and_its_line_items_paginate(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    customer = await _customer(client)
    s = await _session(client, customer)

    assert s.id.startswith("cs_test_")
    assert s.object == "checkout.session"
    assert s.url == f"https://checkout.stripe.test/c/pay/{s.id}"
    assert (s.status, s.payment_status, s.mode) == ("open", "unpaid", "payment")
    assert (s.amount_total, s.currency) == (3000, "usd")
    assert (s.customer, s.client_reference_id) == (customer, "acme")
    assert s.metadata is not None
    assert s.metadata.to_dict() == {"account": "acme", "source": "credit-sidecar"}
    assert s.payment_intent is None  # created when the customer confirms
    assert fake.payment_intents == {}
    assert fake.requests[-1].params["line_items"] == [
        {"price": "price_small", "quantity": "2"},
        {"price": "price_big", "quantity": "1"},
    ]

    got = await client.v1.checkout.sessions.retrieve_async(s.id)
    assert got.to_dict() == s.to_dict()

    page = await client.v1.checkout.sessions.line_items.list_async(s.id, params={"limit": 1})
    assert page.has_more
    [first] = page.data
    assert first.price is not None
    assert (first.price.id, first.price.unit_amount, first.quantity) == ("price_small", 500, 2)
    assert (first.amount_total, first.currency) == (1000, "usd")
    page = await client.v1.checkout.sessions.line_items.list_async(
        s.id, params={"limit": 1, "starting_after": first.id}
    )
    assert not page.has_more
    [second] = page.data
    assert second.price is not None
    assert (second.price.id, second.quantity, second.amount_total) == ("price_big", 1, 2000)
    assert second.description == "2000 credits"

    everything = await client.v1.checkout.sessions.line_items.list_async(
        s.id, params={"limit": 100}
    )
    assert [li.id for li in everything.data] == [first.id, second.id]
    assert not everything.has_more


async def test_creating_a_session_with_an_unknown_price_is_an_invalid_request_error(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    customer = await _customer(client)
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.checkout.sessions.create_async(
            params={
                "mode": "payment",
                "customer": customer,
                "line_items": [
                    {"price": "price_small", "quantity": 1},
                    {"price": "price_nope", "quantity": 1},
                ],
                "success_url": "https://example.test/ok",
            }
        )
    assert e.value.http_status == 400
    assert e.value.code == "resource_missing"
    assert e.value.param == "line_items[1][price]"
    assert fake.sessions == {}


async def test_unknown_parameters_and_customers_are_refused_like_stripe_refuses_them(
    client: stripe.StripeClient,
) -> None:
    typo: Any = {"metdata": {"a": "b"}}
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.customers.create_async(params=typo)
    assert (e.value.code, e.value.param) == ("parameter_unknown", "metdata")
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.payment_intents.create_async(
            params={"amount": 500, "currency": "usd", "customer": "cus_nope"}
        )
    assert (e.value.code, e.value.param) == ("resource_missing", "customer")


async def test_declined_payment_method_raises_card_error_carrying_the_payment_intent(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    customer = await _customer(client)
    fake.add_payment_method(customer, "pm_declined")
    fake.decline("pm_declined")
    params: PaymentIntentCreateParams = {
        "amount": 1500,
        "currency": "usd",
        "customer": customer,
        "payment_method": "pm_declined",
        "off_session": True,
        "confirm": True,
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "metadata": {"account": "acme", "kind": "auto_topup"},
    }
    with pytest.raises(stripe.CardError) as e:
        await client.v1.payment_intents.create_async(
            params=params, options={"idempotency_key": "topup-1"}
        )
    err = e.value
    assert err.http_status == 402
    assert err.code == "card_declined"
    assert err.user_message == "Your card was declined."
    assert err.error is not None
    assert err.error.decline_code == "generic_decline"
    pi = err.error.payment_intent
    assert pi is not None
    assert pi.id.startswith("pi_")
    assert pi.status == "requires_payment_method"
    assert pi.last_payment_error is not None
    assert pi.last_payment_error.code == "card_declined"
    assert pi.metadata.to_dict() == {"account": "acme", "kind": "auto_topup"}
    assert fake.payment_intents[pi.id]["status"] == "requires_payment_method"

    with pytest.raises(stripe.CardError) as replay:  # the decline is replayed, not rerun
        await client.v1.payment_intents.create_async(
            params=params, options={"idempotency_key": "topup-1"}
        )
    assert replay.value.error is not None and replay.value.error.payment_intent is not None
    assert replay.value.error.payment_intent.id == pi.id
    assert len(fake.payment_intents) == 1

    retrieved = await client.v1.payment_intents.retrieve_async(pi.id)
    assert retrieved.status == "requires_payment_method"
    assert retrieved.last_payment_error is not None
    assert retrieved.last_payment_error.message == "Your card was declined."


async def test_off_session_payment_with_another_payment_method_succeeds(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    customer = await _customer(client)
    fake.add_payment_method(customer, "pm_card_visa")
    fake.decline("pm_declined")
    explicit: Any = {"payment_method_types": ["card"]}  # the library's types omit it
    pi = await client.v1.payment_intents.create_async(
        params=explicit
        | {
            "amount": 1500,
            "currency": "usd",
            "customer": customer,
            "payment_method": "pm_card_visa",
            "off_session": True,
            "confirm": True,
            "metadata": {"account": "acme"},
        },
        options={"idempotency_key": "topup-2"},
    )
    assert (pi.object, pi.status, pi.amount, pi.currency) == (
        "payment_intent",
        "succeeded",
        1500,
        "usd",
    )
    assert (pi.customer, pi.payment_method, pi.last_payment_error) == (
        customer,
        "pm_card_visa",
        None,
    )
    assert isinstance(pi.created, int)
    assert fake.requests[-1].params["off_session"] == "true"
    retrieved = await client.v1.payment_intents.retrieve_async(pi.id)
    assert retrieved.to_dict() == pi.to_dict()


async def test_a_500_is_kept_under_its_idempotency_key_and_replayed_to_every_retry(
    fake: FakeStripe, make_client: MakeClient
) -> None:
    """https://docs.stripe.com/api/idempotent_requests: the first result is saved, "including
    500 errors"; only a new key runs the request again."""
    client = await make_client(max_network_retries=0)
    fake.fail_next(1)
    with pytest.raises(stripe.APIError) as e:
        await _customer(client)
    assert e.value.http_status == 500
    with pytest.raises(stripe.APIError):  # the same key: the same 500, nothing runs
        await _customer(client)
    assert fake.customers == {}
    assert await _customer(client, "other")  # another key runs
    assert len(fake.customers) == 1


async def test_a_fault_in_front_of_the_api_leaves_the_key_unused(
    fake: FakeStripe, make_client: MakeClient
) -> None:
    client = await make_client(max_network_retries=0)
    fake.fail_next(1, 503)
    with pytest.raises(stripe.APIError):
        await _customer(client)
    assert await _customer(client)  # the same key now runs
    assert len(fake.customers) == 1


async def test_a_lost_reply_is_answered_to_the_retry_with_the_same_key(
    fake: FakeStripe, make_client: MakeClient
) -> None:
    client = await make_client(max_network_retries=0)
    fake.drop_reply_next()
    with pytest.raises(stripe.APIConnectionError):
        await _customer(client)
    assert len(fake.customers) == 1  # it ran
    again = await _customer(client)
    assert [again] == list(fake.customers)


async def test_injected_fault_is_retried_by_the_library_with_the_same_idempotency_key(
    fake: FakeStripe, make_client: MakeClient
) -> None:
    client = await make_client(max_network_retries=1)
    fake.fail_next(1, status=503)
    await client.v1.customers.create_async(params={"description": "retried"})
    assert len(fake.customers) == 1
    first, second = fake.requests
    assert first.idempotency_key is not None
    assert first.idempotency_key == second.idempotency_key


async def test_a_wrong_api_key_is_an_authentication_error(
    fake: FakeStripe, make_client: MakeClient
) -> None:
    client = await make_client(api_key="sk_test_wrong")
    with pytest.raises(stripe.AuthenticationError) as e:
        await _customer(client)
    assert e.value.http_status == 401
    assert fake.customers == {}


async def test_completing_a_session_marks_it_paid_and_its_payment_intent_succeeded(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    s = await _session(client, await _customer(client))
    completed = fake.complete_session(s.id)

    assert (completed["status"], completed["payment_status"], completed["url"]) == (
        "complete",
        "paid",
        None,
    )
    assert completed == fake.session(s.id)
    again = await client.v1.checkout.sessions.retrieve_async(s.id)
    assert (again.status, again.payment_status) == ("complete", "paid")
    pi = await client.v1.payment_intents.retrieve_async(str(again.payment_intent))
    assert (pi.status, pi.amount_received) == ("succeeded", 3000)
    assert pi.metadata.to_dict() == {"account": "acme"}
    charge = await client.v1.charges.retrieve_async(str(pi.latest_charge))
    assert (charge.amount, charge.currency, charge.payment_intent) == (3000, "usd", pi.id)
    assert [e["type"] for e in fake.events] == [
        "payment_intent.succeeded",
        "charge.succeeded",
        "checkout.session.completed",
    ]
    with pytest.raises(ValueError):
        fake.complete_session(s.id)


def test_signed_webhook_event_is_accepted_by_the_stripe_library() -> None:
    secret = "whsec_test_secret"
    session = {"id": "cs_test_x", "object": "checkout.session", "payment_status": "paid"}
    body = event("checkout.session.completed", session, event_id="evt_1")
    payload = json.dumps(body).encode()

    verified = stripe.Webhook.construct_event(payload, sign_webhook(payload, secret), secret)

    assert (verified.id, verified.type) == ("evt_1", "checkout.session.completed")
    assert verified.data.object["id"] == "cs_test_x"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, sign_webhook(payload, "whsec_other"), secret)
    with pytest.raises(stripe.SignatureVerificationError):  # older than the tolerance
        stripe.Webhook.construct_event(
            payload, sign_webhook(payload, secret, timestamp=1_600_000_000), secret
        )


async def _paid(fake: FakeStripe, client: stripe.StripeClient, key: str = "checkout-1") -> str:
    """A paid Checkout Session's Charge id."""
    s = await _session(client, await _customer(client), key)
    fake.complete_session(s.id)
    pi = fake.payment_intents[str(fake.sessions[s.id]["payment_intent"])]
    return str(pi["latest_charge"])


async def test_confirming_without_a_return_url_is_refused_unless_it_cannot_redirect(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    """https://docs.stripe.com/api/payment_intents/create: automatic payment methods are on
    by default and may redirect; a confirmation without return_url must turn redirects off
    or name its payment method types."""
    customer = await _customer(client)
    fake.add_payment_method(customer, "pm_1")
    base: PaymentIntentCreateParams = {
        "amount": 500,
        "currency": "usd",
        "customer": customer,
        "payment_method": "pm_1",
        "off_session": True,
        "confirm": True,
    }
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.payment_intents.create_async(params=base)
    assert e.value.param == "return_url" and "allow_redirects" in str(e.value.user_message)
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.payment_intents.create_async(
            params=base | {"automatic_payment_methods": {"enabled": True}}
        )
    ok = await client.v1.payment_intents.create_async(
        params=base | {"automatic_payment_methods": {"enabled": True, "allow_redirects": "never"}}
    )
    assert ok.status == "succeeded"
    ok = await client.v1.payment_intents.create_async(
        params=base | {"return_url": "https://example.test/back"}
    )
    assert ok.status == "succeeded"


async def test_a_payment_method_of_another_customer_or_unknown_is_refused(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    mine, theirs = await _customer(client), await _customer(client, "other")
    fake.add_payment_method(theirs, "pm_theirs")
    for pm in ("pm_theirs", "pm_nobody_knows"):
        with pytest.raises(stripe.InvalidRequestError) as e:
            params: Any = {
                "amount": 500,
                "currency": "usd",
                "customer": mine,
                "payment_method": pm,
                "confirm": True,
                "payment_method_types": ["card"],
            }
            await client.v1.payment_intents.create_async(params=params)
        assert e.value.param == "payment_method"
    got = await client.v1.payment_methods.retrieve_async("pm_theirs")
    assert got.customer == theirs
    listed = await client.v1.customers.payment_methods.list_async(theirs)
    assert [p.id for p in listed.data] == ["pm_theirs"]


async def test_authentication_required_processing_and_cancel_follow_stripe(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    customer = await _customer(client)
    for pm in ("pm_3ds", "pm_slow"):
        fake.add_payment_method(customer, pm)
    fake.require_authentication("pm_3ds")
    fake.process_slowly("pm_slow")
    params: PaymentIntentCreateParams = {
        "amount": 500,
        "currency": "usd",
        "customer": customer,
        "confirm": True,
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
    }
    with pytest.raises(stripe.CardError) as e:
        await client.v1.payment_intents.create_async(
            params=params | {"payment_method": "pm_3ds", "off_session": True}
        )
    assert e.value.code == "authentication_required"
    assert e.value.error is not None and e.value.error.decline_code == "authentication_required"
    on_session = await client.v1.payment_intents.create_async(
        params=params | {"payment_method": "pm_3ds"}
    )
    assert on_session.status == "requires_action"
    slow = await client.v1.payment_intents.create_async(
        params=params | {"payment_method": "pm_slow", "off_session": True}
    )
    assert slow.status == "processing" and slow.latest_charge is None
    with pytest.raises(stripe.InvalidRequestError) as bad:
        await client.v1.payment_intents.cancel_async(slow.id)
    assert bad.value.code == "payment_intent_unexpected_state"
    canceled = await client.v1.payment_intents.cancel_async(on_session.id)
    assert canceled.status == "canceled"
    done = fake.finish_processing(slow.id)
    assert done["status"] == "succeeded" and done["latest_charge"] in fake.charges
    listed = await client.v1.payment_intents.list_async(params={"customer": customer})
    assert {p.id for p in listed.data} == set(fake.payment_intents)
    assert "payment_intent.canceled" in [ev["type"] for ev in fake.events]


async def test_refunds_can_stay_pending_or_fail_after_succeeding(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    charge = await _paid(fake, client)
    fake.events.clear()
    r = await client.v1.refunds.create_async(params={"charge": charge, "amount": 1000})
    assert (r.status, r.amount, r.currency) == ("succeeded", 1000, "usd")
    assert [e["type"] for e in fake.events] == ["refund.created", "charge.refunded"]
    assert fake.events[1]["data"]["object"]["amount_refunded"] == 1000
    pending = fake.refund(charge, 500, status="pending")
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.refunds.create_async(params={"charge": charge, "amount": 2000})
    assert e.value.code == "amount_too_large"
    failed = fake.fail_refund(r.id)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "expired_or_canceled_card")
    assert fake.charges[charge]["amount_refunded"] == 500
    assert [e["type"] for e in fake.events[-3:]] == [
        "refund.updated",
        "refund.failed",
        "charge.refund.updated",
    ]
    listed = await client.v1.refunds.list_async(params={"charge": charge})
    assert [(x.id, x.status) for x in listed.data] == [
        (pending["id"], "pending"),
        (r.id, "failed"),
    ]


async def test_inquiries_withdraw_nothing_and_won_chargebacks_are_reinstated(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    charge = await _paid(fake, client)
    fake.events.clear()
    inquiry = fake.dispute(charge, inquiry=True)
    assert inquiry["status"] == "warning_needs_response" and inquiry["balance_transactions"] == []
    assert [e["type"] for e in fake.events] == ["charge.dispute.created"]
    fake.escalate(inquiry["id"])
    d = fake.close_dispute(inquiry["id"], "won")
    assert [bt["amount"] for bt in d["balance_transactions"]] == [-3000, 3000]
    assert [e["type"] for e in fake.events[1:]] == [
        "charge.dispute.updated",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.closed",
        "charge.dispute.funds_reinstated",
    ]
    got = await client.v1.disputes.retrieve_async(inquiry["id"])
    assert got.status == "won"
    lost = fake.dispute(await _paid(fake, client, "checkout-2"))
    with pytest.raises(stripe.InvalidRequestError) as e:  # charged back: not refundable
        await client.v1.refunds.create_async(params={"charge": lost["charge"]})
    assert e.value.code == "charge_disputed"


async def test_setup_mode_saves_a_card_and_payment_mode_options_follow_stripe(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    customer = await _customer(client)
    base: Any = {"customer": customer, "success_url": "https://example.test/ok"}
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.checkout.sessions.create_async(params=base | {"mode": "setup"})
    assert e.value.param == "currency"
    s = await client.v1.checkout.sessions.create_async(
        params=base | {"mode": "setup", "currency": "usd"}
    )
    assert (s.payment_intent, s.setup_intent, s.amount_total) == (None, None, None)
    done = fake.complete_session(s.id, payment_method="pm_saved")
    si = await client.v1.setup_intents.retrieve_async(str(done["setup_intent"]))
    assert (si.status, si.payment_method, si.usage) == ("succeeded", "pm_saved", "off_session")
    assert fake.payment_methods["pm_saved"]["customer"] == customer
    items = [{"price": "price_small", "quantity": 1}]
    for bad in (
        {"mode": "setup", "currency": "usd", "invoice_creation": {"enabled": True}},
        {"mode": "payment", "line_items": items, "automatic_tax": {"enabled": True}},
    ):
        with pytest.raises(stripe.InvalidRequestError):
            await client.v1.checkout.sessions.create_async(params=base | bad)
    fake.tax_bps = 1000
    taxed = await client.v1.checkout.sessions.create_async(
        params=base
        | {
            "mode": "payment",
            "line_items": items,
            "automatic_tax": {"enabled": True},
            "customer_update": {"address": "auto"},
            "invoice_creation": {"enabled": True},
            "payment_intent_data": {"setup_future_usage": "off_session"},
        }
    )
    assert (taxed.amount_subtotal, taxed.amount_total) == (500, 550)
    paid = fake.complete_session(taxed.id, payment_method="pm_paid")
    assert paid["invoice"] and fake.payment_methods["pm_paid"]["customer"] == customer
    assert fake.payment_intents[paid["payment_intent"]]["amount"] == 550


async def test_prices_and_webhook_endpoints_are_read_as_stripe_returns_them(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.add_price("price_yen", 500, "jpy")
    price = await client.v1.prices.retrieve_async("price_yen")
    assert (price.unit_amount, price.currency, price.type, price.active) == (
        500,
        "jpy",
        "one_time",
        True,
    )
    fake.add_webhook_endpoint("https://a.test/webhooks/stripe", api_version="2023-10-16")
    (we,) = (await client.v1.webhook_endpoints.list_async()).data
    assert (we.url, we.api_version) == ("https://a.test/webhooks/stripe", "2023-10-16")


async def test_a_billing_portal_session_opens_a_page_that_links_back(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    customer = await _customer(client)
    s = await client.v1.billing_portal.sessions.create_async(
        params={"customer": customer, "return_url": "https://app.test/portal/?a=1&b=<2>"}
    )
    assert s.object == "billing_portal.session" and s.id.startswith("bps_")
    assert (s.customer, s.return_url, s.livemode) == (
        customer,
        "https://app.test/portal/?a=1&b=<2>",
        False,
    )
    assert s.created > 0 and s.url.startswith(fake.url + "/p/session/")
    async with aiohttp.ClientSession() as http:  # the customer's browser: no API key
        async with http.get(s.url) as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
        async with http.get(fake.url + "/p/session/test_forged") as r:
            assert r.status == 404
    assert "Stripe customer portal (fake)" in page
    assert 'href="https://app.test/portal/?a=1&amp;b=&lt;2&gt;"' in page  # escaped
    # without return_url: no way back on the page
    bare = await client.v1.billing_portal.sessions.create_async(params={"customer": customer})
    assert bare.return_url is None


async def test_a_billing_portal_session_needs_a_known_customer_and_a_url(
    client: stripe.StripeClient,
) -> None:
    bad: list[tuple[dict[str, Any], str, str]] = [
        ({}, "parameter_missing", "customer"),
        ({"customer": "cus_nope"}, "resource_missing", "customer"),
        ({"customer": "cus_x", "return_url": "app.test/back"}, "url_invalid", "return_url"),
        ({"customer": "cus_x", "flow_data": {"type": "x"}}, "", "flow_data"),
        ({"customer": "cus_x", "retrun_url": "https://a.test"}, "parameter_unknown", "retrun_url"),
    ]
    for params, code, param in bad:
        with pytest.raises(stripe.InvalidRequestError) as e:
            await client.v1.billing_portal.sessions.create_async(params=params)  # type: ignore[arg-type]
        assert (e.value.code or "", e.value.param) == (code, param), params
        assert e.value.http_status == 400
