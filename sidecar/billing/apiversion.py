"""The Stripe API version webhooks are rendered in.

The gateway pins ``API_VERSION`` for its own calls, but Stripe renders each webhook event in
its endpoint's API version (or the account's default when the endpoint has none:
https://docs.stripe.com/webhooks/versioning), and objects change shape between versions. At
start the webhook endpoints are read from Stripe (``GET /v1/webhook_endpoints``) and any
``/webhooks/stripe`` endpoint on another version is logged (and shown by
``/v1/admin/billing/status``); an event of a type billing acts on that arrives in another
version is refused as a dead letter that names both versions, never read in the wrong shape.
"""

from __future__ import annotations

import logging
from typing import Any

from sidecar.billing.context import Billing, Refused
from sidecar.billing.gateway import API_VERSION, StripeRefused, StripeTransient

log = logging.getLogger(__name__)
PATH = "/webhooks/stripe"


async def check_endpoints(b: Billing) -> None:
    """Reads the account's webhook endpoints into ``b.endpoints``, each with whether it is on
    the pinned version (left None if Stripe is not configured or could not be asked)."""
    if b.gateway is None:
        return
    try:
        endpoints = await b.gateway.webhook_endpoints()
    except (StripeTransient, StripeRefused) as e:
        log.warning("could not read the Stripe webhook endpoints' API versions: %s", e)
        return
    out = []
    for ep in endpoints:
        ours = ep.url.rstrip("/").endswith(PATH)
        matches = ep.api_version == API_VERSION
        out.append(
            {
                "id": ep.id,
                "url": ep.url,
                "api_version": ep.api_version,
                "matches": matches,
                "sidecar": ours,
            }
        )
        if ours and not matches:
            log.warning(
                "Stripe webhook endpoint %s (%s) sends events in API version %s, not %s: "
                "events billing acts on will be dead letters until it is created with "
                "api_version=%s",
                ep.id,
                ep.url,
                ep.api_version or "of the account's default",
                API_VERSION,
                API_VERSION,
            )
    b.endpoints = out


def check_event(payload: dict[str, Any]) -> None:
    """Refuses an event rendered in another API version than the pinned one."""
    version = payload.get("api_version")
    if version is not None and version != API_VERSION:
        raise Refused(
            f"event rendered in Stripe API version {version}; credit-sidecar reads "
            f"{API_VERSION}: create the webhook endpoint with api_version={API_VERSION}, then "
            "retry this event (Stripe can resend it)"
        )
