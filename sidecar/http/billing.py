"""Billing routes: credit packages, Checkout, payment methods, the billing profile, auto top-up
and notification settings (admin token, except where noted). Stripe's webhook and the stored
events: sidecar/http/stripe_events.py."""

from __future__ import annotations

from typing import Any

from sidecar import errors
from sidecar.billing import currency, netguard, notify, purchases, topup
from sidecar.billing.gateway import StripeGateway, StripeRefused, StripeTransient
from sidecar.billing.stores import Package
from sidecar.http.auth import ADMIN, CATALOG, CHECKOUT, READ
from sidecar.http.billing_responses import (
    AutoTopUp,
    BillingProfile,
    CheckoutSession,
    Deleted,
    Delivery,
    NotificationEndpoint,
    Notifications,
    PackageList,
    PackageView,
    PaymentMethod,
    PaymentMethods,
)
from sidecar.http.contract import Audited, Call, Out, Reply, Routes, via_get
from sidecar.http.queries import (
    PackagesQuery,
)
from sidecar.http.schemas import (
    AccountPath,
    AutoTopUpRequest,
    BillingProfileRequest,
    CheckoutRequest,
    NotificationRequest,
    PackagePath,
    PackageRequest,
    SetupCheckoutRequest,
)
from sidecar.http.state import BILLING, SETTINGS

billing_routes = Routes()


async def now_get_package(call: Call[Any, Any, Any]) -> Any:
    """What ``get_package`` answers before a change (its audit entry's ``before``)."""
    return await via_get(get_package, call)


async def now_get_notifications(call: Call[Any, Any, Any]) -> Any:
    """What ``get_notifications`` answers before a change (its audit entry's ``before``)."""
    return await via_get(get_notifications, call)


async def now_get_auto_topup(call: Call[Any, Any, Any]) -> Any:
    """What ``get_auto_topup`` answers before a change (its audit entry's ``before``)."""
    return await via_get(get_auto_topup, call)


SQL_503 = "`ledger_unavailable`: the SQL store could not be reached"
BILLING_503 = (
    "`billing_not_configured`: no Stripe key; `ledger_unavailable`: no SQL; "
    "`store_unavailable`: no Redis"
)


def package_view(p: Package) -> PackageView:
    return PackageView(
        id=p.id,
        name=p.name,
        credits=p.credits,
        stripe_price_id=p.stripe_price_id,
        price=p.price,
        currency=p.currency,
        credit_expiry_s=p.credit_expiry_s,
        active=p.active,
        price_display=currency.display(p.price, p.currency),
    )


