"""The outbox's status per shard: how much the SQL writer has still to write, and how late it is.

Read by ``credit-sidecar outbox status``, ``GET /v1/admin/outbox``, the metrics, ``/readyz``'s
writer lag and the outbox drain at shutdown; it only reads (the writer's consumer group, its
lease, the dead-letter stream), so it may run anywhere, while the writer runs or not.
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis.exceptions import ResponseError

from sidecar.ledger.keyspace import KeySpace
from sidecar.persistence.writer import GROUP
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _s


def _id_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


async def outbox_status(redis: RedisClient, keys: KeySpace, now_ms: int) -> list[dict[str, Any]]:
    """Per shard: stream length, entries not yet written (pending + undelivered), the age of
    the oldest unwritten entry (the writer's lag), and dead letters.

    ``unwritten`` is exactly the entries still in the stream that the writer has not
    acknowledged: pending ones (read, not yet written) that still exist, and those after the
    group's last-delivered id, each counted once. Redis's own numbers are not that: its
    pending count keeps entries deleted from the stream, a group moved back (XGROUP SETID,
    to replay) has its pending entries after that id as well, and its ``lag`` counts entries
    trimmed away after the last-delivered id."""
    out = []
    for shard in range(keys.shards):
        stream = keys.outbox(shard)
        length = int(await redis.xlen(stream))
        dead = int(await redis.xlen(keys.dead_letters(shard)))
        pending = undelivered = 0
        oldest: str | None = None
        groups = []
        with contextlib.suppress(ResponseError):
            groups = [g for g in await redis.xinfo_groups(stream) if _s(g["name"]) == GROUP]
        if groups:
            g = groups[0]
            last = _s(g["last-delivered-id"])
            if int(g["pending"]):
                pending, oldest = await _pending_in_stream(redis, stream, last, int(g["pending"]))
            after: Any = await redis.xrange(stream, min=f"({last}", count=1)
            if after:
                oldest = oldest or _s(after[0][0])
                before: Any = await redis.xrevrange(stream, max=last, count=1)
                lag = g.get("lag")
                if not before:  # trimmed up to past the last-delivered id: all are after it
                    undelivered = length
                elif lag is not None and int(lag) <= length:  # exact while no entry after
                    undelivered = int(lag)  # that id was removed
                else:
                    # Redis cannot tell (an entry deleted, the id moved back), or says the
                    # impossible: Redis 7.0 restored a group's entries-read wrong from its AOF
                    # after a SIGKILL (a lag of 13,269 in a stream of 7)
                    undelivered = await _count_after(redis, stream, last)
        else:
            undelivered = length
            first: Any = await redis.xrange(stream, count=1)
            oldest = _s(first[0][0]) if first else None
        holder = await redis.get(keys.writer_lease(shard))
        out.append(
            {
                "shard": shard,
                "writer_lease": _s(holder) if holder is not None else None,
                "length": length,
                "pending": pending,
                "undelivered": undelivered,
                "unwritten": pending + undelivered,
                "lag_s": max(0, now_ms - _id_ms(oldest)) / 1000 if oldest else 0.0,
                "dead_letters": dead,
                "writer_group": bool(groups),
            }
        )
    return out


_PEL_CHECKED = 10_000  # pending entries looked up one by one (a writer has a batch or two)


async def _pending_in_stream(
    redis: RedisClient, stream: str, last: str, total: int
) -> tuple[int, str | None]:
    """The pending entries up to ``last`` that the stream still holds, and the oldest."""
    pel: Any = await redis.xpending_range(stream, GROUP, "-", last, _PEL_CHECKED)
    ids = [_s(p["message_id"]) for p in pel]
    if not ids:
        return 0, None
    pipe = redis.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
    present = [i for i, found in zip(ids, await pipe.execute(), strict=True) if found]
    # Beyond the ones looked up: taken as present (only a huge backlog has any).
    rest = max(0, total - len(ids)) if len(ids) == _PEL_CHECKED else 0
    return len(present) + rest, present[0] if present else None


async def _count_after(redis: RedisClient, stream: str, last: str) -> int:
    """Entries after ``last``, read in pages (Redis's lag is unknown)."""
    n, start = 0, f"({last}"
    while True:
        page: Any = await redis.xrange(stream, min=start, count=10_000)
        n += len(page)
        if len(page) < 10_000:
            return n
        start = f"({_s(page[-1][0])}"
