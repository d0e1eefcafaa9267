"""The outbox entry format, in one place for the scripts' readers (the SQL writer, the admin
API's dead-letter listing, tests).

The Lua scripts (``outbox_add`` in lua/_lib.lua) append each entry with one field, ``d``: a
JSON object with exact integers. Its ``kind`` says what it records: ``txn`` (a ledger
transaction), ``account`` (an account's settings) or ``key`` (an API key's record). One field
instead of one per value: the writer decodes an entry in one C call instead of converting
a dozen strings, and Redis stores and sends fewer, larger values.

A dead letter moved back into the outbox also carries ``orig_id``, its first entry id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.redis_client import text as _text

FIELD = "d"
ORIG_ID = "orig_id"


def decode(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> dict[str, Any]:
    """The entry's JSON object; ValueError if the entry has none."""
    raw: Any = fields.get(FIELD)  # type: ignore[call-overload]
    if raw is None:
        raw = fields.get(FIELD.encode())  # type: ignore[call-overload]
    if raw is None:
        raise ValueError(f"entry has no field {FIELD!r}")
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError(f"field {FIELD!r} is not JSON") from None
    if not isinstance(entry, dict):
        raise ValueError(f"field {FIELD!r} is not a JSON object")
    return entry


def orig_id(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> str | None:
    """The first id of an entry moved back from the dead letters (None for others)."""
    v: Any = fields.get(ORIG_ID) or fields.get(ORIG_ID.encode())  # type: ignore[call-overload]
    return _text(v) if v else None
