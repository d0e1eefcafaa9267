"""The outbox's dead letters (entries the writer gave up on): read them, and move them back into
the outbox once what made SQL refuse them is fixed (the writer then applies them like any entry,
idempotently)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.ledger import outbox as entries
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.redis_calls import (
    store_call,
)
from sidecar.redis.client import RedisClient

MAX_RETRY = 1000  # dead letters one retry call looks at


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    entry: dict[str, Any] | None  # the entry's JSON object, or None if it has none
    fields: dict[str, str]  # the raw stream fields, with dl_error


def _decoded(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    try:
        return entries.decode(fields)
    except ValueError:
        return None


async def dead_letters(
    redis: RedisClient, keys: KeySpace, shard: int, count: int, deadline_s: float
) -> list[DeadLetter]:
    """The shard's dead letters, oldest first, at most ``count``."""
    raw = await store_call(redis.xrange(keys.dead_letters(shard), count=count), deadline_s)
    return [
        DeadLetter(i.decode(), _decoded(f), {k.decode(): v.decode() for k, v in f.items()})
        for i, f in raw
    ]


class UnknownDeadLetters(ValueError):
    def __init__(self, missing: list[str]) -> None:
        super().__init__(", ".join(missing))
        self.missing = missing


async def retry(
    redis: RedisClient, keys: KeySpace, shard: int, ids: list[str] | None, deadline_s: float
) -> list[str]:
    """Moves the shard's dead letters ``ids`` (None: all, up to MAX_RETRY) back into its
    outbox; their ids. UnknownDeadLetters, moving nothing, if an id is not a dead letter."""
    dead, stream = keys.dead_letters(shard), keys.outbox(shard)
    raw = await store_call(redis.xrange(dead, count=MAX_RETRY), deadline_s)
    chosen = [(i, f) for i, f in raw if ids is None or i.decode() in ids]
    if ids is not None and (missing := sorted(set(ids) - {i.decode() for i, _ in chosen})):
        raise UnknownDeadLetters(missing)
    retried = []
    for entry_id, fields in chosen:
        original = {k: v for k, v in fields.items() if not k.startswith(b"dl_")}
        # Its first outbox id: settings entries are ordered by it, so a late retry cannot
        # overwrite newer settings.
        original[entries.ORIG_ID.encode()] = (
            fields.get(entries.ORIG_ID.encode()) or fields.get(b"dl_entry_id") or entry_id
        )
        # Same slot (one hash tag): the move is one MULTI, so an entry is never in both or
        # in neither.
        pipe = redis.pipeline(transaction=True)
        pipe.xadd(stream, original)
        pipe.xdel(dead, entry_id)
        await store_call(pipe.execute(), deadline_s)
        retried.append(entry_id.decode())
    return retried
