"""The JSON API's handlers: check, accounts, grants, balance, holds, refunds.

Admin routes need the admin token; the check and hold calls accept the service token
(or the admin token). Every handler validates its input fully before calling the ledger.
"""

from __future__ import annotations

import hmac
import math
from time import perf_counter
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from sidecar import errors, metrics
from sidecar.apikeys import KeyInfo
from sidecar.asciiint import parse_ascii_int
from sidecar.http.appkeys import API_KEYS, LEDGER, SETTINGS, TOKENS
from sidecar.http.errors import json_response, validation_error
from sidecar.http.schemas import (
    ID,
    AccountRequest,
    CheckRequest,
    GrantRequest,
    HoldRequest,
    KeyRequest,
    RefundRequest,
    ReleaseRequest,
    SettleRequest,
)
from sidecar.ledger import (
    Allowed,
    Balance,
    CloseResult,
    DeductResult,
    Insufficient,
    RateLimit,
    Revoked,
)
from sidecar.units import iso

routes = web.RouteTableDef()
M = TypeVar("M", bound=BaseModel)


def authorize(request: web.Request, *roles: str) -> None:
    """Constant-time check of the bearer token against the tokens of the allowed roles."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise errors.Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    given = token.strip().encode("utf-8", "surrogateescape")
    matched = {
        role for role, secret in request.app[TOKENS].items() if hmac.compare_digest(given, secret)
    }
    if not matched:
        raise errors.Unauthorized("invalid token")
    if not matched.intersection(roles):
        raise errors.Forbidden(f"this route needs the {' or '.join(roles)} token")


async def body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        if any(err["type"] == "json_invalid" for err in e.errors()):
            raise errors.InvalidJSON("request body is not valid JSON") from None
        if any(err["type"] == "model_type" and not err["loc"] for err in e.errors()):
            raise errors.InvalidJSON("request body must be a JSON object") from None
        raise validation_error(e) from None


def path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    try:
        return ID.validate_python(value)
    except ValidationError as e:
        msg = e.errors(include_url=False)[0]["msg"]
        raise errors.InvalidInput(f"{name}: {msg}", field=name) from None


def query_value(request: web.Request, name: str) -> str | None:
    """A query parameter's only value (None if absent): one given twice is refused, never
    read as its first (or last) value."""
    values = request.query.getall(name, ())
    if len(values) > 1:
        raise errors.InvalidInput(f"{name}: given more than once", field=name)
    return values[0] if values else None


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter (ASCII digits only), ``default`` when absent or empty."""
    raw = query_value(request, name)
    if raw is None or raw == "":
        return default
    try:
        return parse_ascii_int(raw, lo, hi)
    except ValueError as e:
        raise errors.InvalidInput(f"{name}: {e}", field=name) from None


def rate_limit_view(rl: RateLimit | None) -> dict[str, int] | None:
    if rl is None:
        return None
    return {"requests": rl.requests, "period_ms": rl.period_ms, "burst": rl.burst}


def insufficient_body(account: str, r: Insufficient) -> dict[str, Any]:
    return {
        "allowed": False,
        "reason": "insufficient_credits",
        "account": account,
        "balance": r.balance,
        "required": r.required,
    }


def insufficient(account: str, r: Insufficient) -> web.Response:
    return json_response(insufficient_body(account, r), 402)


