"""The customer portal's pages (sidecar/portal/): ``GET /portal/`` serves the page, which calls
the portal API (sidecar/http/portal_api.py) with the session cookie its link set; ``GET
/portal/{name}`` its script and style. Loading them needs no session (they hold no data).

Headers: a strict Content-Security-Policy (scripts, styles and fetches from this origin only,
no inline script or style; images from here, ``data:`` and the logo's origin when
``SIDECAR_PORTAL_LOGO_URL`` is set), framable only by ``SIDECAR_PORTAL_FRAME_ANCESTORS``
(else by nobody), no referrer (the page's URL may carry a Checkout Session id), and the page
never cached (its script and style are revalidated on every load).
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

from aiohttp import web

from sidecar.http.auth import NONE
from sidecar.http.contract import Call, Out, Routes
from sidecar.http.state import SETTINGS
from sidecar.portal import ASSETS, asset
from sidecar.settings import Settings

portal_page_routes = Routes()


@functools.cache
def _headers(logo_url: str | None, frame_ancestors: str | None) -> dict[str, str]:
    img = ["'self'", "data:"]
    if logo_url:
        parts = urlsplit(logo_url)
        img.append(f"{parts.scheme}://{parts.netloc}")
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            f"img-src {' '.join(img)}",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors " + (frame_ancestors or "'none'"),
        ]
    )
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    if not frame_ancestors:
        headers["X-Frame-Options"] = "DENY"  # for browsers without frame-ancestors
    return headers


def headers(settings: Settings) -> dict[str, str]:
    """The headers of the portal's files under ``settings`` (the page adds no-store)."""
    return _headers(settings.portal_logo_url, settings.portal_frame_ancestors)


def _file(request: web.Request, name: str, **more: str) -> web.Response:
    return web.Response(
        body=asset(name),
        content_type=ASSETS[name],
        charset="utf-8",
        headers=headers(request.app[SETTINGS]) | more,
    )


@portal_page_routes.route(
    "GET",
    "/portal/",
    "The customer portal (HTML; it calls the portal API with the session its link set)",
    operation_id="portal_page",
    tag="service",
    auth=NONE,
    responses={200: Out(None, "the page", content={"text/html": {"type": "string"}})},
)
async def portal_page(call: Call[None, None, None]) -> web.Response:
    # no-store: the page may be opened with ?purchase=<Checkout Session id>
    return _file(call.request, "index.html", **{"Cache-Control": "no-store"})


# The page's assets and the redirect are routes of the app, not of the API: not documented.
@portal_page_routes.route(
    "GET", "/portal", "to the page", tag="service", auth=NONE, responses={}, documented=False
)
async def portal_slash(call: Call[None, None, None]) -> web.Response:
    # Relative, as every link of the page (so it also works behind a path prefix).
    raise web.HTTPFound("portal/")


@portal_page_routes.route(
    "GET", "/portal/{name}", "an asset", tag="service", auth=NONE, responses={}, documented=False
)
async def portal_asset(call: Call[None, None, None]) -> web.Response:
    name = call.request.match_info["name"]
    if name == "index.html" or name not in ASSETS:
        raise web.HTTPNotFound()
    return _file(call.request, name)
