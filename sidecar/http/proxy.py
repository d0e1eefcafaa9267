"""Auth endpoints for reverse proxies, one per contract, all on one code path
(sidecar/gate/decision.py).

- ``/auth/nginx`` (``auth_request``): nginx honours only 2xx, 401 and 403 from the
  subrequest and never forwards its body, so a deny is 401 (bad key) or 403 with the real
  status in ``X-Credits-Deny-Status``; the shipped nginx config maps it to a JSON 402/429/503.
  The original method and URI arrive in ``X-Original-Method`` / ``X-Original-URI``.
- ``/auth/envoy/<original path>`` (ext_authz HTTP service, ``path_prefix``): any method;
  exactly 200 allows; a deny's status, headers and JSON body reach the client as they are.
- ``/auth/forward`` (Traefik ForwardAuth, Caddy ``forward_auth``): method and URI in
  ``X-Forwarded-Method`` / ``X-Forwarded-Uri``; 2xx allows; a deny reaches the client as is.

On allow every mode returns ``X-Credits-Account``, ``X-Credits-Balance``,
``X-Credits-Cost``, ``X-Credits-Transaction`` and ``X-Credits-Replayed`` (``true`` when the
request id repeated an earlier request, charged then) for the proxy to pass upstream.

Every mode reads its input here, once, before the gate: the method must be an HTTP token,
the URI is reduced to its canonical path (sidecar/gate/paths.py) or refused, and the headers read
(the method and URI headers, and the gate's ``Gate.headers_read``: ``Authorization``,
``X-API-Key``, the request id, ``X-Credits-Cost`` when trusted) must be sent at most once, as
UTF-8 without control characters; the gate sees those values only. A refusal is a 400 whose body
(and ``X-Credits-Field`` header) names the header, so a client's bad bytes never reach Redis.

Each decision is counted and timed for ``/metrics`` under its endpoint (``nginx``,
``forward``, ``envoy``) by its real outcome (in shadow mode: the one it would have had).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import Any

from aiohttp import web
from msgspec import UNSET
from multidict import CIMultiDictProxy

from sidecar.gate.decision import Outcome
from sidecar.gate.paths import InvalidPath, canonical_path
from sidecar.http.auth import API_KEY
from sidecar.http.contract import Call, Header, Out, Reply, Routes
from sidecar.http.responses import AuthOutcome
from sidecar.http.schemas import (
    TailPath,
)
from sidecar.http.state import GATE
from sidecar.http.views import limit_view, rate_headers
from sidecar.ledger.units import iso
from sidecar.runtime import metrics

proxy_routes = Routes()
# (method, canonical path, raw query string)
Extract = Callable[[web.Request], tuple[str, str, str]]
Render = Callable[[Outcome], Reply]


def outcome_headers(o: Outcome) -> dict[str, str]:
    h: dict[str, str] = {"X-Credits-Reason": o.reason}
    if o.account:
        h["X-Credits-Account"] = o.account
    if o.balance is not None:
        h["X-Credits-Balance"] = str(o.balance)
    if o.cost is not None:
        h["X-Credits-Cost"] = str(o.cost)
    if o.transaction_id:
        h["X-Credits-Transaction"] = o.transaction_id
        # The request id matched an earlier request's (same key, method, URI, query, cost):
        # charged then, not now. Nothing the sidecar sees tells two bodies apart, so your API
        # should answer a replay as it answered the first, not do the work again.
        h["X-Credits-Replayed"] = "true" if o.replayed else "false"
    if o.retry_after_ms is not None:
        h["Retry-After"] = str(math.ceil(o.retry_after_ms / 1000))
    if o.rate is not None:
        h.update(rate_headers(o.rate))
    if o.spend is not None:
        h["X-Credits-Spend-Limit"] = str(o.spend.limit.credits)
        h["X-Credits-Spent"] = str(o.spend.spent)
        if o.spend.ends_at is not None:
            h["X-Credits-Window-Ends"] = iso(o.spend.ends_at)
    if o.dry_run:
        h["X-Credits-Dry-Run"] = "1"
    if o.shadow_status is not None:
        h["X-Credits-Shadow-Status"] = str(o.shadow_status)
    if o.status == 401:
        h["WWW-Authenticate"] = 'Bearer realm="credit-sidecar"'
    if "field" in o.extra:
        h["X-Credits-Field"] = o.extra["field"]
    return h


def outcome_body(o: Outcome) -> AuthOutcome:
    extra = o.extra
    return AuthOutcome(
        allowed=o.allowed,
        reason=o.reason,
        balance=UNSET if o.balance is None else o.balance,
        required=UNSET if o.required is None else o.required,
        retry_after_ms=UNSET if o.retry_after_ms is None else o.retry_after_ms,
        spend_limit=UNSET if o.spend is None else limit_view(o.spend.limit),
        spent=UNSET if o.spend is None else o.spend.spent,
        window_ends_at=UNSET if o.spend is None else iso(o.spend.ends_at),
        field=extra.get("field", UNSET),
        message=extra.get("message", UNSET),
    )


def render_as_is(o: Outcome) -> Reply:
    return Reply(outcome_body(o), o.status, outcome_headers(o))


def render_nginx(o: Outcome) -> Reply:
    headers = outcome_headers(o)
    if o.status in (200, 401):
        return Reply(outcome_body(o), o.status, headers)
    headers["X-Credits-Deny-Status"] = str(o.status)
    return Reply(outcome_body(o), 403, headers)


def handler(
    extract: Extract, render: Render, endpoint: int
) -> Callable[[Call[Any, None, None]], Awaitable[Reply]]:
    checks = metrics.CHECKS

    async def handle(call: Call[Any, None, None]) -> Reply:
        request = call.request
        started = perf_counter()
        gate = request.app[GATE]
        try:
            method, path, query = extract(request)
            # Only these reach the gate: it cannot read a header that was not checked here.
            headers = {
                name: value
                for name, reason in gate.headers_read.items()
                if (value := _header(request.headers, name, reason)) is not None
            }
        except Refused as e:
            outcome = gate.refuse(e.reason, e.field, e.message)
        else:
            try:
                outcome = await gate.decide(method, path, headers, query)
            except Exception:
                checks.record(endpoint, metrics.ERROR, perf_counter() - started)
                raise
        counted = _counted_as(outcome)
        checks.record(endpoint, counted, perf_counter() - started)
        if counted == metrics.ERROR:
            checks.store_error(endpoint)
        return render(outcome)

    return handle


def _counted_as(o: Outcome) -> int:
    if o.reason in ("store_unavailable", "fail_open"):
        return metrics.ERROR
    return metrics.OUTCOME_OF_STATUS.get(o.shadow_status or o.status, metrics.REJECTED)


class Refused(Exception):
    """Input the gate must not see: a 400 with ``reason``, naming ``field``."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.field, self.message = reason, field, message


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16}")  # RFC 9110 token, at most 16 chars
ENVOY_PREFIX = "/auth/envoy"


