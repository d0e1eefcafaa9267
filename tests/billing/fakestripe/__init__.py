"""A local fake of the Stripe API endpoints the billing code calls, for tests.

``FakeStripe`` is an aiohttp server on 127.0.0.1 (a free port) that the official ``stripe``
library can be pointed at::

    async with FakeStripe() as fake:
        fake.add_price("price_100", 500)
        client = stripe.StripeClient(
            fake.api_key,
            base_addresses={"api": fake.url},
            http_client=stripe.AIOHTTPClient(),
            stripe_version="2024-06-20",
        )

It speaks Stripe's wire format (``forms``): form-encoded request bodies with nested keys, a
bearer API key, JSON objects shaped like Stripe's at the pinned API version, Stripe's error
bodies (so the library raises its own ``InvalidRequestError``, ``CardError``,
``AuthenticationError``, ``APIError``, ``IdempotencyError``), and Stripe's idempotency, errors
included (``server``). Each rule it enforces cites the Stripe page it follows, in the module
of its resource:

- ``customers``: customers (create, retrieve, update), saved payment methods, prices;
- ``charges``: charges and refunds, refunds that stay pending or fail later;
- ``disputes``: inquiries and chargebacks, funds withdrawn and reinstated;
- ``payment_intents``: off-session charges (declines, ``authentication_required``,
  ``processing``, cancel, list) and the ``return_url`` rule;
- ``checkout``: sessions in payment and setup mode (the PaymentIntent created at
  confirmation), line items, SetupIntents, Stripe Tax and invoices by parameter;
- ``endpoints``: webhook endpoints and their API version;
- ``billing_portal``: customer portal sessions, and the page their ``url`` opens;
- ``webhooks``: ``event`` and ``sign_webhook``, as Stripe shapes and signs deliveries.

Top-level parameters Stripe does not know are refused as Stripe refuses them; ``expand`` is
refused (not implemented), as are parameters the fake does not model where they would change
the outcome (``price_data``, subscription mode, embedded Checkout).

Tests drive it directly: test controls (``add_price``, ``add_payment_method``, ``decline``,
``require_authentication``, ``process_slowly``, ``finish_processing``, ``complete_session``,
``expire_session``, ``refund``, ``fail_refund``, ``succeed_refund``, ``dispute``,
``escalate``, ``close_dispute``, ``add_webhook_endpoint``, ``fail_next``,
``drop_reply_next``) change what Stripe holds and record the events Stripe would send in
``events``; ``requests`` records every request, and the stored objects (``customers``,
``sessions``, ``payment_intents``, ``charges``, ``refunds``, ``disputes``,
``payment_methods``, ``setup_intents``, ``prices``, ``portal_sessions``) are the live dicts
the API returns copies of.
"""

from __future__ import annotations

from tests.billing.fakestripe.billing_portal import BillingPortal
from tests.billing.fakestripe.forms import FormDecodeError, decode_form
from tests.billing.fakestripe.state import RecordedRequest
from tests.billing.fakestripe.webhooks import API_VERSION, event, sign_webhook


class FakeStripe(BillingPortal):
    """The fake Stripe API server; use ``async with FakeStripe() as fake`` or ``start()`` and
    ``stop()``. ``url`` is its base address while it runs."""


__all__ = [
    "API_VERSION",
    "FakeStripe",
    "FormDecodeError",
    "RecordedRequest",
    "decode_form",
    "event",
    "sign_webhook",
]
