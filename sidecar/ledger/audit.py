"""The audit trail (docs/audit.md): one entry for every change made through the admin API,
saying who (the token), when, which request, what (before and after, secrets masked) and why.

The HTTP layer appends each entry, once the change is answered, to shard 0's outbox as a
``kind=audit`` entry (:meth:`AuditLog.append`); the SQL writer, which alone holds shard 0's
lease, writes them to ``audit_log`` in outbox order and chains them: each row keeps the hash of
the one before (:func:`chain_hash`), so :func:`verify` finds a row edited or deleted in SQL.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.outbox import FIELD
from sidecar.ledger.redis_calls import store_call
from sidecar.ledger.units import MAX_TIMESTAMP_MS
from sidecar.redis.client import RedisClient

GENESIS = "0" * 64  # the prev_hash of the first entry
MASK = "***"
# Fields whose values are secrets wherever they appear in a before/after (API answers name them
# so): the token or key a create or rotate shows once, a webhook signing secret.
SECRET_FIELDS = frozenset({"token", "key", "secret", "signing_secret", "password"})


def mask(value: Any) -> Any:
    """``value`` with every secret field's value replaced by ``***`` (recursively)."""
    if isinstance(value, Mapping):
        return {
            k: MASK if (k in SECRET_FIELDS or str(k).endswith("_secret")) else mask(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change, as the HTTP layer records it."""

    at: int  # ms
    token_id: str
    token_name: str
    request_id: str
    action: str
    account: str | None
    target: str | None
    reason: str | None
    before: Any
    after: Any
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        """What the hash covers (and what ``audit_log`` stores), secrets masked."""
        d = asdict(self)
        d["before"], d["after"] = mask(self.before), mask(self.after)
        return d


def canonical(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, seq: int, body: Mapping[str, Any]) -> str:
    """The hash of entry ``seq``: over the previous entry's hash, its place and its body."""
    return hashlib.sha256(f"{prev_hash}:{seq}:".encode() + canonical(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditRow:
    """An entry as ``audit_log`` keeps it."""

    seq: int
    body: dict[str, Any]
    prev_hash: str
    hash: str


def verify(rows: Iterable[AuditRow], head: tuple[int, str] | None) -> list[str]:
    """What is wrong with the trail (rows in ``seq`` order): each problem names the ``seq``.
    ``head``: the last (seq, hash) the writer recorded outside SQL (Redis), if any: rows
    deleted from the end leave it ahead of the trail. (It may lag the trail: it is written
    after each commit.)"""
    problems: list[str] = []
    prev, expect = GENESIS, 1
    hashes: dict[int, str] = {}
    for row in rows:
        if row.seq != expect:
            problems.append(f"seq {expect}..{row.seq - 1}: missing (deleted?)")
        if row.prev_hash != prev:
            problems.append(f"seq {row.seq}: prev_hash does not match the entry before it")
        if chain_hash(row.prev_hash, row.seq, row.body) != row.hash:
            problems.append(f"seq {row.seq}: hash does not match its content (edited?)")
        prev, expect, hashes[row.seq] = row.hash, row.seq + 1, row.hash
    if head is not None and head[0] > 0:
        if head[0] >= expect:
            problems.append(f"seq {expect}..{head[0]}: missing at the end (deleted?)")
        elif hashes.get(head[0]) != head[1]:
            problems.append(f"seq {head[0]}: does not match the head recorded in Redis")
    return problems


class AuditLog:
    """Appends audit entries to shard 0's outbox (the writer chains them into SQL)."""

    def __init__(self, redis: RedisClient, keys: KeySpace, deadline_s: float) -> None:
        self.redis, self.keys, self.deadline_s = redis, keys, deadline_s

    async def append(self, entry: AuditEntry) -> None:
        d = {"kind": "audit", "id": f"au_{secrets.token_hex(12)}", **entry.body()}
        await store_call(
            self.redis.xadd(self.keys.outbox(0), {FIELD: orjson.dumps(d)}), self.deadline_s
        )


AUDIT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "at": int,
    "token_id": str,
    "token_name": str,
    "request_id": str,
    "action": str,
    "account": (str, type(None)),
    "target": (str, type(None)),
    "reason": (str, type(None)),
    "replayed": bool,
}


# audit_log's column lengths (sidecar/persistence/models.py); reason is TEXT (NUL is refused:
# PostgreSQL cannot store it)
TEXT_LIMITS = {
    "token_id": 64,
    "token_name": 200,
    "request_id": 128,
    "action": 64,
    "account": 128,
    "target": 255,
    "reason": 100_000,
}


def decode(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A kind=audit outbox entry's body (what the hash covers), every field checked; raises
    ValueError naming the problem (the writer dead-letters the entry)."""
    body: dict[str, Any] = {}
    for name, kind in AUDIT_FIELDS.items():
        if name not in entry:
            raise ValueError(f"audit entry without {name}")
        v = entry[name]
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ValueError(f"audit entry field {name} has the wrong type")
        body[name] = v
    for name in ("before", "after"):
        if name not in entry:
            raise ValueError(f"audit entry without {name}")
        body[name] = entry[name]
    if not 0 < len(body["action"]) <= 64 or len(body["token_id"]) > 64:
        raise ValueError("audit entry: action or token_id out of range")
    # What audit_log's columns hold on both backends: refused here, named, rather than by
    # SQLite's driver (an OverflowError, which is no refusal: the writer retried it forever)
    # or by PostgreSQL only (SQLite does not enforce lengths).
    if not 0 <= body["at"] <= MAX_TIMESTAMP_MS:
        raise ValueError("audit entry field at out of range")
    for name, most in TEXT_LIMITS.items():
        v = body[name]
        if v is not None and (len(v) > most or "\x00" in v):
            raise ValueError(f"audit entry field {name} too long or with NUL")
    return body