def _header(headers: CIMultiDictProxy[str], name: str, reason: str) -> str | None:
    """The header's only value, or None; Refused if repeated, not UTF-8 (aiohttp hands raw
    bytes over as surrogate escapes) or holding a control character (a tab gets through)."""
    values = headers.getall(name, ())
    if not values:
        return None
    if len(values) > 1:
        raise Refused(reason, name, f"{name} was sent more than once")
    value = values[0]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(reason, name, f"{name} is not valid UTF-8") from None
    if _CONTROL.search(value):
        raise Refused(reason, name, f"{name} contains a control character")
    return value


def _method(method: str, field: str) -> str:
    if not _TOKEN.fullmatch(method):
        raise Refused(
            "invalid_method", field, f"{field}: must be an HTTP method of 1-16 characters"
        )
    return method


def _from_headers(
    request: web.Request, method_header: str, uri_header: str
) -> tuple[str, str, str]:
    method = _header(request.headers, method_header, "invalid_method") or request.method
    _method(method, method_header)
    uri = _header(request.headers, uri_header, "invalid_path")
    if uri is None:
        uri = "/"
    return method, _canonical(uri, uri_header), uri.partition("?")[2]


def _canonical(target: str, field: str) -> str:
    try:
        return canonical_path(target)
    except InvalidPath as e:
        raise Refused("invalid_path", field, f"{field}: {e}") from None


def _nginx(request: web.Request) -> tuple[str, str, str]:
    return _from_headers(request, "X-Original-Method", "X-Original-URI")


def _forward(request: web.Request) -> tuple[str, str, str]:
    return _from_headers(request, "X-Forwarded-Method", "X-Forwarded-Uri")


def _envoy(request: web.Request) -> tuple[str, str, str]:
    # The raw path: request.path is already decoded (and the router matched on it, so
    # /auth/%65nvoy/x lands here too). Envoy sends the prefix as configured, literally.
    raw = request.rel_url.raw_path
    tail = raw[len(ENVOY_PREFIX) :]
    if not raw.startswith(ENVOY_PREFIX) or tail[:1] not in ("", "/"):
        raise Refused("invalid_path", "path", f"path: must start with {ENVOY_PREFIX}/")
    method = _method(request.method, "method")
    return method, _canonical(tail or "/", "path"), request.rel_url.raw_query_string


nginx = handler(_nginx, render_nginx, metrics.NGINX)
forward = handler(_forward, render_as_is, metrics.FORWARD)
envoy = handler(_envoy, render_as_is, metrics.ENVOY)

# -- declarations ----------------------------------------------------------------------------

GATE_HEADERS = {
    "X-Credits-Reason": Header(str, "why (allowed, or the denial)"),
    "X-Credits-Account": Header(str, "the key's account"),
    "X-Credits-Balance": Header(int, "the balance after the charge"),
    "X-Credits-Cost": Header(int, "what the request cost"),
    "X-Credits-Transaction": Header(str, "the charge's transaction"),
}


