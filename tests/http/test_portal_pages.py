"""The customer portal's page and assets (GET /portal/, /portal/{name}) and the design system
it shares with the console (GET /ui/{name}): content types, a strict CSP built from the
portal settings (the logo's origin in img-src, frame-ancestors), nothing else served, every
module the scripts import served, and scripts that insert data as text only. The page in a
browser: tests/http/test_portal_ui.py."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar import portal, webui
from sidecar.http.app import create_app
from sidecar.settings import Settings

Client = TestClient[web.Request, web.Application]


def directives(csp: str) -> dict[str, str]:
    return dict(d.strip().split(" ", 1) for d in csp.split(";"))


async def test_portal_page_under_a_strict_csp(client: Client) -> None:
    r = await client.get("/portal/")
    assert r.status == 200
    assert r.content_type == "text/html" and r.charset == "utf-8"
    d = directives(r.headers["Content-Security-Policy"])
    assert d["default-src"] == "'none'"
    assert d["script-src"] == "'self'" and d["style-src"] == "'self'"
    assert d["connect-src"] == "'self'" and d["img-src"] == "'self' data:"
    assert d["base-uri"] == "'none'" and d["form-action"] == "'self'"
    assert d["frame-ancestors"] == "'none'" and r.headers["X-Frame-Options"] == "DENY"
    assert "unsafe" not in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["Cache-Control"] == "no-store"
    page = await r.text()
    assert '<script type="module" src="portal.js"></script>' in page
    assert '<link rel="stylesheet" href="../ui/base.css">' in page
    # No inline script or style: the CSP would block it.
    assert page.count("<script") == 1 and "<style" not in page and "style=" not in page
    r = await client.get("/portal", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "portal/"


async def test_branding_settings_shape_the_csp(settings: Settings, redis: Any) -> None:
    s = settings.model_copy(
        update={
            "portal_logo_url": "https://cdn.example.com/brand/logo.svg",
            "portal_frame_ancestors": "https://app.example.com https://*.example.org:8443",
        }
    )
    async with TestClient(TestServer(create_app(s))) as c:
        r = await c.get("/portal/")
        d = directives(r.headers["Content-Security-Policy"])
        assert d["img-src"] == "'self' data: https://cdn.example.com"
        assert d["frame-ancestors"] == "https://app.example.com https://*.example.org:8443"
        assert "X-Frame-Options" not in r.headers  # it would forbid the embedding


SCRIPTS = sorted(n for n in portal.ASSETS if n.endswith(".js"))
IMPORT = re.compile(r'^import [^;]*? from "([^"]+)";', re.M | re.S)


def test_every_portal_module_is_an_asset_and_every_import_one() -> None:
    """Each .js file of the portal is served (and nothing else is listed), and each module a
    script imports is one the server serves, at the URL the import names."""
    files = {p.name for p in resources.files(portal).iterdir() if p.name.endswith(".js")}
    assert set(SCRIPTS) == files
    served = {f"/portal/{n}" for n in portal.ASSETS} | {f"/ui/{n}" for n in webui.ASSETS}
    for name in SCRIPTS:
        text = portal.asset(name).decode()
        imports = IMPORT.findall(text)
        assert imports, name  # each builds on ui.js at least
        for spec in imports:
            assert spec.startswith(("./", "../ui/")), (name, spec)
            url = "/portal/" + spec[2:] if spec.startswith("./") else "/ui/" + spec[6:]
            assert url in served, (name, spec)


async def test_assets_have_their_types_and_the_scripts_write_text_only(client: Client) -> None:
    assets = [(f"/portal/{n}", "text/javascript") for n in SCRIPTS] + [
        ("/portal/portal.css", "text/css"),
        ("/ui/ui.js", "text/javascript"),
        ("/ui/base.css", "text/css"),
    ]
    for path, ctype in assets:
        r = await client.get(path)
        assert r.status == 200, path
        assert r.content_type == ctype and r.charset == "utf-8"
        assert "Content-Security-Policy" in r.headers
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        if ctype == "text/javascript":
            js = await r.text()
            assert "innerHTML" not in js and "outerHTML" not in js, path
            assert "insertAdjacentHTML" not in js and "eval(" not in js, path
            assert "document.write" not in js and "new Function" not in js, path
    # The console uses the same design system.
    console = await (await client.get("/console/console.js")).text()
    assert 'from "../ui/ui.js"' in console


async def test_nothing_else_is_served(client: Client) -> None:
    for path in (
        "/portal/index.html",
        "/portal/app.js",
        "/portal/ui.js",  # the design system's, served under /ui/ only
        "/portal/Portal.js",
        "/portal/usage.js.map",
        "/portal/..%2fportal.js",
        "/portal/..%2fui%2fui.js",
        "/ui/index.html",
        "/ui/console.js",
        "/ui/..%2fui.js",
    ):
        r = await client.get(path)
        assert r.status == 404, path
        assert (await r.json())["error"]["code"] == "not_found"
