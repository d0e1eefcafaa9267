"""Spending limits' windows as the Lua scripts compute them (through the Ledger, with a fake
clock), against an independent computation with Python's datetime: UTC calendar boundaries,
weeks from Monday, windows of several intervals counted from 1970, leap years, year ends."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Literal

from sidecar.ledger import windows
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.results import Allowed, SpendLimit, SpendLimited
from sidecar.ledger.units import MAX_TIMESTAMP_MS
from tests.conftest import FakeClock
from tests.model import period_of as model_period_of

DAY = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MONDAY_0 = datetime(1969, 12, 29, tzinfo=UTC)
Unit = Literal["day", "week", "month", "year"]


def _ms(d: datetime) -> int:
    return (d - EPOCH) // timedelta(milliseconds=1)


def window_end(unit: Unit, count: int, now: int) -> int | None:
    """The end of the window holding ``now``; None past year 9999 (datetime's range)."""
    t = EPOCH + timedelta(milliseconds=now)
    if unit in ("day", "week"):
        step = timedelta(days=1 if unit == "day" else 7)
        origin = EPOCH if unit == "day" else MONDAY_0
        i = (t - origin) // step
        return _ms(origin + (i - i % count + count) * step)
    months = count if unit == "month" else 12 * count
    i = (t.year - 1970) * 12 + t.month - 1
    e = i - i % months + months
    if 1970 + e // 12 > 9999:
        return None
    return _ms(datetime(1970 + e // 12, e % 12 + 1, 1, tzinfo=UTC))


async def test_window_ends_match_the_utc_calendar_at_random_times_and_boundaries(
    ledger: Ledger, clock: FakeClock
) -> None:
    rng = random.Random(20)
    edges = [
        datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),  # a leap day's last ms
        datetime(2024, 3, 1, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),  # December -> January
        datetime(2027, 1, 1, tzinfo=UTC),
        datetime(2100, 2, 28, 12, tzinfo=UTC),  # not a leap year
        datetime(2026, 12, 7, tzinfo=UTC),  # a Monday
        datetime(2026, 12, 6, 23, 59, 59, 999000, tzinfo=UTC),  # a Sunday's last ms
    ]
    units: tuple[Unit, ...] = ("day", "week", "month", "year")
    wrong = []
    for n, (unit, count) in enumerate((u, c) for u in units for c in (1, 2, 3, 7, 12, 1000)):
        account = f"a{n}"
        clock.now = 0
        await ledger.configure_account(account, spend_limit=SpendLimit(5, unit, count))
        times = [rng.randrange(0, 253402300799999) for _ in range(40)]
        times += [_ms(d) for d in edges] + [0, 1, 4 * DAY - 1, 4 * DAY]
        for t in sorted(times):  # (an account's clock never goes back)
            clock.now = t
            b = await ledger.balance(account)
            # past year 9999: reported as the latest time the API can say
            want = window_end(unit, count, t) or MAX_TIMESTAMP_MS
            assert b.spend is not None
            if b.spend.ends_at != want:
                wrong.append((unit, count, t, b.spend.ends_at, want))
    assert wrong == []


async def test_a_weekly_limit_is_enforced_in_the_first_days_of_1970(
    ledger: Ledger, clock: FakeClock
) -> None:
    # week 0 starts on Monday 1969-12-29, before any time the ledger takes: its window is
    # counted from 1970-01-01 (a negative start did not parse back, so nothing was counted)
    clock.now = DAY
    await ledger.configure_account("w", overdraft_limit=100, spend_limit=SpendLimit(5, "week"))
    assert (await ledger.deduct("w", 4, "k1")).allowed
    refused = await ledger.deduct("w", 4, "k2")
    assert isinstance(refused, SpendLimited) and refused.window.spent == 4
    assert refused.window.ends_at == 4 * DAY


async def test_a_hold_placed_before_a_limit_was_set_again_gives_nothing_back_to_it(
    ledger: Ledger, clock: FakeClock
) -> None:
    # a limit counts from when it is set: releasing a hold the earlier limit counted (same
    # window start) must not make room under the new one
    month = SpendLimit(10, "month")
    await ledger.configure_account("a", spend_limit=month)
    await ledger.grant("a", "g", 1000)
    await ledger.hold("a", "h1", 8, 3_600_000)
    clock.advance(1)  # (removed and set again in the hold's millisecond: see spend_reset)
    await ledger.update_account("a", spend_limit=None)
    await ledger.update_account("a", spend_limit=month)
    assert (await ledger.deduct("a", 6, "k1")).allowed
    await ledger.release("a", "h1")
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 6
    refused = await ledger.deduct("a", 5, "k2")
    assert isinstance(refused, SpendLimited) and refused.window.spent == 6


async def test_a_refund_of_a_check_counted_by_an_earlier_limit_gives_nothing_back(
    ledger: Ledger, clock: FakeClock
) -> None:
    # on 2027-01-01 a day's, a month's and a year's windows all start at midnight
    clock.now = _ms(datetime(2027, 1, 1, 5, tzinfo=UTC))
    await ledger.configure_account("a", overdraft_limit=100, spend_limit=SpendLimit(10, "day"))
    first = await ledger.deduct("a", 8, "k0")
    assert isinstance(first, Allowed)
    # another window (of the same start): counted from now, what the day counted stays there
    await ledger.update_account("a", spend_limit=SpendLimit(10, "month"))
    assert (await ledger.deduct("a", 6, "k1")).allowed
    await ledger.refund("a", "r1", first.transaction_id)
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 6
    # another window set in the same millisecond as a check the limit it replaces counted
    second = await ledger.deduct("a", 4, "k2")
    assert isinstance(second, Allowed)
    await ledger.update_account("a", spend_limit=SpendLimit(10, "year"))
    assert (await ledger.deduct("a", 3, "k3")).allowed
    await ledger.refund("a", "r2", second.transaction_id)
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 3
    # what this limit counted is given back to it, in its window
    clock.advance(1)
    third = await ledger.deduct("a", 5, "k4")
    assert isinstance(third, Allowed)
    await ledger.refund("a", "r3", third.transaction_id, 2)
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 6


def test_plan_periods_in_python_match_an_independent_datetime_computation() -> None:
    """sidecar/ledger/windows.py's period_of (the scripts' day-number arithmetic) against the
    reference model's (datetime): anchors on month ends and leap days, at any time of day,
    periods of several intervals, times before and after the anchor; and window() with an
    anchor is that period (from 1970 at the earliest)."""
    rng = random.Random(21)
    anchors = [
        _ms(datetime(2026, 12, 31, 23, 30, tzinfo=UTC)),
        _ms(datetime(2024, 2, 29, 10, tzinfo=UTC)),
        _ms(datetime(2027, 1, 31, tzinfo=UTC)),
        _ms(datetime(1970, 1, 1, tzinfo=UTC)),
    ] + [rng.randrange(0, _ms(datetime(2200, 1, 1, tzinfo=UTC))) for _ in range(200)]
    units: tuple[Unit, ...] = ("day", "week", "month", "year")
    wrong: list[tuple[object, ...]] = []
    for anchor in anchors:
        for _ in range(10):
            unit, count = rng.choice(units), rng.choice((1, 2, 3, 7, 12))
            t = anchor + rng.randrange(-5 * 366 * DAY, 20 * 366 * DAY)
            if t < 0:
                continue
            got = windows.period_of(anchor, unit, count, t)
            if got != model_period_of(anchor, unit, count, t) or not got[0] <= t < got[1]:
                wrong.append((anchor, unit, count, t, got))
            limit = SpendLimit(1, unit, count)
            if windows.window(limit, t, anchor) != (max(0, got[0]), got[1]):
                wrong.append((anchor, unit, count, t, "window"))
    assert wrong == []
