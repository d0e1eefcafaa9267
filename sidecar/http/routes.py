"""The JSON API's core routes: check, accounts, grants, balance, holds, refunds, API keys.

Admin routes need the admin token; the check and hold calls accept the service token (or the
admin token). The registry validates every input before the handler calls the ledger.
"""

from __future__ import annotations

import math
from time import perf_counter

from aiohttp import web
from msgspec import UNSET

from sidecar import errors
from sidecar.http.auth import ADMIN, SERVICE
from sidecar.http.contract import Audited, Call, Endpoint, Header, Out, Reply, Routes
from sidecar.http.responses import (
    CheckAllowed,
    CheckShadowed,
    Hold,
    HoldClosed,
    InsufficientCredits,
    RateLimited,
    Refunded,
    ShadowDecision,
    SpendLimitReached,
    UsageRecorded,
)
from sidecar.http.schemas import (
    CheckRequest,
    HoldPath,
    HoldRequest,
    RefundRequest,
    ReleaseRequest,
    SettleRequest,
    UsageRequest,
)
from sidecar.http.state import LEDGER, SETTINGS
from sidecar.http.views import insufficient, rate_state_view, spend_limited
from sidecar.ledger.results import (
    Allowed,
    CloseResult,
    Insufficient,
    Revoked,
    SpendLimited,
)
from sidecar.ledger.units import iso
from sidecar.runtime import metrics

routes = Routes()
ACCOUNT_404 = "`unknown_account`"
RETRY_AFTER = {"Retry-After": Header(int, "seconds to wait")}
INSUFFICIENT = Out(
    InsufficientCredits | SpendLimitReached,
    "not enough credits (`insufficient_credits`), or the cost would pass the account's "
    "spending limit in its current window (`spend_limit`)",
)


# Shadow mode (SIDECAR_SHADOW) lets the ledger's refusals (402, 429) through. Errors of the
# call itself (token, body, unknown account, idempotency conflict, store unavailable) stay
# errors: shadow hides decisions about the customer, not the caller's bugs.
SHADOW_STATUS = "X-Credits-Shadow-Status"


