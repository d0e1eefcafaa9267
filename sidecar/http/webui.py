"""The design system the operator console and the customer portal share (sidecar/webui/):
``GET /ui/{name}`` serves ``ui.js`` and ``base.css``, once for both pages. No token (they hold
no data); the headers of the console's assets (strict CSP, nosniff, revalidated on every load
so an upgraded sidecar serves its new files at once)."""

from __future__ import annotations

from aiohttp import web

from sidecar.http.auth import NONE
from sidecar.http.console import HEADERS
from sidecar.http.contract import Call, Routes
from sidecar.webui import ASSETS, asset

webui_routes = Routes()


@webui_routes.route(
    "GET", "/ui/{name}", "a shared asset", tag="service", auth=NONE, responses={}, documented=False
)
async def ui_asset(call: Call[None, None, None]) -> web.Response:
    name = call.request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(
        body=asset(name), content_type=ASSETS[name], charset="utf-8", headers=HEADERS
    )
