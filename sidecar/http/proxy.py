"""Auth endpoints for reverse proxies, one per contract, all on one code path (sidecar/gate.py).

- ``/auth/nginx`` (``auth_request``): nginx honours only 2xx, 401 and 403 from the
  subrequest and never forwards its body, so a deny is 401 (bad key) or 403 with the real
  status in ``X-Credits-Deny-Status``; the shipped nginx config maps it to a JSON 402/429/503.
  The original method and URI arrive in ``X-Original-Method`` / ``X-Original-URI``.
- ``/auth/envoy/<original path>`` (ext_authz HTTP service, ``path_prefix``): any method;
  exactly 200 allows; a deny's status, headers and JSON body reach the client as they are.
- ``/auth/forward`` (Traefik ForwardAuth, Caddy ``forward_auth``): method and URI in
  ``X-Forwarded-Method`` / ``X-Forwarded-Uri``; 2xx allows; a deny reaches the client as is.

On allow every mode returns ``X-Credits-Account``, ``X-Credits-Balance``,
``X-Credits-Cost`` and ``X-Credits-Transaction`` for the proxy to pass upstream.

Each decision is counted and timed for ``/metrics`` under its endpoint (``nginx``,
``forward``, ``envoy``) by its real outcome (in shadow mode: the one it would have had).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from time import perf_counter

from aiohttp import web

from sidecar import metrics
from sidecar.gate import Outcome
from sidecar.http.appkeys import GATE
from sidecar.http.errors import json_response

proxy_routes = web.RouteTableDef()
Extract = Callable[[web.Request], tuple[str, str]]
Render = Callable[[Outcome], web.Response]


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
    if o.retry_after_ms is not None:
        h["Retry-After"] = str(math.ceil(o.retry_after_ms / 1000))
    if o.shadow_status is not None:
        h["X-Credits-Shadow-Status"] = str(o.shadow_status)
    if o.status == 401:
        h["WWW-Authenticate"] = 'Bearer realm="credit-sidecar"'
    return h


def outcome_body(o: Outcome) -> dict[str, object]:
    body: dict[str, object] = {"allowed": o.allowed, "reason": o.reason}
    for name in ("balance", "required", "retry_after_ms"):
        value = getattr(o, name)
        if value is not None:
            body[name] = value
    return body


def render_as_is(o: Outcome) -> web.Response:
    return json_response(outcome_body(o), o.status, outcome_headers(o))


def render_nginx(o: Outcome) -> web.Response:
    headers = outcome_headers(o)
    if o.status in (200, 401):
        return json_response(outcome_body(o), o.status, headers)
    headers["X-Credits-Deny-Status"] = str(o.status)
    return json_response(outcome_body(o), 403, headers)


def handler(
    extract: Extract, render: Render, endpoint: int
) -> Callable[[web.Request], Awaitable[web.Response]]:
    checks = metrics.CHECKS

    async def handle(request: web.Request) -> web.Response:
        started = perf_counter()
        method, uri = extract(request)
        try:
            outcome = await request.app[GATE].decide(method, uri, request.headers)
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


def _nginx(request: web.Request) -> tuple[str, str]:
    return (
        request.headers.get("X-Original-Method", request.method),
        request.headers.get("X-Original-URI", "/"),
    )


def _forward(request: web.Request) -> tuple[str, str]:
    return (
        request.headers.get("X-Forwarded-Method", request.method),
        request.headers.get("X-Forwarded-Uri", "/"),
    )


def _envoy(request: web.Request) -> tuple[str, str]:
    return request.method, request.path_qs.removeprefix("/auth/envoy") or "/"


nginx = handler(_nginx, render_nginx, metrics.NGINX)
forward = handler(_forward, render_as_is, metrics.FORWARD)
envoy = handler(_envoy, render_as_is, metrics.ENVOY)

proxy_routes.route("*", "/auth/nginx")(nginx)
proxy_routes.route("*", "/auth/forward")(forward)
proxy_routes.route("*", "/auth/envoy")(envoy)
proxy_routes.route("*", "/auth/envoy/{tail:.*}")(envoy)