@billing_routes.route(
    "PUT",
    "/v1/admin/packages/{package_id}",
    "Create or replace a credit package (`active: false` retires it)",
    tag="billing",
    auth=ADMIN,
    audit=Audited("package.put", before=now_get_package),
    params=PackagePath,
    body=PackageRequest,
    responses={200: Out(PackageView, "replaced"), 201: Out(PackageView, "created")},
    errors={
        422: "`invalid_request`: e.g. a price or currency other than its Stripe Price's "
        "(checked when Stripe is configured), or an amount Stripe cannot charge in that "
        "currency",
        502: None,
        503: SQL_503,
    },
)
async def put_package(call: Call[PackagePath, None, PackageRequest]) -> Reply:
    """Creates or replaces a credit package (``active: false`` retires it)."""
    req = call.body
    b = call.app[BILLING]
    p = Package(
        call.path.package_id,
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
    created = await b.packages.put(p, b.clock())  # InvalidInput: its price is another's
    return Reply(package_view(p), 201 if created else 200)


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


@billing_routes.route(
    "GET",
    "/v1/admin/packages",
    "Credit packages",
    tag="billing",
    auth=CATALOG,
    query=PackagesQuery,
    responses={200: Out(PackageList, "the packages")},
    errors={503: SQL_503},
)
async def list_packages(call: Call[None, PackagesQuery, None]) -> PackageList:
    packages = await call.app[BILLING].packages.listing(active_only=call.query.active)
    return PackageList(packages=[package_view(p) for p in packages])


@billing_routes.route(
    "GET",
    "/v1/admin/packages/{package_id}",
    "A credit package",
    tag="billing",
    auth=CATALOG,
    params=PackagePath,
    responses={200: Out(PackageView, "the package")},
    errors={404: "`unknown_package`", 503: SQL_503},
)
async def get_package(call: Call[PackagePath, None, None]) -> PackageView:
    package_id = call.path.package_id
    p = await call.app[BILLING].packages.get(package_id)
    if p is None:
        raise errors.UnknownPackage(f"no package {package_id}")
    return package_view(p)


CHECKOUT_409 = "`idempotency_conflict`: the idempotency_key was used with other parameters"


@billing_routes.route(
    "POST",
    "/v1/checkout",
    "A Stripe Checkout Session for an account: its URL",
    tag="billing",
    auth=CHECKOUT,
    body=CheckoutRequest,
    responses={201: Out(CheckoutSession, "the session")},
    errors={
        404: "`unknown_account`, `unknown_package`",
        409: CHECKOUT_409,
        502: None,
        503: BILLING_503,
    },
)
async def checkout(call: Call[None, None, CheckoutRequest]) -> CheckoutSession:
    """A Stripe Checkout Session for an account (service or admin token): its URL."""
    req = call.body
    if (req.package_id is None) == (req.items is None):
        raise errors.InvalidInput("give either package_id or items", field="items")
    items = (
        [purchases.Item(req.package_id, 1)]
        if req.package_id is not None
        else [purchases.Item(i.package_id, i.quantity) for i in req.items or []]
    )
    started = await purchases.checkout(
        call.app[BILLING],
        req.account,
        items,
        req.success_url,
        req.cancel_url,
        req.idempotency_key,
        save_card=req.save_card,
        email=req.email,
    )
    session = started.session
    return CheckoutSession(id=session.id, url=session.url, account=req.account)


@billing_routes.route(
    "POST",
    "/v1/checkout/setup",
    "A Stripe Checkout Session in setup mode: the customer saves a card without paying (it "
    "becomes the auto top-up's card)",
    tag="billing",
    auth=CHECKOUT,
    body=SetupCheckoutRequest,
    responses={201: Out(CheckoutSession, "the session")},
    errors={404: "`unknown_account`", 409: CHECKOUT_409, 502: None, 503: BILLING_503},
)
async def setup_checkout(call: Call[None, None, SetupCheckoutRequest]) -> CheckoutSession:
    """A Stripe Checkout Session in setup mode (service or admin token): the customer saves a
    card without paying; it becomes the account's auto top-up card."""
    req = call.body
    session = await purchases.setup_checkout(
        call.app[BILLING],
        req.account,
        req.success_url,
        req.cancel_url,
        req.currency,
        req.idempotency_key,
        email=req.email,
    )
    return CheckoutSession(id=session.id, url=session.url, account=req.account)


@billing_routes.route(
    "GET",
    "/v1/admin/accounts/{account}/payment-methods",
    "The payment methods saved on the account's Stripe customer",
    operation_id="list_payment_methods",
    tag="billing",
    auth=READ,
    params=AccountPath,
    responses={200: Out(PaymentMethods, "its saved payment methods")},
    errors={404: "`unknown_account`", 502: None, 503: BILLING_503},
)
async def payment_methods(call: Call[AccountPath, None, None]) -> PaymentMethods:
    """The cards (and other methods) saved on the account's Stripe customer."""
    account = call.path.account
    b = call.app[BILLING]
    gateway = b.stripe()
    customer = await b.customers.customer(account)
    if customer is None:
        await b.ledger.balance(account)  # UnknownAccount
        return PaymentMethods(account=account, customer=None, payment_methods=[])
    try:
        methods = await gateway.payment_methods(customer)
    except (StripeTransient, StripeRefused) as e:
        raise errors.PaymentProviderError(f"Stripe: {e}") from None
    return PaymentMethods(
        account=account,
        customer=customer,
        payment_methods=[PaymentMethod(id=m.id, type=m.type, label=m.label) for m in methods],
    )


@billing_routes.route(
    "PUT",
    "/v1/admin/accounts/{account}/billing",
    "Set an account's billing email (on its Stripe customer: receipts go there)",
    tag="billing",
    auth=ADMIN,
    audit=Audited("billing_profile.put"),
    params=AccountPath,
    body=BillingProfileRequest,
    responses={200: Out(BillingProfile, "the billing profile")},
    errors={404: "`unknown_account`", 502: None, 503: BILLING_503},
)
async def put_billing_profile(
    call: Call[AccountPath, None, BillingProfileRequest],
) -> BillingProfile:
    """The account's billing email: on its Stripe customer, where Stripe sends receipts."""
    account, req = call.path.account, call.body
    b = call.app[BILLING]
    await b.ledger.balance(account)  # UnknownAccount
    await b.customers.set_billing_email(account, req.email)
    customer = await b.customers.customer(account)
    if customer is not None and req.email is not None:
        try:
            await b.stripe().set_customer_email(customer, req.email)
        except (StripeTransient, StripeRefused) as e:
            raise errors.PaymentProviderError(f"Stripe: {e}") from None
    return BillingProfile(account=account, email=req.email, customer=customer)


@billing_routes.route(
    "PUT",
    "/v1/admin/accounts/{account}/auto-topup",
    "Set an account's auto top-up",
    tag="billing",
    auth=ADMIN,
    audit=Audited("auto_topup.put", before=now_get_auto_topup),
    params=AccountPath,
    body=AutoTopUpRequest,
    responses={200: Out(AutoTopUp, "the auto top-up")},
    errors={
        404: "`unknown_account`, `unknown_package`",
        422: "`invalid_request`: e.g. a payment method not saved on the account's Stripe customer",
        502: None,
        503: BILLING_503,
    },
)
async def put_auto_topup(call: Call[AccountPath, None, AutoTopUpRequest]) -> AutoTopUp:
    account, req = call.path.account, call.body
    b = call.app[BILLING]
    b.stripe()
    await b.ledger.balance(account)  # UnknownAccount
    p = await b.packages.get(req.package_id)
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
    return _topup_view(await b.topups.get(account))


@billing_routes.route(
    "GET",
    "/v1/admin/accounts/{account}/auto-topup",
    "An account's auto top-up, with its failures",
    tag="billing",
    auth=READ,
    params=AccountPath,
    responses={200: Out(AutoTopUp, "the auto top-up")},
    errors={404: "`unknown_account`: none set", 503: SQL_503},
)
async def get_auto_topup(call: Call[AccountPath, None, None]) -> AutoTopUp:
    account = call.path.account
    cfg = await call.app[BILLING].topups.get(account)
    if cfg is None:
        raise errors.UnknownAccount(f"account {account} has no auto top-up")
    return _topup_view(cfg)


@billing_routes.route(
    "DELETE",
    "/v1/admin/accounts/{account}/auto-topup",
    "Remove an account's auto top-up",
    tag="billing",
    auth=ADMIN,
    audit=Audited("auto_topup.delete", before=now_get_auto_topup),
    params=AccountPath,
    responses={200: Out(Deleted, "whether there was one")},
    errors={503: SQL_503},
)
async def delete_auto_topup(call: Call[AccountPath, None, None]) -> Deleted:
    account = call.path.account
    existed = await topup.disable(call.app[BILLING], account)
    return Deleted(account=account, deleted=existed)


def _topup_view(cfg: dict[str, Any] | None) -> AutoTopUp:
    assert cfg is not None
    pending = cfg["pending_payment_intent"]
    return AutoTopUp(
        account=cfg["account"],
        enabled=cfg["enabled"],
        threshold=cfg["threshold"],
        package_id=cfg["package_id"],
        payment_method=cfg["payment_method"],
        paused=cfg["paused"],
        failures=cfg["failures"],
        last_error=cfg["last_error"],
        # A charge that needs the customer: the link sent to the business ("" = none made).
        needs_customer=cfg["action_url"] is not None,
        action_url=cfg["action_url"] or None,
        action_payment_intent=cfg["action_payment_intent"],
        # "starting:<uuid>" is the slot of a charge being created, not a PaymentIntent yet.
        pending_payment_intent=(
            pending if pending and not pending.startswith("starting") else None
        ),
    )


@billing_routes.route(
    "PUT",
    "/v1/admin/accounts/{account}/notifications",
    "Where low-balance webhooks go; returns the signing secret (only here)",
    tag="billing",
    auth=ADMIN,
    audit=Audited("notifications.put", before=now_get_notifications),
    params=AccountPath,
    body=NotificationRequest,
    responses={200: Out(NotificationEndpoint, "the endpoint and its secret")},
    errors={
        404: "`unknown_account`",
        422: "`invalid_request`: a malformed URL, or one naming a non-public address "
        "(loopback, private, link-local, CGNAT, multicast, reserved; unless "
        "SIDECAR_NOTIFY_ALLOW_PRIVATE)",
        503: SQL_503,
    },
)
async def put_notifications(
    call: Call[AccountPath, None, NotificationRequest],
) -> NotificationEndpoint:
    """Where low-balance webhooks go; returns the signing secret (only here: keep it)."""
    account, req = call.path.account, call.body
    refused = netguard.saved_url_refusal(
        req.url, allow_private=call.app[SETTINGS].notify_allow_private
    )
    if refused is not None:
        raise errors.InvalidInput(f"url {refused}", field="url")
    b = call.app[BILLING]
    await b.ledger.balance(account)  # UnknownAccount
    secret = notify.new_secret()
    await b.notifications.put_endpoint(account, req.url, secret, b.clock())
    return NotificationEndpoint(account=account, url=req.url, secret=secret, header=notify.HEADER)


@billing_routes.route(
    "GET",
    "/v1/admin/accounts/{account}/notifications",
    "An account's webhook endpoint and its recent deliveries",
    tag="billing",
    auth=READ,
    params=AccountPath,
    responses={200: Out(Notifications, "the endpoint and deliveries")},
    errors={503: SQL_503},
)
async def get_notifications(call: Call[AccountPath, None, None]) -> Notifications:
    account = call.path.account
    b = call.app[BILLING]
    ep = await b.notifications.endpoint(account)
    deliveries = await b.notifications.deliveries(account, 20)
    return Notifications(
        account=account,
        url=ep["url"] if ep else None,
        deliveries=[
            Delivery(
                id=d["id"],
                status=d["status"],
                attempts=d["attempts"],
                last_error=d["last_error"],
                payload=d["payload"],
            )
            for d in deliveries
        ],
    )


@billing_routes.route(
    "DELETE",
    "/v1/admin/accounts/{account}/notifications",
    "Remove an account's webhook endpoint",
    tag="billing",
    auth=ADMIN,
    audit=Audited("notifications.delete", before=now_get_notifications),
    params=AccountPath,
    responses={200: Out(Deleted, "whether there was one")},
    errors={503: SQL_503},
)
async def delete_notifications(call: Call[AccountPath, None, None]) -> Deleted:
    account = call.path.account
    existed = await call.app[BILLING].notifications.delete_endpoint(account)
    return Deleted(account=account, deleted=existed)
