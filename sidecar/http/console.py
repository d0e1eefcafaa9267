"""The operator console: ``GET /console`` serves a small read-only web page (sidecar/console/)
that asks for the admin token, keeps it in the tab's sessionStorage and calls the admin API
with it: accounts, balances and buckets, holds, transactions, usage, packages, dead letters.

Loading the page needs no token (it holds no data); every call it makes is authorized like
any other. Headers: a strict Content-Security-Policy (scripts, styles and fetches from this
origin only, no inline script or style, no framing), no referrer, revalidated on every
load (an upgraded sidecar serves its new console at once).
"""

from __future__ import annotations

from aiohttp import web

from sidecar.console import ASSETS, asset
from sidecar.http.auth import NONE
from sidecar.http.contract import Call, Out, Routes

console_routes = Routes()

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> web.Response:
    return web.Response(
        body=asset(name), content_type=ASSETS[name], charset="utf-8", headers=HEADERS
    )


@console_routes.route(
    "GET",
    "/console",
    "The operator console (HTML; it asks for the admin token, loading it needs none)",
    operation_id="console",
    tag="service",
    auth=NONE,
    responses={200: Out(None, "the page", content={"text/html": {"type": "string"}})},
)
async def console_page(call: Call[None, None, None]) -> web.Response:
    return _file("index.html")


# The page's assets and the redirect are routes of the app, not of the API: not documented.
@console_routes.route(
    "GET", "/console/", "to the page", tag="service", auth=NONE, responses={}, documented=False
)
async def console_slash(call: Call[None, None, None]) -> web.Response:
    # The page's links are relative to /console (so it also works behind a path prefix).
    raise web.HTTPFound("../console")


@console_routes.route(
    "GET", "/console/{name}", "an asset", tag="service", auth=NONE, responses={}, documented=False
)
async def console_asset(call: Call[None, None, None]) -> web.Response:
    name = call.request.match_info["name"]
    if name == "index.html" or name not in ASSETS:
        raise web.HTTPNotFound()
    return _file(name)
