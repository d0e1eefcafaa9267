"""The customer portal's static files, shipped as package data: ``index.html``, the one
JavaScript module ``portal.js`` and ``portal.css`` (both build on sidecar/webui/). No build
step; sidecar/http/portal_pages.py serves them under ``/portal/``."""

from __future__ import annotations

from functools import cache
from importlib import resources

# The files the portal is made of, with their content types: nothing else is served.
ASSETS = {
    "index.html": "text/html",
    "portal.js": "text/javascript",
    "portal.css": "text/css",
}


@cache
def asset(name: str) -> bytes:
    """The bytes of one of ``ASSETS`` (read once)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files(__name__).joinpath(name).read_bytes()
