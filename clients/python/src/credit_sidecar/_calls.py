"""Each sidecar operation the client calls, once: its operation id, method and path as in
``/openapi.json`` (``OPERATIONS``), and a builder of the :class:`Call` for the sync and the
async client alike. A mutation carries its idempotency key in the body; a builder makes one
(uuid4) when the caller gives none, so every retry of that logical call reuses it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from credit_sidecar import models as m

T = TypeVar("T")

# operation id -> (method, path), as the sidecar's spec names them
OPERATIONS: dict[str, tuple[str, str]] = {
    "check": ("POST", "/v1/check"),
    "report_usage": ("POST", "/v1/usage"),
    "hold": ("POST", "/v1/holds"),
    "settle": ("POST", "/v1/holds/{hold_id}/settle"),
    "release": ("POST", "/v1/holds/{hold_id}/release"),
    "balance": ("GET", "/v1/accounts/{account}/balance"),
    "put_account": ("PUT", "/v1/accounts/{account}"),
    "patch_account": ("PATCH", "/v1/accounts/{account}"),
    "grant": ("POST", "/v1/accounts/{account}/grants"),
    "create_key": ("POST", "/v1/accounts/{account}/keys"),
    "list_keys": ("GET", "/v1/accounts/{account}/keys"),
    "patch_key": ("PATCH", "/v1/keys/{key_id}"),
    "revoke_key": ("DELETE", "/v1/keys/{key_id}"),
    "put_plan": ("PUT", "/v1/plans/{plan}"),
    "get_plan": ("GET", "/v1/plans/{plan}"),
    "list_plans": ("GET", "/v1/plans"),
    "delete_plan": ("DELETE", "/v1/plans/{plan}"),
    "create_portal_session": ("POST", "/v1/accounts/{account}/portal-sessions"),
    "create_token": ("POST", "/v1/tokens"),
    "list_tokens": ("GET", "/v1/tokens"),
    "get_token": ("GET", "/v1/tokens/{token_id}"),
    "rotate_token": ("POST", "/v1/tokens/{token_id}/rotate"),
    "revoke_token": ("DELETE", "/v1/tokens/{token_id}"),
    "openapi": ("GET", "/openapi.json"),
    # the proxies' forward-auth endpoint, called with a customer's API key (any method; GET)
    "auth_forward_get": ("GET", "/auth/forward"),
}

# Operations the sidecar's spec lists for service callers (the `service` scope or the
# `service` tag) that this client deliberately does not call, and why.
NOT_COVERED: dict[str, str] = {
    "list_packages": (
        "selling credits goes through Stripe Checkout (docs/stripe.md), not this client"
    ),
    "get_package": "as list_packages",
    "healthz": (
        "liveness for orchestrators; the client reports unreachability as SidecarUnavailable"
    ),
    "readyz": "readiness for orchestrators, as healthz",
    "metrics": "Prometheus text for scrapers",
    "console": "an HTML page for operators",
    "portal_page": "an HTML page for customers; create_portal_session makes its link",
}


def new_key() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Call(Generic[T]):
    op: str
    parse: Callable[[Any], T]
    path_params: Mapping[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    query: dict[str, str] | None = None
    # safe to send again once it may have reached the sidecar (an idempotency key, or a read)
    retry: bool = True
    reason: str | None = None  # X-Audit-Reason of an admin change
    headers: Mapping[str, str] = field(default_factory=dict)  # sent over the client's own
    # parse gets {"body": ..., "headers": ...}: an answer told in headers (the forward auth)
    read_headers: bool = False

    @property
    def method(self) -> str:
        return OPERATIONS[self.op][0]

    @property
    def template(self) -> str:
        return OPERATIONS[self.op][1]

    @property
    def path(self) -> str:
        return self.template.format(**{k: quote(v, safe="") for k, v in self.path_params.items()})


def _opt(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


def _none(data: Any) -> None:
    return None


def check(
    account: str,
    cost: int,
    idempotency_key: str | None,
    dry_run: bool,
    description: str | None,
    metadata: Mapping[str, Any] | None,
) -> Call[m.CheckResult]:
    body = _opt(
        {"account": account, "cost": cost, "idempotency_key": idempotency_key or new_key()},
        description=description,
        metadata=dict(metadata) if metadata is not None else None,
    )
    if dry_run:
        body["dry_run"] = True
    return Call("check", _check_answer, body=body)


def _check_answer(data: Any) -> m.CheckResult:
    """A check's 200 says ``allowed: true``; anything else is not the sidecar's answer."""
    if not isinstance(data, dict) or data.get("allowed") is not True:
        raise TypeError("a check's answer without allowed: true")
    return m.CheckResult.from_json(data)


def report_usage(
    account: str,
    cost: int,
    idempotency_key: str | None,
    description: str | None,
    metadata: Mapping[str, Any] | None,
) -> Call[m.UsageRecorded]:
    body = _opt(
        {"account": account, "cost": cost, "idempotency_key": idempotency_key or new_key()},
        description=description,
        metadata=dict(metadata) if metadata is not None else None,
    )
    return Call("report_usage", m.UsageRecorded.from_json, body=body)


def hold(
    account: str,
    amount: int,
    hold_id: str | None,
    ttl_ms: int | None,
    description: str | None,
    metadata: Mapping[str, Any] | None,
) -> Call[m.Hold]:
    body = _opt(
        {"account": account, "hold_id": hold_id or new_key(), "amount": amount},
        ttl_ms=ttl_ms,
        description=description,
        metadata=dict(metadata) if metadata is not None else None,
    )
    return Call("hold", m.Hold.from_json, body=body)


def settle(hold_id: str, amount: int, account: str, description: str | None) -> Call[m.HoldClosed]:
    body = _opt({"account": account, "amount": amount}, description=description)
    return Call("settle", m.HoldClosed.from_json, {"hold_id": hold_id}, body)


def release(hold_id: str, account: str, description: str | None) -> Call[m.HoldClosed]:
    body = _opt({"account": account}, description=description)
    return Call("release", m.HoldClosed.from_json, {"hold_id": hold_id}, body)


def balance(account: str) -> Call[m.Balance]:
    return Call("balance", m.Balance.from_json, {"account": account})


def put_account(
    account: str, settings: Mapping[str, Any], reason: str | None
) -> Call[m.AccountSettings]:
    return Call(
        "put_account",
        m.AccountSettings.from_json,
        {"account": account},
        dict(settings),
        reason=reason,
    )


def patch_account(
    account: str, changes: Mapping[str, Any], reason: str | None
) -> Call[m.AccountSettings]:
    return Call(
        "patch_account",
        m.AccountSettings.from_json,
        {"account": account},
        dict(changes),
        reason=reason,
    )


def grant(
    account: str,
    credits: int,
    grant_id: str | None,
    reason: str | None,
    source: str | None,
    expires_at: str | int | None,
    priority: int | None,
    description: str | None,
    metadata: Mapping[str, Any] | None,
) -> Call[m.Granted]:
    body = _opt(
        {"grant_id": grant_id or new_key(), "credits": credits},
        reason=reason,
        source=source,
        expires_at=expires_at,
        priority=priority,
        description=description,
        metadata=dict(metadata) if metadata is not None else None,
    )
    return Call("grant", m.Granted.from_json, {"account": account}, body)


def create_key(
    account: str,
    name: str | None,
    rate_limit: Mapping[str, Any] | None,
    spend_limit: Mapping[str, Any] | None,
    idempotency_key: str | None,
    reason: str | None,
) -> Call[m.KeyCreated]:
    body = _opt(
        {"idempotency_key": idempotency_key or new_key()},
        name=name,
        rate_limit=dict(rate_limit) if rate_limit is not None else None,
        spend_limit=dict(spend_limit) if spend_limit is not None else None,
    )
    return Call("create_key", m.KeyCreated.from_json, {"account": account}, body, reason=reason)


def _keys(data: Any) -> list[m.Key]:
    return [m.Key.from_json(k) for k in data["keys"]]


def list_keys(account: str) -> Call[list[m.Key]]:
    return Call("list_keys", _keys, {"account": account})


def patch_key(
    key_id: str, spend_limit: Mapping[str, Any] | None, reason: str | None
) -> Call[m.Key]:
    body = {"spend_limit": dict(spend_limit) if spend_limit is not None else None}
    return Call("patch_key", m.Key.from_json, {"key_id": key_id}, body, reason=reason)


def revoke_key(key_id: str, reason: str | None) -> Call[m.Key]:
    return Call("revoke_key", m.Key.from_json, {"key_id": key_id}, reason=reason)


def put_plan(plan: str, definition: Mapping[str, Any], reason: str | None) -> Call[m.Plan]:
    return Call("put_plan", m.Plan.from_json, {"plan": plan}, dict(definition), reason=reason)


def get_plan(plan: str) -> Call[m.Plan]:
    return Call("get_plan", m.Plan.from_json, {"plan": plan})


def _plans(data: Any) -> list[m.Plan]:
    return [m.Plan.from_json(p) for p in data["plans"]]


def list_plans() -> Call[list[m.Plan]]:
    return Call("list_plans", _plans)


def delete_plan(plan: str, reason: str | None) -> Call[None]:
    # a repeat after a lost answer is a 404 unknown_plan: not sent again once it may have landed
    return Call("delete_plan", _none, {"plan": plan}, retry=False, reason=reason)


def create_portal_session(
    account: str,
    return_url: str | None,
    locale: str | None,
    sections: list[str] | None,
) -> Call[m.PortalSession]:
    body = _opt({}, return_url=return_url, locale=locale, sections=sections)
    # each call makes a session: not sent again once it may have landed
    return Call(
        "create_portal_session", m.PortalSession.from_json, {"account": account}, body, retry=False
    )


def create_token(
    name: str, scopes: list[str], account_prefix: str | None, reason: str | None
) -> Call[m.TokenCreated]:
    body = _opt({"name": name, "scopes": scopes}, account_prefix=account_prefix)
    # no idempotency key in the API: a token made twice is a token leaked once
    return Call("create_token", m.TokenCreated.from_json, body=body, retry=False, reason=reason)


def _tokens(data: Any) -> list[m.Token]:
    return [m.Token.from_json(t) for t in data["tokens"]]


def list_tokens() -> Call[list[m.Token]]:
    return Call("list_tokens", _tokens)


def get_token(token_id: str) -> Call[m.Token]:
    return Call("get_token", m.Token.from_json, {"token_id": token_id})


def rotate_token(
    token_id: str, grace_seconds: int | None, reason: str | None
) -> Call[m.TokenCreated]:
    body = _opt({}, grace_seconds=grace_seconds)
    # a second rotation would replace the secret the first answer carried
    return Call(
        "rotate_token",
        m.TokenCreated.from_json,
        {"token_id": token_id},
        body,
        retry=False,
        reason=reason,
    )


def revoke_token(token_id: str, reason: str | None) -> Call[m.Token]:
    return Call("revoke_token", m.Token.from_json, {"token_id": token_id}, reason=reason)


def _authorized(data: Any) -> m.Authorized:
    body, headers = data["body"] or {}, data["headers"]

    def number(name: str) -> int | None:
        value = headers.get(name)
        return int(value) if value is not None and value.isdigit() else None

    return m.Authorized(
        raw=body,
        allowed=True,
        reason=str(body.get("reason", "allowed")),
        account=headers.get("x-credits-account", ""),
        balance=number("x-credits-balance"),
        cost=number("x-credits-cost"),
        transaction_id=headers.get("x-credits-transaction"),
        replayed=headers.get("x-credits-replayed") == "true",
        dry_run=headers.get("x-credits-dry-run") == "true",
        rate_limit_headers={
            name: headers[name.lower()]
            for name in ("RateLimit-Policy", "RateLimit")
            if name.lower() in headers
        },
    )


def authorize(
    api_key: str, method: str, uri: str, request_id: str | None, cost: int | None
) -> Call[m.Authorized]:
    """A customer's request decided by its API key: the sidecar finds the key's account (a
    revoked or unknown key: 401), applies the key's limits, and charges. The request id makes a
    retry a replay: one is made per logical call unless the request brought its own."""
    headers = {
        "Authorization": f"Bearer {api_key}",
        "X-Forwarded-Method": method,
        "X-Forwarded-Uri": raw_uri(uri),
        "X-Request-Id": request_id or new_key(),
    }
    if cost is not None:
        headers["X-Credits-Cost"] = str(cost)  # honoured with SIDECAR_TRUST_COST_HEADER=true
    return Call("auth_forward_get", _authorized, headers=headers, read_headers=True)


# what a request's raw URI never holds: a middleware's path is decoded ("/a%00" is "/a\x00")
_NOT_IN_A_URI = re.compile(r"[\x00-\x20\x7f-\U0010ffff]+")


def raw_uri(uri: str) -> str:
    """The URI as a proxy sends it: controls, spaces and non-ASCII percent-encoded (UTF-8), so
    it can be a header's value and the sidecar prices the path the request named."""
    return _NOT_IN_A_URI.sub(lambda c: quote(c.group(), safe="", errors="surrogatepass"), uri)


def _spec(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError("/openapi.json is not a JSON object")
    return data


def openapi() -> Call[dict[str, Any]]:
    return Call("openapi", _spec)
