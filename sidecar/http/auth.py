"""Who may call an operation: the kinds of caller a route declares (sidecar/http/contract.py), each
with its OpenAPI security requirement and the check the registry runs before the handler.

A token route names the scopes it needs (any one of them; ``admin`` holds them all:
docs/tokens.md). The bearer token is compared in constant time against both bootstrap tokens of
the settings (so the time taken does not tell which, or how much of one, matched), else looked
up in this process's copy of the stored tokens (sidecar/ledger/token_cache.py: no round trip).
The caller is kept on the request (:data:`CALLER`) for what follows: the account-prefix check
(sidecar/http/contract.py) and the audit trail. The API key of the proxies' auth endpoints is
the gate's business (sidecar/gate/decision.py), the Stripe signature the webhook's; those kinds
only document the caller.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from sidecar import errors
from sidecar.http.state import SETTINGS, TOKEN_CACHE
from sidecar.ledger.tokens import BOOTSTRAP_ADMIN, BOOTSTRAP_SERVICE, Caller, Scope

Check = Callable[[web.Request], None]
# The OpenAPI security requirement: alternatives, each {scheme name: scopes}.
Security = tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]
CALLER = web.RequestKey("caller", Caller)


def bearer(request: web.Request) -> bytes | None:
    """The bearer token of the Authorization header (surrogate-escaped bytes kept), or None.
    Two Authorization headers are refused (401): a proxy in front may read the other one."""
    values = request.headers.getall("Authorization", ())
    if len(values) > 1:
        raise errors.Unauthorized("more than one Authorization header")
    scheme, _, token = (values[0] if values else "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def scope_check(app: web.Application, scopes: tuple[Scope, ...]) -> Check:
    """401 for no token or an unknown one, 403 naming the scope for a token without any of
    ``scopes``; else the caller is kept on the request."""
    settings = app[SETTINGS]
    bootstrap = (
        (BOOTSTRAP_ADMIN, settings.token("admin").encode()),
        (BOOTSTRAP_SERVICE, settings.token("service").encode()),
    )
    wanted = " or ".join(f"`{s}`" for s in scopes)

    def check(request: web.Request) -> None:
        given = bearer(request)
        if given is None:
            raise errors.Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        caller: Caller | None = None
        for who, secret in bootstrap:
            if hmac.compare_digest(given, secret):
                caller = who
        if caller is None and (cache := request.app.get(TOKEN_CACHE)) is not None:
            caller = cache.verify(given)
        if caller is None:
            raise errors.Unauthorized("invalid token")
        if not caller.allows(scopes):
            held = ", ".join(sorted(caller.scopes))
            raise errors.Forbidden(
                f"this route needs a token with the {wanted} scope (or `admin`); "
                f"token {caller.token_id} has: {held}"
            )
        request[CALLER] = caller

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
    error body's 401/403 (``bearer_errors``), the check made for it once per app, and for a
    token route the scopes it needs (any one; ``admin`` always does)."""

    name: str
    security: Security
    resolve: Callable[[web.Application], Check | None]
    bearer_errors: bool = False
    scopes: tuple[Scope, ...] = ()


def _nothing(app: web.Application) -> None:
    return None


def scoped(name: str, *scopes: Scope) -> Auth:
    """A token route needing one of ``scopes`` (or ``admin``)."""
    alternatives = tuple(dict.fromkeys((*scopes, "admin")))
    return Auth(
        name,
        tuple(((("token", (s,)),)) for s in alternatives),
        lambda app: scope_check(app, scopes),
        bearer_errors=True,
        scopes=scopes,
    )


NONE = Auth("none", (), _nothing)
ADMIN = scoped("admin", "admin")
SERVICE = scoped("service", "service")  # checks, holds, usage reports
READ = scoped("read", "read")  # balances, transactions, usage, the console's reads
CHECKOUT = scoped("checkout", "checkout")  # starting a Stripe Checkout
PORTAL = scoped("portal", "portal")  # customer-portal sessions (issue 23)
# the package catalogue: what an app selling credits reads before a checkout
CATALOG = scoped("catalog", "read", "checkout", "service")
# Checked by the gate (sidecar/gate/decision.py), which answers its own 401.
API_KEY = Auth("api_key", (((("apiKey", ()),)), ((("apiKeyHeader", ()),))), _nothing)
METRICS = Auth("metrics", ((), ((("metricsToken", ()),))), metrics_check)
# Checked by the webhook handler: the signature authenticates the raw body.
STRIPE_SIGNATURE = Auth("stripe_signature", (((("stripeSignature", ()),)),), _nothing)

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "token": {
        "type": "http",
        "scheme": "bearer",
        "description": "a sidecar API token with the scope the operation lists (docs/tokens.md):"
        " a named token (`cst_…`, POST /v1/tokens), or a bootstrap one: SIDECAR_ADMIN_TOKEN"
        " (admin), SIDECAR_SERVICE_TOKEN (service, checkout)",
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