def outcome(description: str, extra: Mapping[str, Header] | None = None) -> Out:
    return Out(AuthOutcome, description, headers={**GATE_HEADERS, **(extra or {})})


ALLOWED = outcome(
    "allowed (and charged)",
    {
        "X-Credits-Replayed": Header(
            str,
            "`true`: a replay of an earlier request (same request id), charged then; answer it "
            "as the first, do not do the work again; else `false`",
        ),
        "X-Credits-Dry-Run": Header(
            str,
            "`1`: a dry run (SIDECAR_TRUST_DRY_RUN_HEADER and the proxy's X-Credits-Dry-Run: 1):"
            " the answer the request would get, nothing charged; on every answer to a dry run",
        ),
        "RateLimit-Policy": Header(
            str,
            'when a rate limit applies: the tightest, `"<account|key|route>";q=<requests>;'
            "w=<seconds>` (IETF draft-ietf-httpapi-ratelimit-headers)",
        ),
        "RateLimit": Header(
            str, 'and what is left of it: `"<policy>";r=<requests left>;t=<seconds to whole>`'
        ),
    },
)
SPEND_HEADERS = {
    "X-Credits-Spend-Limit": Header(int, "a spending limit's credits"),
    "X-Credits-Spent": Header(int, "spent in its current window"),
    "X-Credits-Window-Ends": Header(str, "when the window ends (RFC 3339; none: a lifetime limit)"),
}
DENIALS = {
    400: outcome(
        "`invalid_path`, `invalid_method`, `invalid_header`, `invalid_cost_header`",
        {"X-Credits-Field": Header(str, "the header (or path) refused")},
    ),
    401: outcome(
        "`missing_api_key`, `invalid_api_key`",
        {"WWW-Authenticate": Header(str, 'Bearer realm="credit-sidecar"')},
    ),
    402: outcome(
        "`insufficient_credits`; `key_spend_limit` or `spend_limit`: the cost would pass the API "
        "key's or the account's spending limit in its current window",
        SPEND_HEADERS,
    ),
    403: outcome("`route_denied`"),
    409: outcome("`idempotency_conflict`: the request id was used for another request"),
    429: outcome("`rate_limited`", {"Retry-After": Header(int, "seconds to wait")}),
    503: outcome("`store_unavailable` (failure policy closed)"),
}
ANY_METHOD = " Answers any method; the API key is `Authorization: Bearer <key>` or `X-API-Key`."


def _declare(
    path: str,
    operation_id: str,
    proxy: str,
    description: str,
    responses: Mapping[int, Out],
    headers: Mapping[str, str],
    handle: Callable[[Call[Any, None, None]], Awaitable[Reply]],
    params: type[TailPath] | None = None,
) -> None:
    proxy_routes.route(
        "*",
        path,
        f"Decide and charge a proxied request ({proxy})",
        operation_id=operation_id,
        tag="proxy",
        auth=API_KEY,
        params=params,
        headers=headers,
        responses=responses,
        description=description + ANY_METHOD,
    )(handle)


_declare(
    "/auth/nginx",
    "auth_nginx",
    "nginx auth_request",
    "Method and URI from `X-Original-Method` / `X-Original-URI`. nginx honours only 2xx, 401 "
    "and 403 from the subrequest: every other denial is 403 with the real status in "
    "`X-Credits-Deny-Status` (the shipped config maps it back).",
    {
        200: ALLOWED,
        401: DENIALS[401],
        403: outcome(
            "denied; the real status is in X-Credits-Deny-Status",
            {
                "X-Credits-Deny-Status": Header(
                    int, "the real status (400, 402, 403, 429, 503) for the nginx config"
                ),
                # the headers of the denial it stands for (outcome_headers)
                **SPEND_HEADERS,
                "Retry-After": Header(int, "a 429: seconds to wait"),
                "X-Credits-Field": Header(str, "a 400: the header (or path) refused"),
            },
        ),
    },
    {"X-Original-Method": "the original method", "X-Original-URI": "the original URI"},
    nginx,
)
_declare(
    "/auth/forward",
    "auth_forward",
    "Traefik ForwardAuth, Caddy forward_auth",
    "Method and URI from `X-Forwarded-Method` / `X-Forwarded-Uri`; a denial reaches the "
    "client as it is.",
    {200: ALLOWED, **DENIALS},
    {"X-Forwarded-Method": "the original method", "X-Forwarded-Uri": "the original URI"},
    forward,
)
ENVOY = (
    "Envoy ext_authz (HTTP service, path_prefix /auth/envoy)",
    "The original request itself, under the prefix; exactly 200 allows; a denial reaches the "
    "client as it is.",
    {200: ALLOWED, **DENIALS},
)
_declare("/auth/envoy", "auth_envoy", *ENVOY, {}, envoy)
_declare("/auth/envoy/{tail:.*}", "auth_envoy_tail", *ENVOY, {}, envoy, TailPath)
