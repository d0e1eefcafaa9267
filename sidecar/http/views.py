"""Response models built from the ledger's results: the conversions several route groups
share (rate limits, spending limits, the 402 refusals)."""

from __future__ import annotations

from sidecar.http.responses import (
    InsufficientCredits,
    RateLimit,
    SpendLimitReached,
    SpendLimitView,
    SpendView,
)
from sidecar.ledger.results import (
    Insufficient,
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