@routes.post("/v1/check")
async def check(request: web.Request) -> web.Response:
    """The check: deducts ``cost`` from the account unless its credits or rate limit say no.
    Counted and timed for the metrics by its outcome (sidecar/metrics.py)."""
    started = perf_counter()
    try:
        authorize(request, "service", "admin")
        req = await body(request, CheckRequest)
        r = await request.app[LEDGER].deduct(
            req.account,
            req.cost,
            req.idempotency_key,
            description=req.description,
            metadata=req.metadata,
        )
    except errors.StoreUnavailable:
        metrics.CHECKS.store_error(metrics.CHECK)
        metrics.CHECKS.record(metrics.CHECK, metrics.ERROR, perf_counter() - started)
        raise
    except errors.SidecarError:
        metrics.CHECKS.record(metrics.CHECK, metrics.REJECTED, perf_counter() - started)
        raise
    except Exception:
        metrics.CHECKS.record(metrics.CHECK, metrics.ERROR, perf_counter() - started)
        raise
    status, answer, headers = _check_answer(req.account, r)
    # Counted as what happened (in shadow mode: what would have happened).
    metrics.record_outcome(metrics.CHECK, status, perf_counter() - started)
    if status in SHADOWED and request.app[SETTINGS].shadow:
        # Nothing was charged (the ledger refused); the answer says what the refusal was.
        shadow = {"status": status} | {
            k: v for k, v in answer.items() if k not in ("allowed", "account")
        }
        answer = {"allowed": True, "account": req.account, "charged": False, "shadow": shadow}
        status, headers = 200, {"X-Credits-Shadow-Status": str(shadow["status"])}
    return json_response(answer, status, headers)


# Shadow mode (SIDECAR_SHADOW) lets the ledger's refusals through. Errors of the call itself
# (token, body, unknown account, idempotency conflict, store unavailable) stay errors: shadow
# hides decisions about the customer, not the caller's bugs.
SHADOWED = (402, 429)


def _check_answer(account: str, r: DeductResult) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The check's status, JSON body and headers."""
    if isinstance(r, Allowed):
        return (
            200,
            {
                "allowed": True,
                "account": account,
                "balance": r.balance,
                "cost": r.cost,
                "transaction_id": r.transaction_id,
                "replayed": r.replayed,
                "low_balance": r.low_balance,
            },
            {},
        )
    if isinstance(r, Insufficient):
        return 402, insufficient_body(account, r), {}
    if isinstance(r, Revoked):  # not reachable without a key id; kept exhaustive
        raise errors.Unauthorized("API key revoked")
    return (
        429,
        {
            "allowed": False,
            "reason": "rate_limited",
            "account": account,
            "retry_after_ms": r.retry_after_ms,
        },
        {"Retry-After": str(math.ceil(r.retry_after_ms / 1000))},
    )


