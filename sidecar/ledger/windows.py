"""Spending-limit windows in Python, for reads that show what a key or an account spent in its
current window: the same calendar arithmetic as ``spend_window`` in sidecar/lua/_lib.lua (the
scripts decide; this only reports). Windows of ``interval_count`` intervals, aligned to UTC
calendar boundaries counted from 1970-01-01; weeks start on Monday. An account on a plan
counts its windows from the plan's anchor instead (:func:`period_of`, as ``period_of`` in
_lib.lua computes a plan's periods)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from sidecar.ledger.results import SpendLimit, SpendWindow
from sidecar.ledger.units import MAX_TIMESTAMP_MS

DAY_MS = 86_400_000

Interval = Literal["day", "week", "month", "year"]


def window(limit: SpendLimit, now_ms: int, anchor: int | None = None) -> tuple[int, int | None]:
    """The start and end (ms; None: never) of the window of ``limit`` that holds ``now_ms``:
    from 1970 (``anchor`` None), else the period of ``anchor`` holding it (never before 0)."""
    n = limit.interval_count
    if limit.interval is None:
        return 0, None
    if anchor is not None:
        start, end, _ = period_of(anchor, limit.interval, n, now_ms)
        return max(0, start), end
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
    return _days_from_civil(1970 + i // 12, i % 12 + 1, 1) * DAY_MS


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days from 1970-01-01 to the date (proleptic Gregorian; _lib.lua's days_from_civil)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """The date (year, month, day) ``z`` days from 1970-01-01 (_lib.lua's civil_from_days)."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, doy - (153 * mp + 2) // 5 + 1


def _month_start(ay: int, am: int, ad: int, tod: int, n: int) -> int:
    """The anchor's day (clamped to the month's last) and time of day ``tod`` in the n-th
    month after the anchor's (year ``ay``, month ``am``, day ``ad``), in ms."""
    i = ay * 12 + am - 1 + n
    y, m = i // 12, i % 12 + 1
    first = _days_from_civil(y, m, 1)
    days = _days_from_civil(y + (m == 12), m % 12 + 1, 1) - first
    return (first + min(ad, days) - 1) * DAY_MS + tod


def period_of(anchor: int, interval: Interval, count: int, t: int) -> tuple[int, int, int]:
    """The period of ``count`` intervals counted from ``anchor`` (ms) that holds ``t``: its
    start, its end (ms) and its index k (anchor + k periods; negative before the anchor).
    Days and weeks are fixed lengths; months and years are calendar months on the anchor's
    day, clamped to the month's end (Jan 31 gives Feb 28, then Mar 31), at the anchor's time
    of day (docs/plans.md). The same arithmetic as ``period_of`` in sidecar/lua/_lib.lua."""
    if interval in ("day", "week"):
        length = count * (7 if interval == "week" else 1) * DAY_MS
        k = (t - anchor) // length
        return anchor + k * length, anchor + (k + 1) * length, k
    months = count if interval == "month" else 12 * count
    aday = anchor // DAY_MS
    tod = anchor - aday * DAY_MS
    ay, am, ad = _civil_from_days(aday)
    ty, tm, _ = _civil_from_days(t // DAY_MS)
    k = ((ty - ay) * 12 + tm - am) // months
    s = _month_start(ay, am, ad, tod, k * months)
    if s > t:
        k -= 1
        s = _month_start(ay, am, ad, tod, k * months)
    return s, _month_start(ay, am, ad, tod, (k + 1) * months), k


def current(
    limit: SpendLimit, state: str | None, now_ms: int, anchor: int | None = None
) -> SpendWindow:
    """The limit's current window and what was spent in it, from its stored state
    (``from:spent``, from being when the count began; a state from another window counts as
    nothing spent). ``anchor``: an account on a plan's (its windows count from there)."""
    start, end = window(limit, now_ms, anchor)
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
