"""The fake Stripe, driven by the official stripe library exactly as the billing code drives it:
if these pass, what the library sends is understood and what the fake answers is what the
library expects (objects, errors, idempotency, retries, webhook signatures)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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


async def _session(client: stripe.StripeClient, customer: str) -> stripe.checkout.Session:
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
        options={"idempotency_key": "checkout-1"},
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
    assert isinstance(s.payment_intent, str)
    pi = fake.payment_intents[s.payment_intent]
    assert (pi["amount"], pi["metadata"]) == (3000, {"account": "acme"})
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
    fake.decline("pm_declined")
    params: PaymentIntentCreateParams = {
        "amount": 1500,
        "currency": "usd",
        "customer": customer,
        "payment_method": "pm_declined",
        "off_session": True,
        "confirm": True,
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
    fake.decline("pm_declined")
    pi = await client.v1.payment_intents.create_async(
        params={
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


async def test_injected_fault_without_retries_raises_api_error(
    fake: FakeStripe, make_client: MakeClient
) -> None:
    client = await make_client(max_network_retries=0)
    fake.fail_next(1)
    with pytest.raises(stripe.APIError) as e:
        await _customer(client)
    assert e.value.http_status == 500
    assert fake.customers == {}
    assert await _customer(client)  # the fault was used up
    assert len(fake.customers) == 1


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
    pi = await client.v1.payment_intents.retrieve_async(str(s.payment_intent))
    assert (pi.status, pi.amount_received) == ("succeeded", 3000)
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
