"""What every middleware shares: the cost of a route from a table, the check's idempotency key
from the request's id, and the answer: the header convention (docs/clients/python.md, the same
as the proxy modes') on an allowed request, the sidecar's own JSON body and headers on a
refusal, 503 ``credits_unavailable`` when the sidecar cannot be reached (``fail_closed``)."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from credit_sidecar import errors
from credit_sidecar.models import Authorized, CheckResult

log = logging.getLogger("credit_sidecar.middleware")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNSAFE = re.compile(r"[^\x20-\x7e]")  # what a header value must not carry (CR, LF, controls)


@dataclass(frozen=True)
class Verdict:
    """A request's answer from the sidecar: ``status`` 200 goes ahead with ``headers`` added to
    its response; any other status is answered with ``body`` and ``headers`` as they are."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    result: CheckResult | Authorized | None = None

    def __post_init__(self) -> None:
        # the values come from answers (a reason, an account): never a header of their own
        clean = {k: UNSAFE.sub("", str(v)) for k, v in self.headers.items()}
        object.__setattr__(self, "headers", clean)

    @property
    def allowed(self) -> bool:
        return self.status == 200


class CreditsDenied(Exception):
    """Raised by a per-route guard (``RequireCredits``, ``require_credits``) to answer a refusal;
    the middleware (or the framework's error handler installed with it) renders ``verdict``."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"credits: {verdict.status}")
        self.verdict = verdict


def route_cost(
    costs: Mapping[str, int], default_cost: int | None, method: str, path: str
) -> int | None:
    """The cost of ``method path`` from ``costs``: keys are ``"GET /v1/things"`` or
    ``"/v1/things"`` (any method); a key ending in ``*`` matches the paths it prefixes, the
    longest first. None or 0: free, no check."""
    method = method.upper()
    for key in (f"{method} {path}", path):
        if key in costs:
            return costs[key]
    best: tuple[int, int] | None = None
    for key, cost in costs.items():
        if not key.endswith("*"):
            continue
        m, _, p = key.rpartition(" ")
        if m and m.upper() != method:
            continue
        prefix = p[:-1]
        if path.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), cost)
    return best[1] if best is not None else default_cost


def idempotency_key(
    request_id: str | None, account: str, method: str, path: str, nth: int = 0
) -> str:
    """The check's idempotency key: derived from the request's own id when it sent a valid one
    (a retry of the same request is then charged once), else a new one per request. The account,
    method and path are part of it: the same id on another route is another charge. ``nth``
    counts the checks already made for this request (a route table's and a route's own guard):
    each is its own charge, which a shared key would turn into a 409 after the first charged."""
    if request_id and REQUEST_ID.fullmatch(request_id):
        text = f"{request_id}\n{account}\n{method}\n{path}" + (f"\n{nth}" if nth else "")
        return f"req-{hashlib.sha256(text.encode()).hexdigest()[:40]}"
    return uuid.uuid4().hex


def nth_request_id(request_id: str | None, nth: int) -> str | None:
    """The request id sent for a request's ``nth`` check by API key: the sidecar binds an id to
    one check (key, method, URI, cost), so from the second check on each gets its own, derived
    the same way on a retry."""
    if nth and request_id and REQUEST_ID.fullmatch(request_id):
        return idempotency_key(request_id, "", "", "", nth)
    return request_id


def rate_limit_headers(state: Mapping[str, Any] | None) -> dict[str, str]:
    """IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers) from the check's
    ``rate_limit``: ``{policy, limit, remaining, reset_ms, period_ms}``, when it has one."""
    if not isinstance(state, Mapping) or "policy" not in state:
        return {}
    policy = str(state["policy"]).replace('"', "")
    period = math.ceil(int(state.get("period_ms", 0)) / 1000)
    reset = math.ceil(int(state.get("reset_ms", 0)) / 1000)
    return {
        "RateLimit-Policy": f'"{policy}";q={int(state.get("limit", 0))};w={period}',
        "RateLimit": f'"{policy}";r={int(state.get("remaining", 0))};t={reset}',
    }


def allowed(result: CheckResult | Authorized) -> Verdict:
    if result.unchecked:  # fail_open: nothing is known
        return Verdict(200, {"X-Credits-Reason": "fail_open"}, None, result)
    headers = {"X-Credits-Reason": "allowed", "X-Credits-Account": result.account}
    if result.balance is not None:
        headers["X-Credits-Balance"] = str(result.balance)
    if result.cost is not None:
        headers["X-Credits-Cost"] = str(result.cost)
    if result.transaction_id:
        headers["X-Credits-Transaction"] = result.transaction_id
    headers["X-Credits-Replayed"] = "true" if result.replayed else "false"
    if isinstance(result, CheckResult):
        headers.update(rate_limit_headers(result.rate_limit))
    else:
        headers.update(result.rate_limit_headers)
    return Verdict(200, headers, None, result)


PASSED_ON = ("www-authenticate", "retry-after", "ratelimit", "ratelimit-policy")


def refused(exc: errors.CreditSidecarError, *, by_key: bool = False) -> Verdict:
    """The answer to a check that raised. ``by_key``: decided by the customer's API key, so a
    401 (a missing, unknown or revoked key) or 403 is the customer's, answered as it is."""
    if by_key and exc.status and not isinstance(exc, errors.SidecarUnavailable):
        headers = {
            k: v
            for k, v in exc.headers.items()
            if k.lower().startswith("x-credits-") or k.lower() in PASSED_ON
        }
        if not any(k.lower() == "x-credits-reason" for k in headers):
            headers["X-Credits-Reason"] = exc.code
        return Verdict(exc.status, headers, exc.body or _error(exc.code, exc.message))
    if isinstance(exc, errors.Denied):
        headers = {"X-Credits-Reason": exc.code}
        if exc.account:
            headers["X-Credits-Account"] = exc.account
        if "balance" in exc.body:
            headers["X-Credits-Balance"] = str(exc.body["balance"])
        if isinstance(exc, errors.RateLimited):
            headers["Retry-After"] = str(exc.retry_after_seconds)
        headers.update(rate_limit_headers(exc.body.get("rate_limit")))
        return Verdict(exc.status, headers, exc.body)
    if isinstance(exc, errors.Conflict | errors.NotFound | errors.InvalidRequest):
        # about this request: the request id reused for another request, an account id the
        # sidecar refuses
        return Verdict(exc.status, {}, exc.body or _error(exc.code, exc.message))
    if isinstance(exc, errors.SidecarUnavailable):
        log.error("credit-sidecar unreachable, request refused (fail_closed): %s", exc.message)
    else:  # 401/403/incompatible: the app's own configuration, not the caller's fault
        log.error("credit-sidecar refused the app's check (%s): %s", exc.code, exc.message)
    return Verdict(
        503,
        {"Retry-After": "1"},
        _error("credits_unavailable", "credits cannot be checked right now; try again shortly"),
    )


