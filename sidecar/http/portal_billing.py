"""The customer portal's billing routes (docs/portal.md): buying a package through Stripe
Checkout and following the purchase until its credits are granted, saving a card, the auto
top-up, and the link into Stripe's own customer portal. Authorised and confined as every
portal route (sidecar/http/portal_api.py)."""

from __future__ import annotations

from typing import Any

from sidecar import errors
from sidecar.billing import purchases
from sidecar.http import billing
from sidecar.http.auth import PORTAL_SESSION
from sidecar.http.billing_responses import CheckoutSession, PaymentMethods
from sidecar.http.contract import Audited, Call, Out, Routes, via_get
from sidecar.http.portal_api import CHANGE_ERRORS, READ_ERRORS, TAG, account, as_account
from sidecar.http.portal_models import (
    BillingPortalLink,
    CheckoutSessionPath,
    PortalAutoTopUp,
    PortalCheckout,
    PortalCheckoutRequest,
    PortalSetupRequest,
    PurchaseStatus,
)
from sidecar.http.portal_sessions import PAGE, portal_base
from sidecar.http.queries import NoQuery
from sidecar.http.schemas import AutoTopUpRequest
from sidecar.http.state import BILLING

routes = Routes()


# -- buying ----------------------------------------------------------------------------------


@routes.route(
    "POST",
    "/v1/portal/checkout",
    "Buy a package: a Stripe Checkout Session to open in a new window",
    tag=TAG,
    auth=PORTAL_SESSION,
    # a Checkout Session's url lets whoever holds it pay, or save a card, on the customer's
    # behalf: never kept (as Stripe's portal link)
    audit=Audited("portal.checkout", target="package_id", secret=("url",)),
    body=PortalCheckoutRequest,
    responses={201: Out(PortalCheckout, "the session (a double click's: the same one)")},
    errors={
        **CHANGE_ERRORS,
        404: "`unknown_package`",
        409: billing.CHECKOUT_409,
        502: None,
        503: billing.BILLING_503,
    },
)
async def portal_checkout(call: Call[None, None, PortalCheckoutRequest]) -> PortalCheckout:
    req, acct = call.body, account(call)
    base = portal_base(call.request)
    started = await purchases.checkout(
        call.app[BILLING],
        acct,
        [purchases.Item(req.package_id, req.quantity)],
        f"{base}{PAGE}?purchase={{CHECKOUT_SESSION_ID}}",
        f"{base}{PAGE}",
        f"portal:{req.idempotency_key}",  # the page's, apart from the admin API's
    )
    s = started.session
    # replayed: the audit trail keeps a double click as one change and its replay
    return PortalCheckout(id=s.id, url=s.url, account=acct, replayed=not started.new)


@routes.route(
    "GET",
    "/v1/portal/purchases/{session_id}",
    "A purchase started from the portal: pending until its credits are granted",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=NoQuery,
    params=CheckoutSessionPath,
    responses={200: Out(PurchaseStatus, "its state")},
    errors=READ_ERRORS,
)
async def portal_purchase(call: Call[CheckoutSessionPath, NoQuery, None]) -> PurchaseStatus:
    status = await purchases.checkout_status(call.app[BILLING], account(call), call.path.session_id)
    return PurchaseStatus(
        session_id=status.session_id, status=status.status, credits=status.credits
    )


@routes.route(
    "POST",
    "/v1/portal/payment-method",
    "Save a card for auto top-up: a Stripe Checkout Session in setup mode (new window)",
    tag=TAG,
    auth=PORTAL_SESSION,
    audit=Audited("portal.payment_method", secret=("url",)),
    body=PortalSetupRequest,
    responses={201: Out(CheckoutSession, "the session")},
    errors={**CHANGE_ERRORS, 409: billing.CHECKOUT_409, 502: None, 503: billing.BILLING_503},
)
async def portal_setup(call: Call[None, None, PortalSetupRequest]) -> CheckoutSession:
    acct, b = account(call), call.app[BILLING]
    base = portal_base(call.request)
    on_sale = await b.packages.listing(active_only=True)
    session = await purchases.setup_checkout(
        b,
        acct,
        f"{base}{PAGE}?card=saved",
        f"{base}{PAGE}",
        on_sale[0].currency if on_sale else "usd",
        f"portal:{call.body.idempotency_key}",
    )
    return CheckoutSession(id=session.id, url=session.url, account=acct)


@routes.route(
    "GET",
    "/v1/portal/payment-methods",
    "The cards saved for auto top-up",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=NoQuery,
    responses={200: Out(PaymentMethods, "the saved payment methods")},
    errors={**READ_ERRORS, 502: None},
)
async def portal_payment_methods(call: Call[None, NoQuery, None]) -> PaymentMethods:
    return await billing.payment_methods(as_account(call))


@routes.route(
    "GET",
    "/v1/portal/auto-topup",
    "The auto top-up (null: none)",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=NoQuery,
    responses={200: Out(PortalAutoTopUp, "the auto top-up")},
    errors=READ_ERRORS,
)
async def portal_get_topup(call: Call[None, NoQuery, None]) -> PortalAutoTopUp:
    try:
        found = await billing.get_auto_topup(as_account(call))
    except errors.UnknownAccount:  # none set
        found = None
    return PortalAutoTopUp(account=account(call), auto_topup=found)


async def _topup_now(call: Call[Any, Any, Any]) -> Any:
    return await via_get(billing.get_auto_topup, as_account(call))


@routes.route(
    "PUT",
    "/v1/portal/auto-topup",
    "Turn auto top-up on (or change it): a package bought with a saved card below a threshold",
    tag=TAG,
    auth=PORTAL_SESSION,
    audit=Audited("portal.auto_topup.put", before=_topup_now),
    body=AutoTopUpRequest,
    responses={200: Out(PortalAutoTopUp, "the auto top-up")},
    errors={**CHANGE_ERRORS, 404: "`unknown_package`", 422: None, 502: None},
)
async def portal_put_topup(call: Call[None, None, AutoTopUpRequest]) -> PortalAutoTopUp:
    found = await billing.put_auto_topup(as_account(call))
    return PortalAutoTopUp(account=account(call), auto_topup=found)


@routes.route(
    "DELETE",
    "/v1/portal/auto-topup",
    "Turn auto top-up off",
    tag=TAG,
    auth=PORTAL_SESSION,
    audit=Audited("portal.auto_topup.delete", before=_topup_now),
    responses={200: Out(PortalAutoTopUp, "none now")},
    errors=CHANGE_ERRORS,
)
async def portal_delete_topup(call: Call[None, None, None]) -> PortalAutoTopUp:
    await billing.delete_auto_topup(as_account(call))
    return PortalAutoTopUp(account=account(call), auto_topup=None)


# -- Stripe's own portal -----------------------------------------------------------------------


@routes.route(
    "POST",
    "/v1/portal/billing-portal",
    "Billing details: a link into Stripe's customer portal (payment methods, invoices, receipts)",
    tag=TAG,
    auth=PORTAL_SESSION,
    audit=Audited("portal.billing_portal", secret=("url",)),
    responses={201: Out(BillingPortalLink, "open it in a new window")},
    errors={
        **CHANGE_ERRORS,
        409: "`no_billing_customer`: the account never bought through Stripe",
        502: None,
        503: billing.BILLING_503,
    },
)
async def portal_billing_portal(call: Call[None, None, None]) -> BillingPortalLink:
    url = await purchases.billing_portal_url(
        call.app[BILLING], account(call), f"{portal_base(call.request)}{PAGE}"
    )
    return BillingPortalLink(url=url)
