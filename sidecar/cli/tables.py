"""Plain-text tables and the small value formats the CLI's listings share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import click

# What a cell must not send to the operator's terminal as it is: C0 and C1 controls (escape
# sequences can rewrite the screen, set the title, even the clipboard), DEL and the line
# separators. Descriptions and request ids come from API callers and their clients.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], str(value))


def echo_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Left-aligned columns separated by two spaces; None prints as '-'; control characters
    escaped (``\\x1b``)."""
    cells = [list(header)] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def seg(value: str) -> str:
    """One URL path segment, percent-encoded so an id can never change the route."""
    return quote(value, safe="")


def rate_limit_text(rl: dict[str, int] | None) -> str:
    return f"{rl['requests']}/{rl['period_ms']}ms (burst {rl['burst']})" if rl else "-"
