"""Stripe's side of billing: the webhook receiver (authenticated by its signature, not a
token), the stored events and their dead letters, and billing's status (admin token)."""

from __future__ import annotations

from sidecar import errors
from sidecar.billing.gateway import API_VERSION
from sidecar.billing.webhook import verify
from sidecar.billing.worker import HANDLED
from sidecar.http.auth import ADMIN, READ, STRIPE_SIGNATURE
from sidecar.http.billing import SQL_503
from sidecar.http.billing_responses import (
    BillingEvent,
    BillingEvents,
    BillingStatus,
    EventRetried,
    WebhookEndpoint,
    WebhookReceived,
)
from sidecar.http.contract import Audited, Call, Out, Routes
from sidecar.http.queries import (
    EventsQuery,
)
from sidecar.http.schemas import (
    EventPath,
)
from sidecar.http.state import BILLING, BILLING_WORKER, SETTINGS
from sidecar.runtime import metrics

stripe_routes = Routes()
# Event types counted by name in the metrics (the ones billing handles); others are "other".
COUNTED_EVENT_TYPES = HANDLED


@stripe_routes.route(
    "POST",
    "/webhooks/stripe",
    "Stripe's webhook: verified, stored, acknowledged (the worker processes it)",
    tag="billing",
    auth=STRIPE_SIGNATURE,
    body_schema={"type": "object", "additionalProperties": True},
    responses={200: Out(WebhookReceived, "stored (or a duplicate)")},
    errors={
        400: "`invalid_signature`: missing, wrong, stale or not a Stripe event",
        413: "`request_too_large`: the body is over SIDECAR_STRIPE_WEBHOOK_MAX_BYTES (5 MiB "
        "by default)",
        503: "`billing_not_configured`: no webhook secret; `ledger_unavailable`",
    },
    description="No bearer token: the `Stripe-Signature` header authenticates the raw body "
    "(any of SIDECAR_STRIPE_WEBHOOK_SECRETS).",
    body_limit=lambda app: app[SETTINGS].stripe_webhook_max_bytes,  # Stripe's can be large
)
async def stripe_webhook(call: Call[None, None, None]) -> WebhookReceived:
    """Stripe's webhook: verified, stored durably, acknowledged; the worker processes it.
    No bearer token: the signature is the authentication. Counted in the metrics by event type
    and outcome."""
    request = call.request
    settings = request.app[SETTINGS]
    etype, outcome = "unknown", "error"
    try:
        payload = await request.read()
        event = verify(
            payload,
            request.headers.get("Stripe-Signature"),
            settings.webhook_secrets,
            settings.stripe_webhook_tolerance_s,
        )
        etype = event["type"] if event["type"] in COUNTED_EVENT_TYPES else "other"
        b = request.app[BILLING]
        stored = await b.events.store(event["id"], event["type"], event, b.clock())
        outcome = "received" if stored else "duplicate"
    except errors.InvalidSignature:
        outcome = "invalid_signature"
        raise
    except errors.BillingNotConfigured:
        outcome = "not_configured"
        raise
    finally:
        metrics.WEBHOOKS.labels(etype, outcome).inc()
    worker = request.app.get(BILLING_WORKER)
    if worker is not None:
        worker.wake()
    return WebhookReceived(received=True, id=event["id"], duplicate=not stored)


@stripe_routes.route(
    "GET",
    "/v1/admin/billing/events",
    "Stored Stripe events, newest first (`status=dead`: the dead letters)",
    operation_id="list_billing_events",
    tag="billing",
    auth=READ,
    query=EventsQuery,
    responses={200: Out(BillingEvents, "the events")},
    errors={503: SQL_503},
)
async def list_events(call: Call[None, EventsQuery, None]) -> BillingEvents:
    """Stored Stripe events, newest first; ?status=dead lists the dead letters."""
    events = await call.app[BILLING].events.listing(call.query.status, call.query.limit)
    return BillingEvents(
        events=[
            BillingEvent(
                id=e["id"],
                type=e["type"],
                status=e["status"],
                attempts=e["attempts"],
                outcome=e["outcome"],
                error=e["error"],
                received_at=e["received_at"],
            )
            for e in events
        ]
    )


@stripe_routes.route(
    "GET",
    "/v1/admin/billing/status",
    "Stripe events and webhook deliveries by status (`dead` ones need a look)",
    tag="billing",
    auth=READ,
    responses={200: Out(BillingStatus, "the counts")},
    errors={503: SQL_503},
)
async def billing_status(call: Call[None, None, None]) -> BillingStatus:
    """Stripe events and low-balance deliveries by status; ``dead`` counts need a look."""
    b = call.app[BILLING]
    return BillingStatus(
        events=await b.events.by_status(),
        deliveries=await b.notifications.by_status(),
        stripe=b.gateway is not None,
        api_version=API_VERSION,
        webhook_endpoints=(
            None if b.endpoints is None else [WebhookEndpoint(**ep) for ep in b.endpoints]
        ),
    )


@stripe_routes.route(
    "POST",
    "/v1/admin/billing/events/{event_id}/retry",
    "Process a dead or retrying Stripe event again",
    operation_id="retry_billing_event",
    tag="billing",
    auth=ADMIN,
    audit=Audited("billing_event.retry"),
    params=EventPath,
    responses={200: Out(EventRetried, "queued again")},
    errors={422: "`invalid_request`: no dead or retrying event with that id", 503: SQL_503},
)
async def retry_event(call: Call[EventPath, None, None]) -> EventRetried:
    event_id = call.path.event_id
    if not await call.app[BILLING].events.retry(event_id):
        raise errors.InvalidInput(f"no dead or retrying event {event_id}", field="event_id")
    worker = call.app.get(BILLING_WORKER)
    if worker is not None:
        worker.wake()
    return EventRetried(id=event_id, status="received")
