"""One decoder per Lua script: its raw reply, as Redis sends it, into a typed result.

This is the only module that knows where a value sits in a script's reply; each script's
header (*.lua) documents the same layout. A reply arrives as hiredis or redis-py gives it:
integers as ``int``, strings as ``bytes`` (or ``str`` from a client that decodes replies),
arrays as lists. Statuses a caller must see as errors (``overflow``, ``hold_expired``) are
raised here as domain errors; the scripts' own errors (``CS <CODE> ...``) never get here
(sidecar/ledger/calls.py ``store_errors`` turns them into domain errors first).

The deduct decoder runs on every check: it compares statuses as they arrive (bytes) instead
of decoding them first, and builds its Allowed with :func:`sidecar.ledger.results.new_allowed`.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from sidecar.errors import BalanceOverflow, HoldExpired
from sidecar.ledger.results import (
    AccountConfig,
    Balance,
    Bucket,
    CloseResult,
    DeductResult,
    GrantResult,
    HoldResult,
    Insufficient,
    PlanState,
    RateLimit,
    RateLimited,
    RateState,
    RefundResult,
    RestoreCounts,
    Revoked,
    RevokeResult,
    SpendLimit,
    SpendLimited,
    SpendWindow,
    UsageReported,
    VoidResult,
    new_allowed,
)
from sidecar.redis.client import text

# A reply's status, whichever way the client hands strings over.
_OK = (b"ok", "ok")
_INSUFFICIENT = (b"insufficient", "insufficient")
_REVOKED = (b"revoked", "revoked")
_OVERFLOW = (b"overflow", "overflow")
_HOLD_EXPIRED = (b"hold_expired", "hold_expired")
_SPEND_LIMITED = (b"spend_limited", "spend_limited")


def _no_overflow(reply: Any) -> None:
    if reply[0] in _OVERFLOW:
        raise BalanceOverflow("the account would hold more than 2^53-1 credits")


def account(reply: Any) -> bool:
    """account.lua ``{created, ...}``: True when the call created the account."""
    return bool(reply[0])


def account_config(reply: Any) -> AccountConfig:
    """account.lua ``{created, overdraft limit, low-balance threshold, rate requests, period,
    burst, spending limit, plan, plan anchor}`` ('' = none)."""
    r = [text(v) if not isinstance(v, int) else str(v) for v in reply[1:]]
    return AccountConfig(
        created=bool(reply[0]),
        overdraft_limit=int(r[0]),
        low_balance_threshold=int(r[1]) if r[1] else None,
        rate_limit=RateLimit(int(r[2]), int(r[3]), int(r[4])) if r[2] else None,
        spend_limit=SpendLimit.from_spec(r[5]) if r[5] else None,
        plan=r[6] or None,
        plan_anchor=int(r[7]) if r[7] else None,
    )


def grant(reply: Any) -> GrantResult:
    """grant.lua ``{'ok', txid, balance, replayed}`` or ``{'overflow'}`` (BalanceOverflow)."""
    _no_overflow(reply)
    return GrantResult(text(reply[1]), int(reply[2]), bool(reply[3]))


def _spend_window(credits: Any, unit: Any, count: Any, spent: Any, ends: Any) -> SpendWindow:
    """A limit's ``credits, unit, count, spent, window end ('' = never)`` (_lib.lua)."""
    u = text(unit)
    limit = SpendLimit(int(credits), None if u == "life" else u, int(count))  # type: ignore[arg-type]
    return SpendWindow(limit, int(spent), int(ends) if ends else None)


def spend_limited(reply: Any, required: int) -> SpendLimited:
    """``{'spend_limited', scope, credits, unit, count, spent, window end}`` (_lib.lua)."""
    window = _spend_window(*reply[2:7])
    if text(reply[1]) == "key":
        return SpendLimited("key", window, required)
    return SpendLimited("account", window, required)


def rate_state(tail: Any) -> RateState:
    """deduct.lua's ``which, requests, period ms, requests left, ms until whole``."""
    which = text(tail[0])
    policy: Literal["account", "key", "route"] = (
        "account" if which == "account" else "key" if which == "key" else "route"
    )
    return RateState(policy, int(tail[1]), int(tail[2]), int(tail[3]), int(tail[4]))


def deduct(reply: Any, cost: int) -> DeductResult:
    """deduct.lua ``{'ok', txid, balance, cost, replayed, low_balance[, debt added[, the
    tightest rate limiter: which, requests, period ms, left, ms until whole]]}``,
    ``{'insufficient', balance, cost}``, ``{'rate_limited', wait_ms}``, ``{'revoked'}`` or
    ``{'spend_limited', ...}`` (``cost``: the call's, which that refusal reports)."""
    status = reply[0]
    if status in _OK:
        txid = reply[1]
        return new_allowed(
            txid.decode() if type(txid) is bytes else txid,
            int(reply[2]),
            int(reply[3]),
            bool(reply[4]),
            bool(reply[5]),
            rate_state(reply[7:12]) if len(reply) > 7 else None,
        )
    if status in _INSUFFICIENT:
        return Insufficient(int(reply[1]), int(reply[2]))
    if status in _REVOKED:
        return Revoked()
    if status in _SPEND_LIMITED:
        return spend_limited(reply, cost)
    return RateLimited(int(reply[1]))