def counted(endpoint: Endpoint) -> Endpoint:
    """The check counted and timed for the metrics (sidecar/runtime/metrics.py) by its outcome, from
    the token's check on: a refusal of the token or body counts as rejected; in shadow mode
    an answer counts as what would have happened."""
    checks = metrics.CHECKS

    async def handle(request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        try:
            response = await endpoint(request)
        except errors.StoreUnavailable:
            checks.store_error(metrics.CHECK)
            checks.record(metrics.CHECK, metrics.ERROR, perf_counter() - started)
            raise
        except errors.SidecarError:
            checks.record(metrics.CHECK, metrics.REJECTED, perf_counter() - started)
            raise
        except Exception:
            checks.record(metrics.CHECK, metrics.ERROR, perf_counter() - started)
            raise
        shadow = response.headers.get(SHADOW_STATUS)
        status = int(shadow) if shadow is not None else response.status
        metrics.record_outcome(metrics.CHECK, status, perf_counter() - started)
        return response

    return handle


@routes.route(
    "POST",
    "/v1/check",
    "Charge a request's cost once (by idempotency key)",
    tag="checks",
    auth=SERVICE,
    body=CheckRequest,
    responses={
        200: Out(
            CheckAllowed | CheckShadowed,
            "allowed and charged (or a replay); with SIDECAR_SHADOW also a refusal let "
            "through uncharged (`shadow` says what it was)",
            headers={
                "X-Credits-Shadow-Status": Header(int, "shadow mode: the status it would have had")
            },
        ),
        402: INSUFFICIENT,
        429: Out(RateLimited, "rate limited", headers=RETRY_AFTER),
    },
    errors={404: ACCOUNT_404, 409: None, 503: None},
    wrap=counted,
)
async def check(call: Call[None, None, CheckRequest]) -> CheckAllowed | Reply:
    """The check: deducts ``cost`` from the account unless its credits or rate limit say no."""
    req = call.body
    r = await call.app[LEDGER].deduct(
        req.account,
        req.cost,
        req.idempotency_key,
        description=req.description,
        metadata=req.metadata,
        dry_run=req.dry_run,
    )
    account = req.account
    if isinstance(r, Allowed):
        return CheckAllowed(
            allowed=True,
            account=account,
            balance=r.balance,
            cost=r.cost,
            transaction_id=r.transaction_id or None,
            replayed=r.replayed,
            low_balance=r.low_balance,
            rate_limit=rate_state_view(r.rate),
            dry_run=True if req.dry_run else UNSET,
        )
    if isinstance(r, Revoked):  # not reachable without a key id; kept exhaustive
        raise errors.Unauthorized("API key revoked")
    if isinstance(r, Insufficient):
        status = 402
        if call.app[SETTINGS].shadow:
            decision = ShadowDecision(
                status=status, reason="insufficient_credits", balance=r.balance, required=r.required
            )
        else:
            return Reply(insufficient(account, r), status)
    elif isinstance(r, SpendLimited):
        status = 402
        if call.app[SETTINGS].shadow:
            decision = ShadowDecision(status=status, reason=r.reason, required=r.required)
        else:
            return Reply(spend_limited(account, r), status)
    else:
        status = 429
        if call.app[SETTINGS].shadow:
            decision = ShadowDecision(
                status=status, reason="rate_limited", retry_after_ms=r.retry_after_ms
            )
        else:
            return Reply(
                RateLimited(
                    allowed=False,
                    reason="rate_limited",
                    account=account,
                    retry_after_ms=r.retry_after_ms,
                ),
                status,
                {"Retry-After": str(math.ceil(r.retry_after_ms / 1000))},
            )
    # Nothing was charged (the ledger refused); the answer says what the refusal was.
    return Reply(
        CheckShadowed(allowed=True, account=account, charged=False, shadow=decision),
        200,
        {SHADOW_STATUS: str(status)},
    )


@routes.route(
    "POST",
    "/v1/usage",
    "Record usage after the work is done (never refused; what the balance cannot cover is debt)",
    tag="checks",
    auth=SERVICE,
    body=UsageRequest,
    responses={
        200: Out(UsageRecorded, "a replay of the same report"),
        201: Out(UsageRecorded, "recorded"),
    },
    errors={404: ACCOUNT_404, 409: None, 422: "`invalid_request`, `balance_overflow`", 503: None},
)
async def report_usage(call: Call[None, None, UsageRequest]) -> Reply:
    """Usage whose cost is known only afterwards (an LLM stream, a batch job): recorded by
    idempotency key, never refused for the balance, a spending limit or a rate limit (the work
    is done: refusing would lose the money); the account's checks are refused while its debt
    passes the overdraft."""
    req = call.body
    r = await call.app[LEDGER].report_usage(
        req.account,
        req.cost,
        req.idempotency_key,
        description=req.description,
        metadata=req.metadata,
    )
    if not r.replayed:
        metrics.USAGE_REPORTED.inc(r.cost)
        metrics.USAGE_DEBT.inc(r.debt_added)
    view = UsageRecorded(
        account=req.account,
        cost=r.cost,
        transaction_id=r.transaction_id,
        balance=r.balance,
        debt_added=r.debt_added,
        replayed=r.replayed,
    )
    return Reply(view, 200 if r.replayed else 201)


@routes.route(
    "POST",
    "/v1/holds",
    "Reserve credits for a long request",
    tag="holds",
    auth=SERVICE,
    body=HoldRequest,
    responses={
        200: Out(Hold, "a replay of the same hold"),
        201: Out(Hold, "held"),
        402: INSUFFICIENT,
    },
    errors={404: ACCOUNT_404, 409: None, 503: None},
)
async def hold(call: Call[None, None, HoldRequest]) -> Reply:
    req = call.body
    ttl = req.ttl_ms or call.app[SETTINGS].hold_ttl_s * 1000
    r = await call.app[LEDGER].hold(
        req.account,
        req.hold_id,
        req.amount,
        ttl,
        description=req.description,
        metadata=req.metadata,
    )
    if isinstance(r, Insufficient):
        return Reply(insufficient(req.account, r), 402)
    if isinstance(r, SpendLimited):
        return Reply(spend_limited(req.account, r), 402)
    view = Hold(
        account=req.account,
        hold_id=r.hold_id,
        amount=req.amount,
        state=r.state,
        transaction_id=r.transaction_id,
        balance=r.balance,
        expires_at=iso(r.expires_at),
        replayed=r.replayed,
    )
    return Reply(view, 200 if r.replayed else 201)


def close_view(account: str, r: CloseResult) -> HoldClosed:
    return HoldClosed(
        account=account,
        hold_id=r.hold_id,
        state=r.state,
        charged=r.charged,
        forfeited=r.forfeited,
        uncovered=r.uncovered,
        transaction_id=r.transaction_id,
        balance=r.balance,
        replayed=r.replayed,
    )


CLOSE_ERRORS: dict[int, str | None] = {
    404: "`unknown_account`, `unknown_hold`",
    409: "`hold_closed`, `hold_expired`, `idempotency_conflict`",
    503: None,
}


@routes.route(
    "POST",
    "/v1/holds/{hold_id}/settle",
    "Charge a hold (the rest returns; above it, the balance pays the extra)",
    tag="holds",
    auth=SERVICE,
    params=HoldPath,
    body=SettleRequest,
    responses={200: Out(HoldClosed, "settled (or a replay)")},
    errors=CLOSE_ERRORS,
)
async def settle(call: Call[HoldPath, None, SettleRequest]) -> HoldClosed:
    req = call.body
    r = await call.app[LEDGER].settle(
        req.account,
        call.path.hold_id,
        req.amount,
        description=req.description,
        metadata=req.metadata,
    )
    if not r.replayed:
        metrics.SETTLE_UNCOVERED.inc(r.uncovered)
    return close_view(req.account, r)


@routes.route(
    "POST",
    "/v1/holds/{hold_id}/release",
    "Release a hold (nothing charged)",
    tag="holds",
    auth=SERVICE,
    params=HoldPath,
    body=ReleaseRequest,
    responses={200: Out(HoldClosed, "released (or a replay)")},
    errors=CLOSE_ERRORS,
)
async def release(call: Call[HoldPath, None, ReleaseRequest]) -> HoldClosed:
    req = call.body
    r = await call.app[LEDGER].release(
        req.account, call.path.hold_id, description=req.description, metadata=req.metadata
    )
    return close_view(req.account, r)


@routes.route(
    "POST",
    "/v1/refunds",
    "Refund a transaction (all of it, or an amount; once per refund_id)",
    tag="accounts",
    auth=ADMIN,
    audit=Audited("refund.create", target="refund_id"),
    body=RefundRequest,
    responses={
        200: Out(Refunded, "a replay of the same refund"),
        201: Out(Refunded, "refunded"),
    },
    errors={
        404: "`unknown_account`, `unknown_transaction`",
        409: "`fully_refunded`, `idempotency_conflict`",
        422: "`invalid_request`, `balance_overflow`",
        503: None,
    },
)
async def refund(call: Call[None, None, RefundRequest]) -> Reply:
    req = call.body
    r = await call.app[LEDGER].refund(
        req.account,
        req.refund_id,
        req.transaction_id,
        req.amount,
        description=req.description,
        metadata=req.metadata,
    )
    view = Refunded(
        account=req.account,
        refund_id=req.refund_id,
        source_transaction_id=req.transaction_id,
        refunded=r.refunded,
        forfeited=r.forfeited,
        transaction_id=r.transaction_id,
        balance=r.balance,
        replayed=r.replayed,
    )
    return Reply(view, 200 if r.replayed else 201)