def no_account() -> Verdict:
    return Verdict(
        401,
        {"WWW-Authenticate": 'Bearer realm="api"'},
        _error("unauthorized", "no account for this request (a missing or unknown API key)"),
    )


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def check_sync(
    client: Any,
    account: str | None,
    cost: int,
    request_id: str | None,
    method: str,
    path: str,
    nth: int = 0,
) -> Verdict:
    """One request's check with the sync client (the WSGI middlewares); ``nth``: the checks
    already made for this request."""
    if not account:
        return no_account()
    key = idempotency_key(request_id, account, method, path, nth)
    try:
        result = client.check(account, cost, idempotency_key=key, description=f"{method} {path}")
    except errors.CreditSidecarError as e:
        return refused(e)
    return allowed(result)


def authorize_sync(
    client: Any,
    api_key: str | None,
    cost: int,
    request_id: str | None,
    method: str,
    uri: str,
    nth: int = 0,
) -> Verdict:
    """One request decided by its API key with the sync client (the WSGI middlewares)."""
    if not api_key:
        return no_account()
    request_id = nth_request_id(request_id, nth)
    try:
        result = client.authorize(api_key, method, uri, request_id=request_id, cost=cost)
    except errors.CreditSidecarError as e:
        return refused(e, by_key=True)
    return allowed(result)
