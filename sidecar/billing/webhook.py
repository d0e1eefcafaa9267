"""Verifying Stripe webhooks: the signature over the raw body, with the official library,
against every configured endpoint secret (several during a rotation), within a timestamp
tolerance in both directions (the library only refuses old timestamps; a timestamp far in the
future is refused here too)."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
import stripe

from sidecar.errors import BillingNotConfigured, InvalidSignature


def _timestamp(header: str) -> int:
    """The header's timestamp, read exactly as the library reads it (the first ``t`` item),
    so the freshness checked here is that of the signature it verifies."""
    for item in header.split(","):
        key, _, value = item.partition("=")
        if key == "t":
            if not re.fullmatch(r"[0-9]{1,12}", value):
                raise InvalidSignature("Stripe-Signature has a malformed timestamp")
            return int(value)
    raise InvalidSignature("Stripe-Signature has no timestamp")


def verify(
    payload: bytes,
    header: str | None,
    secrets: list[str],
    tolerance_s: int,
    now_s: float | None = None,
) -> dict[str, Any]:
    """The verified event (a dict with id, type and data.object); InvalidSignature otherwise."""
    if not secrets:
        raise BillingNotConfigured(
            "no webhook secret is configured (SIDECAR_STRIPE_WEBHOOK_SECRETS)"
        )
    if not header:
        raise InvalidSignature("missing Stripe-Signature header")
    now = time.time() if now_s is None else now_s
    ts = _timestamp(header)
    if ts > now + tolerance_s:
        raise InvalidSignature("Stripe-Signature timestamp is too far in the future")
    if ts < now - tolerance_s:
        raise InvalidSignature("Stripe-Signature timestamp is outside the tolerance (too old)")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature("the body is not UTF-8") from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance_s)
            break
        except stripe.SignatureVerificationError:
            continue
    else:
        raise InvalidSignature("no signature matches any configured webhook secret")
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidSignature("the signed body is not JSON") from None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and 0 < len(event["id"]) <= 255
        and isinstance(event.get("type"), str)
        and 0 < len(event["type"]) <= 100
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    ):
        raise InvalidSignature("the signed body is not a Stripe event")
    return event
