"""Plain-text tables and the small value formats the CLI's listings share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import click


def echo_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Left-aligned columns separated by two spaces; None prints as '-'."""
    cells = [list(header)] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def seg(value: str) -> str:
    """One URL path segment, percent-encoded so an id can never change the route."""
    return quote(value, safe="")


def rate_limit_text(rl: dict[str, int] | None) -> str:
    return f"{rl['requests']}/{rl['period_ms']}ms (burst {rl['burst']})" if rl else "-"
