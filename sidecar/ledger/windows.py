"""Spending-limit windows in Python, for reads that show what a key or an account spent in its
current window: the same calendar arithmetic as ``spend_window`` in sidecar/lua/_lib.lua (the
scripts decide; this only reports). Windows of ``interval_count`` intervals, aligned to UTC
calendar boundaries counted from 1970-01-01; weeks start on Monday."""

from __future__ import annotations

from datetime import UTC, datetime

from sidecar.ledger.results import SpendLimit, SpendWindow
from sidecar.ledger.units import MAX_TIMESTAMP_MS

DAY_MS = 86_400_000


def window(limit: SpendLimit, now_ms: int) -> tuple[int, int | None]:
    """The start and end (ms; None: never) of the window of ``limit`` that holds ``now_ms``."""
    n = limit.interval_count
    if limit.interval is None:
        return 0, None
    day = now_ms // DAY_MS
    if limit.interval == "day":
        s = day - day % n
        return s * DAY_MS, (s + n) * DAY_MS
    if limit.interval == "week":
        w = (day + 3) // 7  # 1969-12-29, a Monday, starts week 0 (counted from 1970-01-01)
        s = w - w % n
        return max(0, (s * 7 - 3) * DAY_MS), ((s + n) * 7 - 3) * DAY_MS
    d = datetime.fromtimestamp(now_ms / 1000, UTC).date()
    months = n if limit.interval == "month" else 12 * n
    i = (d.year - 1970) * 12 + d.month - 1
    s, e = i - i % months, i - i % months + months
    return _month_ms(s), _month_ms(e)


def _month_ms(i: int) -> int:
    """The start (ms) of month ``i`` counted from January 1970; past year 9999 too (which
    ``date`` cannot hold): days from the civil date, as _lib.lua computes them."""
    y, m = 1970 + i // 12, i % 12 + 1
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return (era * 146_097 + doe - 719_468) * DAY_MS


def current(limit: SpendLimit, state: str | None, now_ms: int) -> SpendWindow:
    """The limit's current window and what was spent in it, from its stored state
    (``from:spent``, from being when the count began; a state from another window counts as
    nothing spent)."""
    start, end = window(limit, now_ms)
    spent = 0
    if state:
        s, _, n = state.partition(":")
        if start <= int(s) and (end is None or int(s) < end):
            spent = int(n)
    # (reported as at most the latest time the API can say: 9999-12-31T23:59:59.999Z)
    return SpendWindow(limit, spent, None if end is None else min(end, MAX_TIMESTAMP_MS))


def limit_from_json(v: object) -> SpendLimit | None:
    """A spending limit as records and entries keep it ({credits, interval?, interval_count})."""
    if not isinstance(v, dict):
        return None
    interval = v.get("interval")
    return SpendLimit(int(v["credits"]), interval, int(v.get("interval_count") or 1))


def limit_to_json(limit: SpendLimit | None) -> dict[str, object] | None:
    if limit is None:
        return None
    return {
        "credits": limit.credits,
        "interval": limit.interval,
        "interval_count": limit.interval_count,
    }
