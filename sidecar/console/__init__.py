"""The operator console's static files, shipped as package data: ``index.html``, the one
JavaScript module ``console.js`` and ``console.css``. No build step; sidecar/http/console.py
serves them under ``/console``."""

from __future__ import annotations

from functools import cache
from importlib import resources

# The files the console is made of, with their content types: nothing else is served.
ASSETS = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}


@cache
def asset(name: str) -> bytes:
    """The bytes of one of ``ASSETS`` (read once)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files(__name__).joinpath(name).read_bytes()
