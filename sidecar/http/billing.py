"""Billing routes: credit packages, Checkout, auto top-up and notification settings, the
Stripe webhook receiver and the stored events (admin token, except where noted)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from sidecar import errors, metrics
from sidecar.asciiint import parse_ascii_int
from sidecar.billing import currency, netguard, notify, purchases, topup
from sidecar.billing.gateway import API_VERSION, StripeGateway, StripeRefused, StripeTransient
from sidecar.billing.store import Package
from sidecar.billing.webhook import verify
from sidecar.billing.worker import HANDLED
from sidecar.http.appkeys import BILLING, BILLING_WORKER, SETTINGS, TOKENS
from sidecar.http.auth import role_check
from sidecar.http.contract import read_body as body
from sidecar.http.errors import json_response
from sidecar.http.schemas import (
    ID,
    AutoTopUpRequest,
    BillingProfileRequest,
    CheckoutRequest,
    NotificationRequest,
    PackageRequest,
    SetupCheckoutRequest,
)
from sidecar.http.server import body_limit


def authorize(request: web.Request, *roles: str) -> None:  # until declared
    role_check(request.app[TOKENS], roles)(request)


def path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    try:
        return ID.validate_python(value)
    except ValidationError as e:
        msg = e.errors(include_url=False)[0]["msg"]
        raise errors.InvalidInput(f"{name}: {msg}", field=name) from None


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse_ascii_int(raw, lo, hi)
    except ValueError as e:
        raise errors.InvalidInput(f"{name}: {e}", field=name) from None


billing_routes = web.RouteTableDef()
# Event types counted by name in the metrics (the ones billing handles); others are "other".
COUNTED_EVENT_TYPES = HANDLED


@billing_routes.put("/v1/admin/packages/{package_id}")
async def put_package(request: web.Request) -> web.Response:
    """Creates or replaces a credit package (``active: false`` retires it)."""
    authorize(request, "admin")
    package_id = path_id(request, "package_id")
    req = await body(request, PackageRequest)
    b = request.app[BILLING]
    p = Package(
        package_id,
        req.name,
        req.credits,
        req.stripe_price_id,
        req.price,
        req.currency,
        req.credit_expiry_s,
        req.active,
    )
    wrong = currency.problem(req.price, req.currency)
    if wrong:
        raise errors.InvalidInput(wrong, field="price")
    if req.stripe_price_id and b.gateway is not None:
        await _price_agrees(b.gateway, p)
    try:
        created = await b.store.put_package(p, b.clock())
    except IntegrityError:  # the only unique column besides the id: the Stripe price
        raise errors.InvalidInput(
            f"stripe_price_id {req.stripe_price_id} belongs to another package",
            field="stripe_price_id",
        ) from None
    return json_response(p.public(), 201 if created else 200)


async def _price_agrees(gateway: StripeGateway, p: Package) -> None:
    """The package's price and currency are its Stripe Price's (what Checkout charges)."""
    assert p.stripe_price_id
    try:
        price = await gateway.price(p.stripe_price_id)
    except (StripeTransient, StripeRefused) as e:
        raise errors.PaymentProviderError(f"Stripe: {e}") from None
    field = "stripe_price_id"
    if price is None:
        raise errors.InvalidInput(f"Stripe has no price {p.stripe_price_id}", field=field)
    if not price.active or price.type != "one_time":
        raise errors.InvalidInput(
            f"Stripe price {price.id} is {'inactive' if not price.active else price.type}: "
            "a package needs an active one-time price",
            field=field,
        )
    if price.currency != p.currency:
        raise errors.InvalidInput(
            f"Stripe price {price.id} is in {price.currency}, the package in {p.currency}",
            field="currency",
        )
    if price.unit_amount != p.price:
        theirs = (
            "no fixed amount"
            if price.unit_amount is None
            else (f"{price.unit_amount} ({currency.display(price.unit_amount, price.currency)})")
        )
        raise errors.InvalidInput(
            f"Stripe price {price.id} is {theirs}, the package says {p.price} "
            f"({currency.display(p.price, p.currency)}); amounts are in the currency's "
            "minor unit",
            field="price",
        )


@billing_routes.get("/v1/admin/packages")
async def list_packages(request: web.Request) -> web.Response:
    authorize(request, "admin", "service")
    active = request.query.get("active") == "true"
    packages = await request.app[BILLING].store.packages(active_only=active)
    return json_response({"packages": [p.public() for p in packages]})


@billing_routes.get("/v1/admin/packages/{package_id}")
async def get_package(request: web.Request) -> web.Response:
    authorize(request, "admin", "service")
    package_id = path_id(request, "package_id")
    p = await request.app[BILLING].store.package(package_id)
    if p is None:
        raise errors.UnknownPackage(f"no package {package_id}")
    return json_response(p.public())


@billing_routes.post("/v1/checkout")
async def checkout(request: web.Request) -> web.Response:
    """A Stripe Checkout Session for an account (service or admin token): its URL."""
    authorize(request, "admin", "service")
    req = await body(request, CheckoutRequest)
    if (req.package_id is None) == (req.items is None):
        raise errors.InvalidInput("give either package_id or items", field="items")
    items = (
        [purchases.Item(req.package_id, 1)]
        if req.package_id is not None
        else [purchases.Item(i.package_id, i.quantity) for i in req.items or []]
    )
    session = await purchases.checkout(
        request.app[BILLING],
        req.account,
        items,
        req.success_url,
        req.cancel_url,
        req.idempotency_key,
        save_card=req.save_card,
        email=req.email,
    )
    return json_response({"id": session.id, "url": session.url, "account": req.account}, 201)


@billing_routes.post("/v1/checkout/setup")
async def setup_checkout(request: web.Request) -> web.Response:
    """A Stripe Checkout Session in setup mode (service or admin token): the customer saves a
    card without paying; it becomes the account's auto top-up card."""
    authorize(request, "admin", "service")
    req = await body(request, SetupCheckoutRequest)
    session = await purchases.setup_checkout(
        request.app[BILLING],
        req.account,
        req.success_url,
        req.cancel_url,
        req.currency,
        req.idempotency_key,
        email=req.email,
    )
    return json_response({"id": session.id, "url": session.url, "account": req.account}, 201)


