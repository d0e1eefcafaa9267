"""Customer-portal sessions, the business's half (docs/portal.md): its backend asks for a session
for one account (a token with the ``portal`` scope) and sends its customer to the answer's
``url``; opening that link once (``GET /portal/s/{link}``) sets the session cookie and lands on
the portal. Sessions are revoked per account or all at once. Stripe's billing portal sessions
work the same way."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from sidecar.http.auth import ADMIN, CALLER, NONE, PORTAL_TOKEN, portal_cookie, portal_secure
from sidecar.http.contract import Audited, Call, Header, Out, Routes
from sidecar.http.portal_models import (
    PortalSessionCreated,
    PortalSessionRequest,
    PortalSessionsRevoked,
)
from sidecar.http.schemas import AccountPath, Path
from sidecar.http.state import LEDGER, PORTAL_SESSIONS, SETTINGS
from sidecar.ledger.portal import SECTIONS
from sidecar.ledger.units import iso

routes = Routes()
PAGE = "/portal/"
# Pages of the portal are never cached, and their address (a link's secret, a session's
# state) never leaks to the sites they link to.
NO_LEAK = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def portal_base(request: web.Request) -> str:
    """Where the customer's browser reaches the portal: SIDECAR_PORTAL_URL, else the scheme
    and host this request came to."""
    configured = request.app[SETTINGS].portal_url
    return (configured or f"{request.scheme}://{request.host}").rstrip("/")


@routes.route(
    "POST",
    "/v1/accounts/{account}/portal-sessions",
    "A customer-portal session for the account: send the customer to its `url` (it opens once)",
    tag="portal",
    auth=PORTAL_TOKEN,
    audit=Audited("portal_session.create", target="id", secret=("url",)),
    params=AccountPath,
    body=PortalSessionRequest,
    body_required=False,
    responses={201: Out(PortalSessionCreated, "the session and its link")},
    errors={404: "`unknown_account`", 503: None},
)
async def create_portal_session(
    call: Call[AccountPath, None, PortalSessionRequest],
) -> PortalSessionCreated:
    account, req = call.path.account, call.body
    await call.app[LEDGER].balance(account)  # UnknownAccount before anything is stored
    caller = call.request[CALLER]
    sections = req.sections or list(SECTIONS)
    new = await call.app[PORTAL_SESSIONS].create(
        account,
        return_url=req.return_url,
        locale=req.locale,
        sections=sections,
        created_by=caller.token_id,
    )
    s = new.session
    return PortalSessionCreated(
        id=s.id,
        account=account,
        url=f"{portal_base(call.request)}/portal/s/{new.link}",
        expires_at=iso(s.link_expires_at) or "",
        session_ttl_s=call.app[SETTINGS].portal_session_ttl_s,
        return_url=s.return_url,
        locale=s.locale,
        sections=list(s.sections),
    )


@routes.route(
    "DELETE",
    "/v1/accounts/{account}/portal-sessions",
    "End every portal session of the account (opened or not) at once",
    tag="portal",
    auth=PORTAL_TOKEN,
    audit=Audited("portal_session.revoke"),
    params=AccountPath,
    responses={200: Out(PortalSessionsRevoked, "revoked")},
    errors={404: "`unknown_account`", 503: None},
)
async def revoke_account_sessions(
    call: Call[AccountPath, None, None],
) -> PortalSessionsRevoked:
    await call.app[LEDGER].balance(call.path.account)  # UnknownAccount: nothing to revoke
    await call.app[PORTAL_SESSIONS].revoke(call.path.account)
    return PortalSessionsRevoked(account=call.path.account, revoked=True)


@routes.route(
    "DELETE",
    "/v1/portal-sessions",
    "End every portal session of every account at once",
    tag="portal",
    auth=ADMIN,
    audit=Audited("portal_session.revoke_all"),
    responses={200: Out(PortalSessionsRevoked, "revoked")},
    errors={503: None},
)
async def revoke_all_sessions(call: Call[None, None, None]) -> PortalSessionsRevoked:
    await call.app[PORTAL_SESSIONS].revoke(None)
    return PortalSessionsRevoked(account=None, revoked=True)


# What browsers send with a request made ahead of the customer's click: Sec-Purpose
# (prefetch, prerender: Fetch Metadata), Purpose (Chrome before it), X-Purpose (Safari's
# previews), X-Moz (Firefox's prefetch).
SPECULATIVE = ("Sec-Purpose", "Purpose", "X-Purpose", "X-Moz")


class LinkPath(Path):
    link: str  # checked by PortalSessions.open: anything else is a link that does not open


EXPIRED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Link expired</title></head><body>
<main><h1>This link has expired</h1>
<p>Portal links work once and only for a few minutes. Go back to the app you came from and open
billing again.</p></main></body></html>
"""


