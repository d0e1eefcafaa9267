"""The ledger's units, declared once: credit and time bounds, and the conversions between unix
milliseconds (how the scripts, the outbox and SQL's ``*_ms`` columns count time), aware UTC
datetimes (SQL's timestamp columns) and RFC 3339 text (the API, logs and the command line).

The Lua scripts keep their own copies of the bounds (sidecar/lua/_lib.lua ``MAXINT``, ``MAX_TIME``):
Redis cannot import Python; tests/test_units.py checks that both say the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import overload

# Credits are integers in [-(2^53-1), 2^53-1]: exact in Lua's doubles and in JSON readers.
MAX_CREDITS = 2**53 - 1
# The latest accepted timestamp, 9999-12-31T23:59:59.999Z: every stored time stays printable.
MAX_TIMESTAMP_MS = 253_402_300_799_999
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class MissingOffset(ValueError):
    """A timestamp without a UTC offset: it names no instant."""


@lru_cache(maxsize=8192)  # a busy writer sees many transactions per millisecond
def from_ms(ms: int) -> datetime:
    """Unix ms → aware UTC datetime, exactly (no float on the way)."""
    return EPOCH + timedelta(milliseconds=ms)


def to_ms(dt: datetime) -> int:
    """Aware datetime → unix ms, exactly (sub-millisecond parts are floored)."""
    return (dt - EPOCH) // _MS


@overload
def iso(ms: int) -> str: ...
@overload
def iso(ms: None) -> None: ...
def iso(ms: int | None) -> str | None:
    """Unix ms as RFC 3339 UTC with milliseconds (``2030-01-01T00:00:00.000Z``); None stays None."""
    if ms is None:
        return None
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")[:-6] + "Z"


def iso_seconds(seconds: float) -> str:
    """Unix seconds (a float, as ``time.time()`` and log records give) as :func:`iso` does,
    rounded to the microsecond first as ``datetime.fromtimestamp`` does."""
    return iso(round(seconds * 1_000_000) // 1000)


def parse_rfc3339(text: str) -> int:
    """RFC 3339 text with an offset (``Z`` or ``±hh:mm``) as unix ms, exactly.

    ValueError when the text is not a timestamp, MissingOffset (a ValueError) when it has no
    offset. Bounds are the caller's (most allow 0 or 1 to :data:`MAX_TIMESTAMP_MS`)."""
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise MissingOffset("the timestamp has no UTC offset")
    return to_ms(t)