@billing_routes.get("/v1/admin/accounts/{account}/payment-methods")
async def payment_methods(request: web.Request) -> web.Response:
    """The cards (and other methods) saved on the account's Stripe customer."""
    authorize(request, "admin")
    account = path_id(request, "account")
    b = request.app[BILLING]
    gateway = b.stripe()
    customer = await b.store.customer(account)
    if customer is None:
        await b.ledger.balance(account)  # UnknownAccount
        return json_response({"account": account, "customer": None, "payment_methods": []})
    try:
        methods = await gateway.payment_methods(customer)
    except (StripeTransient, StripeRefused) as e:
        raise errors.PaymentProviderError(f"Stripe: {e}") from None
    return json_response(
        {
            "account": account,
            "customer": customer,
            "payment_methods": [{"id": m.id, "type": m.type, "label": m.label} for m in methods],
        }
    )


@billing_routes.put("/v1/admin/accounts/{account}/billing")
async def put_billing_profile(request: web.Request) -> web.Response:
    """The account's billing email: on its Stripe customer, where Stripe sends receipts."""
    authorize(request, "admin")
    account = path_id(request, "account")
    req = await body(request, BillingProfileRequest)
    b = request.app[BILLING]
    await b.ledger.balance(account)  # UnknownAccount
    await b.store.set_billing_email(account, req.email)
    customer = await b.store.customer(account)
    if customer is not None and req.email is not None:
        try:
            await b.stripe().set_customer_email(customer, req.email)
        except (StripeTransient, StripeRefused) as e:
            raise errors.PaymentProviderError(f"Stripe: {e}") from None
    return json_response({"account": account, "email": req.email, "customer": customer})