@routes.route(
    "GET",
    "/portal/s/{link}",
    "Open a portal session's link (once): sets the session cookie, then to the portal",
    tag="portal",
    auth=NONE,
    params=LinkPath,
    responses={
        303: Out(
            None,
            "opened: the session cookie is set; to the portal",
            headers={
                "Location": Header(str, "the portal"),
                "Set-Cookie": Header(str, "the session: HttpOnly, SameSite (docs/portal.md)"),
            },
        ),
        401: Out(
            None,
            "a link that is forged, already used, expired or revoked: a page saying so",
            content={"text/html": {"type": "string"}},
        ),
    },
)
async def open_link(call: Call[LinkPath, None, None]) -> web.Response:
    request = call.request
    # an <img>, a script or a prefetch is not the customer opening their link; a
    # navigation's prefetch or prerender says document, and names its purpose
    dest = request.headers.get("Sec-Fetch-Dest")
    speculative = any(h in request.headers for h in SPECULATIVE)
    # a frame only where embedding is configured: elsewhere its cookie (SameSite=Lax) is
    # refused in a cross-site frame and the pages refuse to be framed, so it would only
    # spend the link
    windows = ("document", "iframe") if call.app[SETTINGS].portal_frame_ancestors else ("document",)
    opened = None
    if dest in (None, *windows) and not speculative:
        opened = await call.app[PORTAL_SESSIONS].open(call.path.link)
    if opened is None:
        return web.Response(
            status=401, text=EXPIRED_PAGE, content_type="text/html", headers=NO_LEAK
        )
    _, cookie = opened
    response = web.Response(status=303, headers={"Location": landing(request), **NO_LEAK})
    response.headers.add("Set-Cookie", session_cookie(request, cookie))
    return response


def landing(request: web.Request) -> str:
    """Where an opened link lands: the portal under SIDECAR_PORTAL_URL's path (a proxy may
    serve the sidecar under one), on the scheme and host the browser came by."""
    configured = request.app[SETTINGS].portal_url
    return (urlsplit(configured).path.rstrip("/") if configured else "") + PAGE


def session_cookie(request: web.Request, value: str, *, max_age: int | None = None) -> str:
    """The Set-Cookie value of the session's cookie (``""`` and 0: its removal). Written by
    hand: Python's http.cookies (before 3.14) refuses the Partitioned attribute."""
    settings = request.app[SETTINGS]
    attributes = [
        f"{portal_cookie(settings, request)}={value}",  # [A-Za-z0-9._-]: no quoting needed
        f"Max-Age={settings.portal_session_ttl_s if max_age is None else max_age}",
        "Path=/",
        "HttpOnly",
    ]
    if portal_secure(settings, request):
        attributes.append("Secure")
    if settings.portal_frame_ancestors is not None:
        # sent inside the business's cross-site iframe; Partitioned: a cookie of that
        # embedding only, which browsers that block third-party cookies still allow
        attributes += ["SameSite=None", "Partitioned"]
    else:
        attributes.append("SameSite=Lax")
    return "; ".join(attributes)


def cleared_cookie(request: web.Request) -> str:
    """The Set-Cookie that signs the browser out (the session itself is ended by the caller)."""
    return session_cookie(request, "", max_age=0)