def usage(reply: Any) -> UsageReported:
    """deduct.lua in report mode: ``{'ok', txid, balance, cost, replayed, low_balance,
    debt added}`` (never refused for the balance), or ``{'overflow'}`` (BalanceOverflow: the
    debt would pass 2^53-1; nothing charged)."""
    _no_overflow(reply)
    return UsageReported(
        text(reply[1]), int(reply[2]), int(reply[3]), bool(reply[4]), int(reply[6])
    )


def hold(reply: Any, hold_id: str, amount: int) -> HoldResult | Insufficient | SpendLimited:
    """hold.lua ``{'ok', txid, balance, expires_at, replayed, state}``,
    ``{'insufficient', balance, amount}`` or ``{'spend_limited', ...}``; ``hold_id`` and
    ``amount`` are the caller's (not in the reply)."""
    if reply[0] in _INSUFFICIENT:
        return Insufficient(int(reply[1]), int(reply[2]))
    if reply[0] in _SPEND_LIMITED:
        return spend_limited(reply, amount)
    return HoldResult(
        hold_id, text(reply[1]), int(reply[2]), int(reply[3]), text(reply[5]), bool(reply[4])
    )


def close_hold(reply: Any, hold_id: str) -> CloseResult:
    """close_hold.lua ``{'ok', txid, balance, charged, replayed, forfeited, state, uncovered}``,
    or ``{'hold_expired', txid of the release, balance}`` (HoldExpired)."""
    if reply[0] in _HOLD_EXPIRED:
        raise HoldExpired(
            f"hold {hold_id} expired and was released by transaction {text(reply[1])}"
        )
    return CloseResult(
        hold_id,
        text(reply[1]),
        int(reply[2]),
        int(reply[3]),
        int(reply[5]),
        text(reply[6]),
        bool(reply[4]),
        int(reply[7]),
    )


def refund(reply: Any) -> RefundResult:
    """refund.lua ``{'ok', txid, balance, refunded, forfeited, replayed}`` or ``{'overflow'}``
    (BalanceOverflow)."""
    _no_overflow(reply)
    return RefundResult(text(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]), bool(reply[5]))


def revoke(reply: Any) -> RevokeResult:
    """revoke.lua ``{txid ('' = nothing changed), taken, debt added, unrecovered, balance,
    pending, given back, target, version}``."""
    txid = text(reply[0])
    return RevokeResult(
        txid or None,
        taken=int(reply[1]),
        debt_added=int(reply[2]),
        unrecovered=int(reply[3]),
        balance=int(reply[4]),
        pending=int(reply[5]),
        given_back=int(reply[6]),
        target=int(reply[7]),
        version=int(reply[8]),
    )


def autotopup(reply: Any) -> int:
    """autotopup.lua ``{balance}``."""
    return int(reply[0])


def expire(reply: Any) -> int:
    """expire.lua: how many transactions processing the due deadlines wrote."""
    return int(reply)


def _bucket(row: Any) -> Bucket:
    bucket_id, remaining, held, raw = row
    meta = orjson.loads(raw)
    return Bucket(
        id=text(bucket_id),
        credits=int(meta["credits"]),
        remaining=int(remaining),
        held=int(held),
        created_at=int(meta["created"]),
        expires_at=int(meta["expires"]) if "expires" in meta else None,
        priority=int(meta["priority"]),
        source=meta["source"],
        metadata=orjson.loads(meta["metadata"]) if meta["metadata"] else {},
    )


def balance(reply: Any, account: str) -> Balance:
    """balance.lua ``{balance, available, held, debt, overdraft limit, low-balance threshold
    ('' = none), rate limit ({} or {requests, period_ms, burst}), created, buckets, spending
    limit ({} or {credits, unit, count, spent, window end}), plan ({} or {plan, anchor, next
    renewal})}``; each bucket ``{id, remaining, held, its static record (JSON)}``."""
    r = reply
    return Balance(
        account=account,
        balance=int(r[0]),
        available=int(r[1]),
        held=int(r[2]),
        debt=int(r[3]),
        overdraft_limit=int(r[4]),
        low_balance_threshold=int(r[5]) if r[5] else None,
        rate_limit=RateLimit(*(int(x) for x in r[6])) if r[6] else None,
        created_at=int(r[7]),
        buckets=[_bucket(row) for row in r[8]],
        spend=_spend_window(*r[9]) if r[9] else None,
        plan=PlanState(text(r[10][0]), int(r[10][1]), int(r[10][2])) if r[10] else None,
    )


def apikey(reply: Any) -> str:
    """apikey.lua: the key's record (JSON text), as created or as revoked."""
    return text(reply)


def apikey_created(reply: Any) -> tuple[str, bool]:
    """apikey.lua create: the new key's record, or ``{'replayed', record}`` (the key an
    earlier create with the same idempotency key made, as it is now) and whether it was."""
    if isinstance(reply, list):
        return text(reply[1]), True
    return text(reply), False


def restore(reply: Any) -> RestoreCounts:
    """restore.lua ``{buckets, holds, keys, idempotency records, usage records}`` written."""
    return RestoreCounts(*(int(x) for x in reply[:5]))


def void(reply: Any) -> VoidResult:
    """void.lua ``{'voided', refund txid or '', balance, refunded, forfeited}``, ``{'marked',
    attempts still open}`` or ``{status}`` (absent, changed, mismatch, untracked, not_run,
    overflow)."""
    status = text(reply[0])
    if status == "voided":
        return VoidResult(status, text(reply[1]), int(reply[3]))
    return VoidResult(status)


def lease(reply: Any) -> bool:
    """lease.lua: 1 when the caller holds the lease after the call (0 after a release)."""
    return bool(reply)
