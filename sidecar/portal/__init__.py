"""The customer portal's static files, shipped as package data: ``index.html``, its ES modules
(``portal.js`` the entry, which imports the others: one per section, the page's frame, the
API, the forms) and ``portal.css`` (all building on sidecar/webui/). No build step;
sidecar/http/portal_pages.py serves them under ``/portal/``."""

from __future__ import annotations

from functools import cache
from importlib import resources

# The files the portal is made of, with their content types: nothing else is served.
ASSETS = {
    "index.html": "text/html",
    "portal.js": "text/javascript",  # the entry; each section's module and what they share:
    "page.js": "text/javascript",
    "api.js": "text/javascript",
    "forms.js": "text/javascript",
    "balance.js": "text/javascript",
    "buy.js": "text/javascript",
    "usage.js": "text/javascript",
    "transactions.js": "text/javascript",
    "keys.js": "text/javascript",
    "limits.js": "text/javascript",
    "topup.js": "text/javascript",
    "billing.js": "text/javascript",
    "portal.css": "text/css",
}


@cache
def asset(name: str) -> bytes:
    """The bytes of one of ``ASSETS`` (read once)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files(__name__).joinpath(name).read_bytes()
