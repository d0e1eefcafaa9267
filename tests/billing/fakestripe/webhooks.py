"""Webhook deliveries as Stripe shapes and signs them.

https://docs.stripe.com/api/events/object (the Event), https://docs.stripe.com/webhooks#verify-manually
(``Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<payload>">``)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from tests.billing.fakestripe.forms import new_id, now

# The API version the billing code pins (sidecar/billing/gateway.py): the shape of every
# object the fake returns and of the events it builds.
API_VERSION = "2024-06-20"


def sign_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header value for ``payload``, signed as Stripe signs deliveries:
    ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<payload>" keyed with the secret>``;
    ``timestamp`` defaults to now."""
    ts = now() if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), str(ts).encode() + b"." + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


def event(
    type: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
    api_version: str = API_VERSION,
) -> dict[str, Any]:
    """A Stripe Event (the JSON body of a webhook delivery) about ``obj``; serialize it (e.g.
    ``json.dumps(...).encode()``) and sign those bytes with ``sign_webhook``. The object is
    rendered in the endpoint's ``api_version``."""
    return {
        "id": event_id or new_id("evt_"),
        "object": "event",
        "api_version": api_version,
        "created": now() if created is None else created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }
