"""What the operator console and the customer portal share, shipped as package data: ``ui.js``
(text-only DOM helpers, tables, the usage chart, ``Intl`` formats) and ``base.css`` (the design
system: colours, type, controls, panels, tables, the chart). No build step;
sidecar/http/webui.py serves them under ``/ui``, each page imports them from there."""

from __future__ import annotations

from functools import cache
from importlib import resources

# The shared files with their content types: nothing else is served.
ASSETS = {
    "ui.js": "text/javascript",
    "base.css": "text/css",
}


@cache
def asset(name: str) -> bytes:
    """The bytes of one of ``ASSETS`` (read once)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files(__name__).joinpath(name).read_bytes()
