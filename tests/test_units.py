"""The units module: bounds shared with the Lua scripts, exact time conversions."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib.resources import files

import pytest

from sidecar.ledger.units import (
    MAX_CREDITS,
    MAX_TIMESTAMP_MS,
    MissingOffset,
    from_ms,
    iso,
    iso_seconds,
    parse_rfc3339,
    to_ms,
)


def _lua_constant(name: str) -> int:
    source = (files("sidecar.lua") / "_lib.lua").read_text()
    m = re.search(rf"^local {name} = (\d+)", source, re.M)
    assert m, name
    return int(m[1])


def test_the_scripts_use_the_same_bounds() -> None:
    assert _lua_constant("MAXINT") == MAX_CREDITS == 2**53 - 1
    assert _lua_constant("MAX_TIME") == MAX_TIMESTAMP_MS


def test_the_latest_timestamp_is_the_last_millisecond_of_year_9999() -> None:
    assert iso(MAX_TIMESTAMP_MS) == "9999-12-31T23:59:59.999Z"
    assert parse_rfc3339("9999-12-31T23:59:59.999Z") == MAX_TIMESTAMP_MS


@pytest.mark.parametrize("ms", [0, 1, 999, 1_000, 1_767_225_600_123, MAX_TIMESTAMP_MS])
def test_milliseconds_round_trip_exactly(ms: int) -> None:
    assert to_ms(from_ms(ms)) == ms
    assert parse_rfc3339(iso(ms)) == ms


def test_iso_keeps_none() -> None:
    assert iso(None) is None
    assert iso(0) == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2030-01-01T00:00:00Z", 1_893_456_000_000),
        ("2030-01-01T01:00:00+01:00", 1_893_456_000_000),
        ("2030-01-01T00:00:00.0019Z", 1_893_456_000_001),  # floored, never rounded up
    ],
)
def test_rfc3339_with_an_offset_is_an_exact_instant(text: str, ms: int) -> None:
    assert parse_rfc3339(text) == ms


def test_a_timestamp_without_an_offset_is_refused_as_such() -> None:
    with pytest.raises(MissingOffset):
        parse_rfc3339("2030-01-01T00:00:00")
    with pytest.raises(ValueError) as e:
        parse_rfc3339("tomorrow")
    assert not isinstance(e.value, MissingOffset)


@pytest.mark.parametrize("seconds", [0.0, 1.001, 1_767_225_600.1235, 1_767_225_600.9999996])
def test_iso_seconds_reads_like_datetime_fromtimestamp(seconds: float) -> None:
    t = datetime.fromtimestamp(seconds, UTC)
    assert iso_seconds(seconds) == t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