@billing_routes.put("/v1/admin/accounts/{account}/auto-topup")
async def put_auto_topup(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    req = await body(request, AutoTopUpRequest)
    b = request.app[BILLING]
    b.stripe()
    await b.ledger.balance(account)  # UnknownAccount
    p = await b.store.package(req.package_id)
    if p is None or not p.active:
        raise errors.UnknownPackage(f"no active package {req.package_id}", field="package_id")
    await topup.configure(
        b,
        account,
        threshold=req.threshold,
        package_id=req.package_id,
        payment_method=req.payment_method,
        enabled=req.enabled,
    )
    return json_response(_topup_view(await b.store.topup(account)))


@billing_routes.get("/v1/admin/accounts/{account}/auto-topup")
async def get_auto_topup(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    cfg = await request.app[BILLING].store.topup(account)
    if cfg is None:
        raise errors.UnknownAccount(f"account {account} has no auto top-up")
    return json_response(_topup_view(cfg))


@billing_routes.delete("/v1/admin/accounts/{account}/auto-topup")
async def delete_auto_topup(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    existed = await topup.disable(request.app[BILLING], account)
    return json_response({"account": account, "deleted": existed})


def _topup_view(cfg: dict[str, Any] | None) -> dict[str, Any]:
    assert cfg is not None
    keys = ("account", "enabled", "threshold", "package_id", "payment_method", "paused")
    view = {k: cfg[k] for k in keys}
    view |= {"failures": cfg["failures"], "last_error": cfg["last_error"]}
    # A charge that needs the customer: the link sent to the business ("" = none made).
    view["needs_customer"] = cfg["action_url"] is not None
    view["action_url"] = cfg["action_url"] or None
    view["action_payment_intent"] = cfg["action_payment_intent"]
    pending = cfg["pending_payment_intent"]
    # "starting:<uuid>" is the slot of a charge being created, not a PaymentIntent yet.
    view["pending_payment_intent"] = (
        pending if pending and not pending.startswith("starting") else None
    )
    return view


@billing_routes.put("/v1/admin/accounts/{account}/notifications")
async def put_notifications(request: web.Request) -> web.Response:
    """Where low-balance webhooks go; returns the signing secret (only here: keep it)."""
    authorize(request, "admin")
    account = path_id(request, "account")
    req = await body(request, NotificationRequest)
    refused = netguard.saved_url_refusal(
        req.url, allow_private=request.app[SETTINGS].notify_allow_private
    )
    if refused is not None:
        raise errors.InvalidInput(f"url {refused}", field="url")
    b = request.app[BILLING]
    await b.ledger.balance(account)  # UnknownAccount
    secret = notify.new_secret()
    await b.store.put_endpoint(account, req.url, secret, b.clock())
    return json_response(
        {"account": account, "url": req.url, "secret": secret, "header": notify.HEADER}
    )


@billing_routes.get("/v1/admin/accounts/{account}/notifications")
async def get_notifications(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    b = request.app[BILLING]
    ep = await b.store.endpoint(account)
    deliveries = await b.store.deliveries(account, 20)
    return json_response(
        {
            "account": account,
            "url": ep["url"] if ep else None,
            "deliveries": [
                {
                    "id": d["id"],
                    "status": d["status"],
                    "attempts": d["attempts"],
                    "last_error": d["last_error"],
                    "payload": d["payload"],
                }
                for d in deliveries
            ],
        }
    )


@billing_routes.delete("/v1/admin/accounts/{account}/notifications")
async def delete_notifications(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    existed = await request.app[BILLING].store.delete_endpoint(account)
    return json_response({"account": account, "deleted": existed})


@billing_routes.post("/webhooks/stripe")
@body_limit(lambda app: app[SETTINGS].stripe_webhook_max_bytes)  # Stripe's events can be large
async def stripe_webhook(request: web.Request) -> web.Response:
    """Stripe's webhook: verified, stored durably, acknowledged; the worker processes it.
    No bearer token: the signature is the authentication. Counted in the metrics by event type
    and outcome."""
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
        stored = await b.store.store_event(event["id"], event["type"], event, b.clock())
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
    return json_response({"received": True, "id": event["id"], "duplicate": not stored})


@billing_routes.get("/v1/admin/billing/events")
async def list_events(request: web.Request) -> web.Response:
    """Stored Stripe events, newest first; ?status=dead lists the dead letters."""
    authorize(request, "admin")
    status = request.query.get("status") or None
    if status not in (None, "received", "processing", "retry", "processed", "ignored", "dead"):
        raise errors.InvalidInput("unknown status", field="status")
    limit = query_int(request, "limit", 100, 1, 1000)
    events = await request.app[BILLING].store.events(status, limit)
    return json_response({"events": events})


@billing_routes.get("/v1/admin/billing/status")
async def billing_status(request: web.Request) -> web.Response:
    """Stripe events and low-balance deliveries by status; ``dead`` counts need a look."""
    authorize(request, "admin")
    b = request.app[BILLING]
    counts = await b.store.counts()
    return json_response(
        counts
        | {
            "stripe": b.gateway is not None,
            "api_version": API_VERSION,
            "webhook_endpoints": b.endpoints,
        }
    )


@billing_routes.post("/v1/admin/billing/events/{event_id}/retry")
async def retry_event(request: web.Request) -> web.Response:
    authorize(request, "admin")
    event_id = request.match_info["event_id"]
    if not 1 <= len(event_id) <= 255:
        raise errors.InvalidInput("event_id is malformed", field="event_id")
    if not await request.app[BILLING].store.retry_event(event_id):
        raise errors.InvalidInput(f"no dead or retrying event {event_id}", field="event_id")
    worker = request.app.get(BILLING_WORKER)
    if worker is not None:
        worker.wake()
    return json_response({"id": event_id, "status": "received"})