@routes.put("/v1/accounts/{account}")
async def put_account(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    req = await body(request, AccountRequest)
    rl = req.rate_limit.to_rate_limit() if req.rate_limit else None
    created = await request.app[LEDGER].configure_account(
        account,
        overdraft_limit=req.overdraft_limit,
        low_balance_threshold=req.low_balance_threshold,
        rate_limit=rl,
    )
    return json_response(
        {
            "account": account,
            "created": created,
            "overdraft_limit": req.overdraft_limit,
            "low_balance_threshold": req.low_balance_threshold,
            "rate_limit": rate_limit_view(rl),
        },
        201 if created else 200,
    )


@routes.post("/v1/accounts/{account}/grants")
async def grant(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    req = await body(request, GrantRequest)
    r = await request.app[LEDGER].grant(
        account,
        req.grant_id,
        req.credits,
        expires_at=req.expires_at,
        priority=req.priority,
        source=req.source,
        metadata=req.metadata,
        description=req.description,
    )
    return json_response(
        {
            "account": account,
            "grant_id": req.grant_id,
            "credits": req.credits,
            "transaction_id": r.transaction_id,
            "balance": r.balance,
            "replayed": r.replayed,
        },
        200 if r.replayed else 201,
    )


def balance_view(b: Balance) -> dict[str, Any]:
    return {
        "account": b.account,
        "balance": b.balance,
        "available": b.available,
        "held": b.held,
        "debt": b.debt,
        "overdraft_limit": b.overdraft_limit,
        "low_balance_threshold": b.low_balance_threshold,
        "rate_limit": rate_limit_view(b.rate_limit),
        "created_at": iso(b.created_at),
        "buckets": [
            {
                "id": k.id,
                "credits": k.credits,
                "remaining": k.remaining,
                "held": k.held,
                "created_at": iso(k.created_at),
                "expires_at": iso(k.expires_at),
                "priority": k.priority,
                "source": k.source,
                "metadata": k.metadata,
            }
            for k in b.buckets
        ],
    }


@routes.get("/v1/accounts/{account}/balance")
async def balance(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    return json_response(balance_view(await request.app[LEDGER].balance(account)))


@routes.post("/v1/holds")
async def hold(request: web.Request) -> web.Response:
    authorize(request, "service", "admin")
    req = await body(request, HoldRequest)
    ttl = req.ttl_ms or request.app[SETTINGS].hold_ttl_s * 1000
    r = await request.app[LEDGER].hold(
        req.account,
        req.hold_id,
        req.amount,
        ttl,
        description=req.description,
        metadata=req.metadata,
    )
    if isinstance(r, Insufficient):
        return insufficient(req.account, r)
    return json_response(
        {
            "account": req.account,
            "hold_id": r.hold_id,
            "amount": req.amount,
            "state": r.state,
            "transaction_id": r.transaction_id,
            "balance": r.balance,
            "expires_at": iso(r.expires_at),
            "replayed": r.replayed,
        },
        200 if r.replayed else 201,
    )


def close_view(account: str, r: CloseResult) -> web.Response:
    return json_response(
        {
            "account": account,
            "hold_id": r.hold_id,
            "state": r.state,
            "charged": r.charged,
            "forfeited": r.forfeited,
            "transaction_id": r.transaction_id,
            "balance": r.balance,
            "replayed": r.replayed,
        }
    )


@routes.post("/v1/holds/{hold_id}/settle")
async def settle(request: web.Request) -> web.Response:
    authorize(request, "service", "admin")
    hold_id = path_id(request, "hold_id")
    req = await body(request, SettleRequest)
    r = await request.app[LEDGER].settle(
        req.account, hold_id, req.amount, description=req.description, metadata=req.metadata
    )
    return close_view(req.account, r)


@routes.post("/v1/holds/{hold_id}/release")
async def release(request: web.Request) -> web.Response:
    authorize(request, "service", "admin")
    hold_id = path_id(request, "hold_id")
    req = await body(request, ReleaseRequest)
    r = await request.app[LEDGER].release(
        req.account, hold_id, description=req.description, metadata=req.metadata
    )
    return close_view(req.account, r)


@routes.post("/v1/refunds")
async def refund(request: web.Request) -> web.Response:
    authorize(request, "admin")
    req = await body(request, RefundRequest)
    r = await request.app[LEDGER].refund(
        req.account,
        req.refund_id,
        req.transaction_id,
        req.amount,
        description=req.description,
        metadata=req.metadata,
    )
    return json_response(
        {
            "account": req.account,
            "refund_id": req.refund_id,
            "source_transaction_id": req.transaction_id,
            "refunded": r.refunded,
            "forfeited": r.forfeited,
            "transaction_id": r.transaction_id,
            "balance": r.balance,
            "replayed": r.replayed,
        },
        200 if r.replayed else 201,
    )


def key_view(k: KeyInfo) -> dict[str, Any]:
    return {
        "key_id": k.key_id,
        "account": k.account,
        "name": k.name,
        "prefix": k.prefix,
        "created_at": iso(k.created_at),
        "rate_limit": rate_limit_view(k.rate_limit),
        "revoked_at": iso(k.revoked_at),
    }


@routes.post("/v1/accounts/{account}/keys")
async def create_key(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    req = await body(request, KeyRequest)
    rl = req.rate_limit.to_rate_limit() if req.rate_limit else None
    info, key = await request.app[API_KEYS].create(account, name=req.name, rate_limit=rl)
    return json_response({**key_view(info), "key": key}, 201)


@routes.get("/v1/accounts/{account}/keys")
async def list_keys(request: web.Request) -> web.Response:
    authorize(request, "admin")
    account = path_id(request, "account")
    keys = await request.app[API_KEYS].list(account)
    return json_response({"account": account, "keys": [key_view(k) for k in keys]})


@routes.delete("/v1/keys/{key_id}")
async def revoke_key(request: web.Request) -> web.Response:
    authorize(request, "admin")
    key_id = path_id(request, "key_id")
    return json_response(key_view(await request.app[API_KEYS].revoke(key_id)))
