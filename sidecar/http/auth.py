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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from sidecar import errors
from sidecar.http.state import PORTAL_SESSIONS, SETTINGS, TOKEN_CACHE
from sidecar.ledger.portal import PortalSession
from sidecar.ledger.tokens import BOOTSTRAP_ADMIN, BOOTSTRAP_SERVICE, Caller, Scope
from sidecar.settings import Settings

# A check raises to refuse; one that needs Redis (a portal session) returns its awaitable.
Check = Callable[[web.Request], Awaitable[None] | None]
# The OpenAPI security requirement: alternatives, each {scheme name: scopes}.
Security = tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]
CALLER = web.RequestKey("caller", Caller)
PORTAL = web.RequestKey("portal_session", PortalSession)
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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


def portal_secure(settings: Settings, request: web.Request) -> bool:
    """Whether the portal's cookie is Secure (and so ``__Host-`` prefixed: no sibling
    subdomain can plant one): served over TLS, a public URL in https, or embedding configured
    (SameSite=None needs Secure; browsers allow it on http://localhost)."""
    return bool(
        request.secure
        or (settings.portal_url or "").startswith("https://")
        or settings.portal_frame_ancestors
    )


def portal_cookie(settings: Settings, request: web.Request) -> str:
    """The name of the portal session's cookie for this request."""
    return "__Host-cs_portal" if portal_secure(settings, request) else "cs_portal"


def portal_check(app: web.Application) -> Check:
    """A live portal session from its cookie (401 ``portal_session_required`` otherwise); a
    change also needs the session's CSRF token in X-CSRF-Token and not to come from another
    site (403 ``csrf``). The session, and a caller naming it for the audit trail, are kept
    on the request: the account is the session's, never one the request names."""
    settings = app[SETTINGS]

    async def check(request: web.Request) -> None:
        unsafe = request.method not in _SAFE_METHODS
        if unsafe and request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise errors.CsrfRefused("portal changes are made from the portal's own pages")
        name = portal_cookie(settings, request)
        # Two cookies of the name (one planted for a narrower path or a parent domain): which
        # session is the customer's? Neither.
        sent = [c for header in request.headers.getall("Cookie", ()) for c in header.split(";")]
        found = [c.strip()[len(name) + 1 :] for c in sent if c.strip().startswith(name + "=")]
        if len(found) != 1:
            raise errors.PortalSessionRequired(
                "no portal session: open the portal from the link your app gives you"
                if not found
                else "more than one portal session cookie"
            )
        session = await request.app[PORTAL_SESSIONS].get(found[0])
        if session is None:
            raise errors.PortalSessionRequired(
                "this portal session has ended: open the portal again from your app"
            )
        if unsafe:
            given = request.headers.getall(CSRF_HEADER, ())
            if len(given) != 1 or not session.csrf_ok(given[0]):
                raise errors.CsrfRefused(
                    f"a portal change needs the session's {CSRF_HEADER} header", field=CSRF_HEADER
                )
        request[PORTAL] = session
        request[CALLER] = Caller(f"portal:{session.id}", "portal session", frozenset({"portal"}))

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
PORTAL_TOKEN = scoped("portal", "portal")  # making customer-portal sessions (docs/portal.md)
# the package catalogue: what an app selling credits reads before a checkout
CATALOG = scoped("catalog", "read", "checkout", "service")
# The customer portal's own API: a portal session's cookie (docs/portal.md).
PORTAL_SESSION = Auth("portal_session", (((("portalSession", ()),)),), portal_check)
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
    "portalSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "cs_portal",
        "description": "a customer-portal session (docs/portal.md), set when its link is opened;"
        " `__Host-cs_portal` when the portal is served over https or embedded. A change also"
        " needs the session's `csrf_token` in `X-CSRF-Token`",
    },
}
