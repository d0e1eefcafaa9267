"""The customer portal's API (docs/portal.md): what the portal's pages call, each route
authorised by the customer's portal session (its cookie; a change also by its CSRF token) and
about that session's account only: no route takes an account, so no request can name
another. Each answers what the admin API's route for the same thing answers (the same
handler, called for the session's account), and each change is in the audit trail with the
session as its actor. The billing routes (buying, cards, auto top-up, Stripe's portal) are in
sidecar/http/portal_billing.py."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from sidecar import errors
from sidecar.billing import purchases
from sidecar.http import accounts, admin, billing, keys
from sidecar.http.auth import PORTAL, PORTAL_SESSION
from sidecar.http.billing_responses import PackageList
from sidecar.http.contract import Audited, Call, Out, Reply, Routes, via_get
from sidecar.http.portal_models import (
    Branding,
    Features,
    PortalAlerts,
    PortalAlertsRequest,
    PortalKeyRequest,
    PortalSessionView,
    PortalSignedOut,
    PortalSpendLimit,
    PortalSpendLimitRequest,
)
from sidecar.http.portal_sessions import cleared_cookie
from sidecar.http.queries import NoQuery, TransactionsQuery, UsageQuery
from sidecar.http.read_responses import TransactionList, Usage
from sidecar.http.responses import Balance, Key, KeyCreated, KeyList
from sidecar.http.schemas import AccountPath, KeyPatch, KeyPath
from sidecar.http.state import API_KEYS, BILLING, LEDGER, PORTAL_SESSIONS, SETTINGS
from sidecar.http.views import spend_limit_view, spend_view
from sidecar.ledger.portal import Section
from sidecar.ledger.units import iso

routes = Routes()
TAG = "portal"
SESSION_401 = "`portal_session_required`: no live portal session (open the portal again)"
CHANGE_ERRORS: dict[int, str | None] = {
    401: SESSION_401,
    403: "`csrf`: a change needs the session's X-CSRF-Token, from the portal's own pages",
    503: None,
}
READ_ERRORS: dict[int, str | None] = {401: SESSION_401, 503: None}
BILLING_SECTIONS: frozenset[Section] = frozenset({"buy", "auto_topup", "billing"})
# How long the session view (the portal's first call) waits on SQL for the Stripe-customer
# lookup: a SQL that hangs (a partition: no error, no answer) hides the billing link, and
# the portal loads.
CUSTOMER_LOOKUP_S = 1.0


def account(call: Call[Any, Any, Any]) -> str:
    return call.request[PORTAL].account


def as_account(call: Call[Any, Any, Any]) -> Call[AccountPath, Any, Any]:
    """``call`` as the admin route's handler takes it: about the session's account."""
    path = AccountPath.model_construct(account=account(call))
    return Call(call.request, path, call.query, call.body)


async def _balance_now(call: Call[Any, Any, Any]) -> Any:
    return await via_get(accounts.balance, as_account(call))


# -- the session -----------------------------------------------------------------------------


@routes.route(
    "GET",
    "/v1/portal/session",
    "The portal session: its account, what to show, branding, and the CSRF token for changes",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=NoQuery,
    responses={200: Out(PortalSessionView, "the session")},
    errors=READ_ERRORS,
)
async def portal_session(call: Call[None, NoQuery, None]) -> PortalSessionView:
    session = call.request[PORTAL]
    settings = call.app[SETTINGS]
    b = call.app[BILLING]
    stripe_on = settings.stripe_api_key is not None
    customer = False
    if stripe_on:
        # no link, the rest still works
        with contextlib.suppress(errors.LedgerUnavailable, TimeoutError):
            async with asyncio.timeout(CUSTOMER_LOOKUP_S):
                customer = await purchases.has_billing_customer(b, session.account)
    bal = await call.app[LEDGER].balance(session.account)
    sections = [
        s
        for s in session.sections
        if stripe_on or s not in BILLING_SECTIONS
        if s != "billing" or customer
    ]
    return PortalSessionView(
        account=session.account,
        expires_at=iso(session.expires_at) or "",
        return_url=session.return_url,
        locale=session.locale,
        sections=sections,
        csrf_token=session.csrf,
        branding=Branding(
            product_name=settings.portal_product_name,
            logo_url=settings.portal_logo_url,
            accent_color=settings.portal_accent_color,
            support_url=settings.portal_support_url,
        ),
        features=Features(billing=stripe_on, billing_portal=customer, plans=bal.plan is not None),
    )


@routes.route(
    "DELETE",
    "/v1/portal/session",
    "Sign out: the session ends and its cookie goes",
    tag=TAG,
    auth=PORTAL_SESSION,
    responses={200: Out(PortalSignedOut, "signed out")},
    errors=CHANGE_ERRORS,
)
async def sign_out(call: Call[None, None, None]) -> Reply:
    await call.app[PORTAL_SESSIONS].end(call.request[PORTAL])
    return Reply(PortalSignedOut(ended=True), 200, {"Set-Cookie": cleared_cookie(call.request)})


# -- reads -----------------------------------------------------------------------------------


@routes.route(
    "GET",
    "/v1/portal/balance",
    "The balance, its buckets (source, expiry), plan and spending limit",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=NoQuery,
    responses={200: Out(Balance, "the balance")},
    errors=READ_ERRORS,
)
async def portal_balance(call: Call[None, NoQuery, None]) -> Balance:
    return await accounts.balance(as_account(call))


@routes.route(
    "GET",
    "/v1/portal/transactions",
    "The transactions, newest first (JSON, or CSV with format=csv)",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=TransactionsQuery,
    responses={
        200: Out(
            TransactionList,
            "a page of transactions; CSV with `format=csv`",
            content={"text/csv": {"type": "string"}},
        )
    },
    errors=READ_ERRORS,
)
async def portal_transactions(
    call: Call[None, TransactionsQuery, None],
) -> TransactionList | web.Response:
    return await admin.transactions(as_account(call))


@routes.route(
    "GET",
    "/v1/portal/usage",
    "Credits used and checks, per hour or day",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=UsageQuery,
    responses={200: Out(Usage, "the usage series")},
    errors=READ_ERRORS,
)
async def portal_usage(call: Call[None, UsageQuery, None]) -> Usage:
    return await admin.usage(as_account(call))


@routes.route(
    "GET",
    "/v1/portal/packages",
    "The credit packages on sale",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=NoQuery,
    responses={200: Out(PackageList, "the active packages")},
    errors=READ_ERRORS,
)
async def portal_packages(call: Call[None, NoQuery, None]) -> PackageList:
    packages = await call.app[BILLING].packages.listing(active_only=True)
    return PackageList(packages=[billing.package_view(p) for p in packages])


# -- the account's own settings ----------------------------------------------------------------


@routes.route(
    "GET",
    "/v1/portal/alerts",
    "The low-balance alert threshold",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=NoQuery,
    responses={200: Out(PortalAlerts, "the threshold")},
    errors=READ_ERRORS,
)
async def portal_alerts(call: Call[None, NoQuery, None]) -> PortalAlerts:
    b = await call.app[LEDGER].balance(account(call))
    return PortalAlerts(account=b.account, low_balance_threshold=b.low_balance_threshold)


@routes.route(
    "PUT",
    "/v1/portal/alerts",
    "Set or remove the low-balance alert threshold",
    tag=TAG,
    auth=PORTAL_SESSION,
    audit=Audited("portal.alerts.put", before=_balance_now),
    body=PortalAlertsRequest,
    responses={200: Out(PortalAlerts, "the threshold after the change")},
    errors=CHANGE_ERRORS,
)
async def portal_put_alerts(call: Call[None, None, PortalAlertsRequest]) -> PortalAlerts:
    threshold = call.body.low_balance_threshold
    c = await call.app[LEDGER].update_account(account(call), low_balance_threshold=threshold)
    return PortalAlerts(account=account(call), low_balance_threshold=c.low_balance_threshold)


@routes.route(
    "PUT",
    "/v1/portal/spend-limit",
    "Set or remove the account's own spending limit (the same window keeps what was spent)",
    tag=TAG,
    auth=PORTAL_SESSION,
    audit=Audited("portal.spend_limit.put", before=_balance_now),
    body=PortalSpendLimitRequest,
    responses={200: Out(PortalSpendLimit, "the limit after the change")},
    errors=CHANGE_ERRORS,
)
async def portal_spend_limit(
    call: Call[None, None, PortalSpendLimitRequest],
) -> PortalSpendLimit:
    limit = call.body.spend_limit
    acct, ledger = account(call), call.app[LEDGER]
    await ledger.update_account(
        acct, spend_limit=limit.to_spend_limit() if limit is not None else None
    )
    b = await ledger.balance(acct)
    return PortalSpendLimit(
        account=acct,
        spend_limit=spend_limit_view(b.spend.limit if b.spend is not None else None),
        spend=spend_view(b.spend),
    )


# -- API keys --------------------------------------------------------------------------------


@routes.route(
    "GET",
    "/v1/portal/keys",
    "The account's API keys, with what each spent in its limit's window",
    tag=TAG,
    auth=PORTAL_SESSION,
    query=NoQuery,
    responses={200: Out(KeyList, "the keys")},
    errors=READ_ERRORS,
)
async def portal_keys(call: Call[None, NoQuery, None]) -> KeyList:
    return await keys.list_keys(as_account(call))


@routes.route(
    "POST",
    "/v1/portal/keys",
    "Create an API key (its secret shown once)",
    tag=TAG,
    auth=PORTAL_SESSION,
    audit=Audited("portal.key.create", target="key_id"),
    body=PortalKeyRequest,
    responses={
        201: Out(KeyCreated, "the key, with its secret"),
        200: Out(KeyCreated, "a replay of the same idempotency_key: the key, no secret"),
    },
    errors={
        **CHANGE_ERRORS,
        409: "`idempotency_conflict`; `too_many_keys`: SIDECAR_PORTAL_MAX_KEYS active keys",
    },
)
async def portal_create_key(call: Call[None, None, PortalKeyRequest]) -> Reply:
    # A customer cannot fill Redis (which every account shares) with keys. A soft cap: two
    # creations at once at the cap may both pass; a retry of one made at the cap is refused.
    cap = call.app[SETTINGS].portal_max_keys
    listed = await call.app[API_KEYS].list(account(call))
    if sum(k.revoked_at is None for k in listed) >= cap:
        raise errors.TooManyKeys(
            f"at most {cap} active API keys: revoke one first", field="idempotency_key"
        )
    return await keys.create_key(as_account(call))


async def _own_key(call: Call[KeyPath, None, Any]) -> None:
    """404 for a key that is not the session's account's: as for one that does not exist."""
    listed = await call.app[API_KEYS].list(account(call))
    if not any(k.key_id == call.path.key_id for k in listed):
        raise errors.UnknownKey(f"no key {call.path.key_id}", field="key_id")


@routes.route(
    "PATCH",
    "/v1/portal/keys/{key_id}",
    "Set or remove a key's spending limit",
    tag=TAG,
    auth=PORTAL_SESSION,
    audit=Audited("portal.key.patch"),
    params=KeyPath,
    body=KeyPatch,
    responses={200: Out(Key, "the key after the change")},
    errors={**CHANGE_ERRORS, 404: "`unknown_key`", 409: "`key_revoked`"},
)
async def portal_patch_key(call: Call[KeyPath, None, KeyPatch]) -> Key:
    await _own_key(call)
    return await keys.patch_key(call)


@routes.route(
    "DELETE",
    "/v1/portal/keys/{key_id}",
    "Revoke a key (refused from the next request on)",
    tag=TAG,
    auth=PORTAL_SESSION,
    audit=Audited("portal.key.revoke"),
    params=KeyPath,
    responses={200: Out(Key, "the key, with revoked_at")},
    errors={**CHANGE_ERRORS, 404: "`unknown_key`"},
)
async def portal_revoke_key(call: Call[KeyPath, None, None]) -> Key:
    await _own_key(call)
    return await keys.revoke_key(call)
