"""Response models built from the ledger's results: the conversions several route groups
share (rate limits, spending limits, the 402 refusals)."""

from __future__ import annotations

import math

from sidecar.http.responses import (
    InsufficientCredits,
    RateLimit,
    RateLimitState,
    SpendLimitReached,
    SpendLimitView,
    SpendView,
)
from sidecar.ledger.results import (
    Insufficient,
    RateState,
    SpendLimit,
    SpendLimited,
    SpendWindow,
)
from sidecar.ledger.results import (
    RateLimit as LedgerRateLimit,
)
from sidecar.ledger.units import iso


def rate_limit_view(rl: LedgerRateLimit | None) -> RateLimit | None:
    if rl is None:
        return None
    return RateLimit(requests=rl.requests, period_ms=rl.period_ms, burst=rl.burst)


def rate_state_view(r: RateState | None) -> RateLimitState | None:
    if r is None:
        return None
    return RateLimitState(
        policy=r.policy,
        limit=r.requests,
        period_ms=r.period_ms,
        remaining=r.remaining,
        reset_ms=r.reset_ms,
    )


def rate_headers(r: RateState | None) -> dict[str, str]:
    """The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers) of a check's
    tightest limiter: its policy (quota per window, seconds) and what is left of it; none
    without a limiter. One convention for the proxies' answers and the client middlewares
    (docs/http-api.md "Response headers")."""
    if r is None:
        return {}
    return {
        "RateLimit-Policy": f'"{r.policy}";q={r.requests};w={math.ceil(r.period_ms / 1000)}',
        "RateLimit": f'"{r.policy}";r={r.remaining};t={math.ceil(r.reset_ms / 1000)}',
    }


def limit_view(limit: SpendLimit) -> SpendLimitView:
    return SpendLimitView(
        credits=limit.credits, interval=limit.interval, interval_count=limit.interval_count
    )


def spend_limit_view(limit: SpendLimit | None) -> SpendLimitView | None:
    return None if limit is None else limit_view(limit)


def spend_view(w: SpendWindow | None) -> SpendView | None:
    if w is None:
        return None
    return SpendView(
        spend_limit=limit_view(w.limit),
        spent=w.spent,
        window_ends_at=iso(w.ends_at),
    )


def insufficient(account: str, r: Insufficient) -> InsufficientCredits:
    return InsufficientCredits(
        allowed=False,
        reason="insufficient_credits",
        account=account,
        balance=r.balance,
        required=r.required,
    )


def spend_limited(account: str, r: SpendLimited) -> SpendLimitReached:
    w = r.window
    return SpendLimitReached(
        allowed=False,
        reason=r.reason,
        account=account,
        required=r.required,
        spend_limit=limit_view(w.limit),
        spent=w.spent,
        window_ends_at=iso(w.ends_at),
    )
