"""The ``token`` outbox entry (sidecar/lua/token.lua): one of the sidecar's own API tokens
created, rotated or revoked, and its decoder for the SQL writer, as sidecar/ledger/outbox.py has
the other kinds'. Checked as strictly as token.lua writes it: the SQL ledger keeps the record as
columns, and ``rebuild`` must be able to put it back as it was (rebuild_tokens.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.ledger.outbox import PoisonEntry, int_field, text_field
from sidecar.ledger.tokens import SCOPES, TokenRecord
from sidecar.ledger.units import MAX_TIMESTAMP_MS

TOKEN_ID = re.compile(r"\A[a-z0-9]{1,64}\Z")  # what Tokens.create draws (sidecar/ledger/tokens.py)
TOKEN_HASH = re.compile(r"\A[0-9a-f]{64}\Z")
ACCOUNT_PREFIX = re.compile(r"\A[A-Za-z0-9._:-]{1,128}\Z")  # token.lua's id_arg
# Every field of the record token.lua writes (nulls included): a record with fewer or more
# could not be put back as it was (rebuild_tokens.py re-encodes it from its columns).
TOKEN_FIELDS = frozenset(
    {
        "id",
        "name",
        "scopes",
        "account_prefix",
        "hash",
        "previous",
        "created_at",
        "rotated_at",
        "revoked_at",
    }
)
MAX_PREVIOUS = 8  # token.lua's


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """A token created, rotated or revoked (kind ``token``, sidecar/lua/token.lua; shard 0's
    entry, one per change)."""

    id: str  # the change's transaction id
    token_id: str
    ts: int
    record: dict[str, Any]  # after the change, as token.lua wrote it (no secret)
    token: TokenRecord  # the same, read


def token(e: Mapping[str, Any]) -> TokenEntry:
    """A decoded ``token`` entry as its model; PoisonEntry, naming the problem, if any field
    is missing, of the wrong type or out of range (the record must read as a token's, with
    exactly the fields token.lua writes)."""
    token_id = text_field(e, "token_id", 64)
    if not TOKEN_ID.match(token_id):
        raise PoisonEntry(f"field token_id is not a token id: {token_id[:40]!r}")
    txid = text_field(e, "id", 64)
    ts = int_field(e, "ts", 0, MAX_TIMESTAMP_MS)
    r = e.get("record")
    if not isinstance(r, dict):
        raise PoisonEntry("field record is not an object")
    if set(r) != TOKEN_FIELDS:
        odd = sorted(set(r) ^ TOKEN_FIELDS)
        raise PoisonEntry(f"record's fields are not token.lua's: {', '.join(odd)[:80]}")
    if r["id"] != token_id:
        raise PoisonEntry("record's id is not the entry's token_id")
    name = r["name"]
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or "\x00" in name:
        raise PoisonEntry("record's name is not 1-200 characters (no NUL)")
    scopes = r["scopes"]
    if not isinstance(scopes, list) or not scopes:
        raise PoisonEntry("record's scopes is not a non-empty list")
    for s in scopes:
        if s not in SCOPES:
            raise PoisonEntry(f"record's scopes: unknown scope {str(s)[:40]!r}")
    if len(set(scopes)) != len(scopes):
        raise PoisonEntry("record's scopes repeat a scope")
    prefix = r["account_prefix"]
    if prefix is not None and not (isinstance(prefix, str) and ACCOUNT_PREFIX.match(prefix)):
        raise PoisonEntry("record's account_prefix is not null or an account id prefix")
    if not isinstance(r["hash"], str) or not TOKEN_HASH.match(r["hash"]):
        raise PoisonEntry("record's hash is not 64 lowercase hex digits")
    previous = r["previous"]
    if not isinstance(previous, list) or len(previous) > MAX_PREVIOUS:
        raise PoisonEntry(f"record's previous is not a list of at most {MAX_PREVIOUS}")
    for p in previous:
        if not (isinstance(p, dict) and set(p) == {"hash", "expires"}):
            raise PoisonEntry("record's previous has an element that is not {hash, expires}")
        if not isinstance(p["hash"], str) or not TOKEN_HASH.match(p["hash"]):
            raise PoisonEntry("record's previous has a hash that is not 64 lowercase hex digits")
        int_field(p, "expires", 0, MAX_TIMESTAMP_MS)
    int_field(r, "created_at", 0, MAX_TIMESTAMP_MS)
    for when in ("rotated_at", "revoked_at"):
        if r[when] is not None:
            int_field(r, when, 0, MAX_TIMESTAMP_MS)
    try:
        record = TokenRecord.from_json(orjson.dumps(r))
    except (KeyError, TypeError, ValueError, AttributeError) as x:
        raise PoisonEntry(f"record is not a token's: {type(x).__name__}: {x}") from None
    return TokenEntry(txid, token_id, ts, r, record)
