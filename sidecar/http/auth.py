"""Who may call an operation: the kinds of caller a route declares (sidecar/http/contract.py), each
with its OpenAPI security requirement and the check the registry runs before the handler.

Bearer tokens are compared in constant time against every role's token (so the time taken does
not tell which role, or how much of a token, matched). The API key of the proxies' auth
endpoints is the gate's business (sidecar/gate/decision.py), the Stripe signature the
webhook's; those kinds only document the caller. A later customer-portal session is one more
kind here.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from sidecar import errors
from sidecar.http.state import SETTINGS, TOKENS

Check = Callable[[web.Request], None]
# The OpenAPI security requirement: alternatives, each a set of scheme names.
Security = tuple[tuple[str, ...], ...]


def bearer(request: web.Request) -> bytes | None:
    """The bearer token of the Authorization header (surrogate-escaped bytes kept), or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def role_check(tokens: dict[str, bytes], roles: tuple[str, ...]) -> Check:
    """Constant-time check of the bearer token against the tokens of every role; 401 for no
    token or an unknown one, 403 for a valid token of a role not in ``roles``."""
    secrets = tuple(tokens.items())
    allowed = frozenset(roles)
    refusal = f"this route needs the {' or '.join(roles)} token"

    def check(request: web.Request) -> None:
        given = bearer(request)
        if given is None:
            raise errors.Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        matched = {role for role, secret in secrets if hmac.compare_digest(given, secret)}
        if not matched:
            raise errors.Unauthorized("invalid token")
        if not matched & allowed:
            raise errors.Forbidden(refusal)

    return check


def metrics_check(app: web.Application) -> Check | None:
    """The metrics token when SIDECAR_METRICS_TOKEN is set (else the route is open)."""
    token = app[SETTINGS].metrics_token
    if token is None:
        return None
    expected = token.get_secret_value().encode()

    def check(request: web.Request) -> None:
        given = bearer(request)
        if given is None or not hmac.compare_digest(given, expected):
            raise errors.Unauthorized("GET /metrics needs the metrics token (Bearer)")

    return check


@dataclass(frozen=True, slots=True)
class Auth:
    """A kind of caller: its name, its OpenAPI security requirement, whether a refusal is the
    error body's 401/403 (``bearer_errors``), and the check made for it once per app."""

    name: str
    security: Security
    resolve: Callable[[web.Application], Check | None]
    bearer_errors: bool = False


def _nothing(app: web.Application) -> None:
    return None


def _roles(*roles: str) -> Callable[[web.Application], Check]:
    return lambda app: role_check(app[TOKENS], roles)


NONE = Auth("none", (), _nothing)
ADMIN = Auth("admin", (("adminToken",),), _roles("admin"), bearer_errors=True)
SERVICE = Auth("service", (("adminToken",), ("serviceToken",)), _roles("service", "admin"), True)
# Checked by the gate (sidecar/gate/decision.py), which answers its own 401.
API_KEY = Auth("api_key", (("apiKey",), ("apiKeyHeader",)), _nothing)
METRICS = Auth("metrics", ((), ("metricsToken",)), metrics_check)
# Checked by the webhook handler: the signature authenticates the raw body.
STRIPE_SIGNATURE = Auth("stripe_signature", (("stripeSignature",),), _nothing)

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the admin token (SIDECAR_ADMIN_TOKEN)",
    },
    "serviceToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the service token (SIDECAR_SERVICE_TOKEN)",
    },
    "apiKey": {"type": "http", "scheme": "bearer", "description": "a client's API key (csk_…)"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the metrics token (SIDECAR_METRICS_TOKEN), when set",
    },
    "stripeSignature": {"type": "apiKey", "in": "header", "name": "Stripe-Signature"},
}
