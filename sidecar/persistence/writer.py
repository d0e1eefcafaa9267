"""The outbox writer: streams each shard's outbox into SQL, exactly once in effect.

Per shard, one writer holds a lease (``lease.lua``) and reads the outbox through a consumer
group. Each batch is written in one SQL transaction with idempotent upserts
(projection.py) and only then XACKed, so a crash anywhere re-delivers entries whose
writing is a no-op. On start, and after any failure, the writer first re-reads its own
pending entries, in order; XAUTOCLAIM takes over entries another consumer left pending.

- SQL down: the batch stays pending and is retried with backoff; the sidecar keeps serving
  from Redis and the outbox grows (outbox_status.py shows the lag) until SQL is back.
- Poison entries (malformed, or rejected by SQL): after ``max_attempts`` they move to the
  shard's dead-letter stream with the error, and are acknowledged.
- Trimming: only entries below the oldest entry any consumer group still needs are removed,
  so an unwritten entry is never lost to trimming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger import outbox, replies
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.outbox import PoisonEntry
from sidecar.lua import Scripts
from sidecar.persistence.projection import Batch
from sidecar.persistence.upsert import apply
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _s

log = logging.getLogger(__name__)

GROUP = "sql-writer"
CONSUMER = "writer"  # one name: the lease makes it one process at a time per shard
RELEASE_TIMEOUT_S = 1.0

Entry = tuple[str, dict[str, str]]


def _entries(raw: list[Any]) -> list[tuple[str, dict[str, str] | None]]:
    """(id, fields) pairs; fields None for an entry deleted while pending. A client with
    decode_responses (what the writer is given in `serve`) needs no per-field decoding."""
    out: list[tuple[str, dict[str, str] | None]] = []
    for entry_id, fields in raw:
        if isinstance(entry_id, bytes):
            entry_id = entry_id.decode()
            fields = {k.decode(): v.decode() for k, v in fields.items()} if fields else None
        out.append((entry_id, fields or None))
    return out


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _refused(e: DBAPIError) -> bool:
    """SQL refused the data itself (retrying the same rows cannot help), as opposed to being
    unreachable or busy. asyncpg's errors arrive as generic DBAPI errors: go by SQLSTATE class
    22 (data exception) or 23 (integrity constraint)."""
    if isinstance(e, IntegrityError | DataError):
        return True
    state = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
    return isinstance(state, str) and state[:2] in ("22", "23")


@dataclass
class Parsed:
    """A batch of entries read from the outbox, parsed into rows."""

    entries: list[tuple[str, dict[str, str] | None]]
    batch: Batch
    ack: list[str]  # written with the batch
    poison: list[tuple[str, dict[str, str], str]]  # unparseable: (id, fields, error)


def _add(batch: Batch, entry_id: str, fields: dict[str, str]) -> None:
    try:
        entry = outbox.decode(fields)
    except ValueError as e:
        raise PoisonEntry(str(e)) from None
    batch.add(entry_id, entry, outbox.orig_id(fields))


def _parse(entries: list[tuple[str, dict[str, str] | None]], dialect: str) -> Parsed:
    parsed = Parsed(entries, Batch(dialect), [], [])
    for entry_id, fields in entries:
        if fields is None:  # trimmed or deleted while pending: nothing to write
            parsed.ack.append(entry_id)
            continue
        try:
            _add(parsed.batch, entry_id, fields)
            parsed.ack.append(entry_id)
        except PoisonEntry as e:
            parsed.poison.append((entry_id, fields, str(e)))
    return parsed


@dataclass
class WriterStats:
    written: int = 0  # entries written to SQL and acknowledged
    batches: int = 0
    dead_lettered: int = 0
    sql_errors: int = 0  # failed batch writes (retried)
    trimmed: int = 0
    last_write_ms: int | None = None
    lease_held: list[int] = field(default_factory=list)


class PermanentError(Exception):
    """Raised by a batch whose entries SQL rejects; they are retried one by one."""


class OutboxWriter:
    def __init__(
        self,
        redis: RedisClient,
        engine: AsyncEngine,
        keys: KeySpace,
        *,
        batch_size: int = 500,
        block_ms: int = 1000,
        max_attempts: int = 5,
        claim_idle_ms: int = 30_000,
        lease_ms: int = 10_000,
        trim_interval_s: float = 1.0,
        linger_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.keys = keys
        self.scripts = Scripts.register(redis)
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.max_attempts = max_attempts
        self.claim_idle_ms = claim_idle_ms
        self.lease_ms = lease_ms
        self.trim_interval_s = trim_interval_s
        self.linger_s = linger_s
        self.clock = clock
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.stats = WriterStats()
        self._attempts: dict[str, int] = {}
        self._pending_first: dict[int, bool] = {}
        self._last_trim: dict[int, float] = {}
        self._last_claim: dict[int, float] = {}
        self._prepared: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def ensure_group(self, shard: int) -> None:
        try:
            await self.redis.xgroup_create(self.keys.outbox(shard), GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def run(
        self, stop: asyncio.Event, prepare: Callable[[], Coroutine[Any, Any, None]] | None = None
    ) -> None:
        """Writes every shard until ``stop`` is set; survives Redis and SQL outages.
        ``prepare`` (the schema migration, retried while SQL is unreachable) runs first, with
        the leases already taken: a writer waiting for SQL at start holds them like one whose
        SQL went away later, so a lease free for long means that no writer is alive.

        The leases it holds are renewed by a task of their own, every third of the lease,
        however long a batch or a retry pause takes: a lease then says that the writer's
        process is alive and its event loop running, and one that lapses, that it is not
        (crashed, stopped, or hung), which is when another writer takes the shard over and
        `serve` kills and restarts its own writer (writer_runner.py). Whether the writer
        keeps up is the lag's to say."""
        self._prepared = (
            asyncio.create_task(prepare(), name="outbox-writer-prepare") if prepare else None
        )
        tasks = [
            asyncio.create_task(self._run_shard(s, stop), name=f"outbox-writer-{s}")
            for s in range(self.keys.shards)
        ]
        done = asyncio.Event()
        keeper = asyncio.create_task(self._keep_leases(done), name="outbox-writer-leases")
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in [*tasks, *([self._prepared] if self._prepared else [])]:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._prepared is not None:
                await asyncio.gather(self._prepared, return_exceptions=True)
            # Renewals stop before the releases: a renewal after a release would take the
            # lease again and keep the next writer waiting for a lease period. Neither waits
            # long for a Redis that is gone: an unreleased lease lapses by itself.
            done.set()
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(RELEASE_TIMEOUT_S):
                    for shard in range(self.keys.shards):
                        await self.scripts.lease(
                            keys=[self.keys.writer_lease(shard)], args=[self.token, 0]
                        )

    async def _keep_leases(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await pause(done, self.lease_ms / 3000)
            for shard in list(self.stats.lease_held):
                if done.is_set():
                    return
                try:
                    await self.take_lease(shard)
                except Exception as e:  # Redis away: the shard loop says so, and retries
                    log.debug("outbox writer: lease of shard %d not renewed: %r", shard, e)

    async def _run_shard(self, shard: int, stop: asyncio.Event) -> None:
        backoff = 0.05
        # The next batch is read and parsed while the current one is in SQL (its own thread
        # for SQLite, its own process for PostgreSQL): the two overlap instead of alternating.
        ahead: asyncio.Task[Parsed] | None = None
        while not stop.is_set():
            try:
                if not await self.take_lease(shard):
                    await pause(stop, self.lease_ms / 3000)
                    continue
                if self._prepared is not None and not self._prepared.done():
                    # Not ready to write (SQL not migrated yet): hold the lease meanwhile.
                    await asyncio.wait({self._prepared}, timeout=min(self.lease_ms / 3000, 1.0))
                    continue
                await self.ensure_group(shard)
                if ahead is not None:
                    parsed, ahead = await ahead, None
                    if not parsed.entries:
                        parsed = self._parse(await self._fetch(shard, block=True))
                else:
                    parsed = self._parse(await self._fetch(shard, block=True))
                if not parsed.entries:
                    continue
                full = len(parsed.entries) >= self.batch_size
                if full and not self._pending_first.get(shard, True):
                    ahead = asyncio.create_task(self._read_ahead(shard))
                await self._write(shard, parsed)
                backoff = 0.05
                await self.trim(shard)
                if not full and self.linger_s:
                    # Caught up: let the next batch gather instead of committing a few
                    # entries at a time, whose commits cost the hot path far more CPU per
                    # transaction (at half load they took as much CPU as the HTTP worker).
                    await pause(stop, self.linger_s)
            except Exception as e:
                # Redis or SQL unavailable, or anything unforeseen: retry the pending entries
                # (a batch read ahead is pending too) after a pause; nothing was acknowledged.
                if ahead is not None:
                    ahead.cancel()
                    with contextlib.suppress(BaseException):
                        await ahead
                    ahead = None
                self._pending_first[shard] = True
                if not isinstance(e, RedisError | OSError):
                    self.stats.sql_errors += 1
                log.warning("outbox writer (shard %d): %s; retrying in %.2fs", shard, e, backoff)
                await pause(stop, backoff)
                backoff = min(backoff * 2, 5.0)
        if ahead is not None:
            # Read but not written: it stays pending, and the next owner starts with it.
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead

    async def _read_ahead(self, shard: int) -> Parsed:
        return self._parse(await self._read(self.keys.outbox(shard), ">", block=False))

    def _parse(self, entries: list[tuple[str, dict[str, str] | None]]) -> Parsed:
        return _parse(entries, self.engine.dialect.name)

    async def take_lease(self, shard: int) -> bool:
        held = replies.lease(
            await self.scripts.lease(
                keys=[self.keys.writer_lease(shard)], args=[self.token, self.lease_ms]
            )
        )
        if held and shard not in self.stats.lease_held:
            self.stats.lease_held.append(shard)
            self._pending_first[shard] = True  # a new owner starts with what is pending
        elif not held and shard in self.stats.lease_held:
            self.stats.lease_held.remove(shard)
        return held

    # -- one batch -----------------------------------------------------------------------

    async def step(self, shard: int, *, block: bool = False) -> int:
        """Reads and writes one batch of shard ``shard``; returns the entries handled."""
        entries = await self._fetch(shard, block=block)
        if entries:
            await self._write(shard, self._parse(entries))
        return len(entries)

    async def _fetch(self, shard: int, *, block: bool) -> list[tuple[str, dict[str, str] | None]]:
        """The next batch: pending entries first (ours, or claimed from a consumer that went
        quiet), then new ones."""
        stream = self.keys.outbox(shard)
        entries: list[tuple[str, dict[str, str] | None]] = []
        if self._pending_first.get(shard, True):
            entries = await self._read(stream, "0", block=False)
            if not entries:
                self._pending_first[shard] = False
        if not entries and self._claim_due(shard):
            _, claimed, *_ = await self.redis.xautoclaim(
                stream, GROUP, CONSUMER, self.claim_idle_ms, "0-0", count=self.batch_size
            )
            if claimed:
                entries = _entries(claimed)
                self._pending_first[shard] = True
        if not entries:
            entries = await self._read(stream, ">", block=block)
        return entries

    async def _read(
        self, stream: str, start: str, *, block: bool
    ) -> list[tuple[str, dict[str, str] | None]]:
        reply: Any = await self.redis.xreadgroup(
            GROUP,
            CONSUMER,
            {stream: start},
            count=self.batch_size,
            block=self.block_ms if block else None,
        )
        if not reply:
            return []
        return _entries(reply[0][1])

    def _claim_due(self, shard: int) -> bool:
        now = self.clock()
        if now - self._last_claim.get(shard, 0.0) < self.claim_idle_ms / 2000:
            return False
        self._last_claim[shard] = now
        return True

    async def _write(self, shard: int, parsed: Parsed) -> None:
        try:
            await self._commit(parsed.batch)
        except DBAPIError as e:
            if not _refused(e):
                raise
            log.warning("outbox batch rejected by SQL (%s); writing entries one by one", e)
            gone = [i for i, f in parsed.entries if f is None]
            if gone:
                await self.redis.xack(self.keys.outbox(shard), GROUP, *gone)
            await self._one_by_one(shard, [(i, f) for i, f in parsed.entries if f is not None])
            return
        self.stats.written += len(parsed.ack)
        self.stats.batches += 1
        self.stats.last_write_ms = int(self.clock() * 1000)
        if parsed.ack:
            await self.redis.xack(self.keys.outbox(shard), GROUP, *parsed.ack)
            if self._attempts:
                for entry_id in parsed.ack:
                    self._attempts.pop(entry_id, None)
        for entry_id, fields, error in parsed.poison:
            await self._failed(shard, entry_id, fields, error)

    async def _commit(self, batch: Batch) -> None:
        async with self.engine.begin() as conn:
            await apply(conn, batch)
        if batch.audit_head is not None:
            # the trail's head outside SQL, so rows deleted from its end are found (docs/audit.md)
            seq, digest = batch.audit_head
            await self.redis.set(self.keys.audit_head(), f"{seq}:{digest}")

    async def _one_by_one(self, shard: int, entries: list[tuple[str, dict[str, str]]]) -> None:
        for entry_id, fields in entries:
            batch = Batch(self.engine.dialect.name)
            try:
                _add(batch, entry_id, fields)
                await self._commit(batch)
            except DBAPIError as e:
                if not _refused(e):
                    raise
                await self._failed(shard, entry_id, fields, str(e).splitlines()[0])
                continue
            except PoisonEntry as e:
                await self._failed(shard, entry_id, fields, str(e))
                continue
            self._attempts.pop(entry_id, None)
            self.stats.written += 1
            await self.redis.xack(self.keys.outbox(shard), GROUP, entry_id)

    async def _failed(self, shard: int, entry_id: str, fields: dict[str, str], error: str) -> None:
        n = self._attempts.get(entry_id, 0) + 1
        self._attempts[entry_id] = n
        self._pending_first[shard] = True
        if n < self.max_attempts:
            log.warning("outbox entry %s failed (attempt %d): %s", entry_id, n, error)
            # Spaced out, so a passing conflict (say, two writers overlapping for a moment)
            # does not use up every attempt at once.
            await asyncio.sleep(min(0.05 * 2**n, 2.0))
            return
        self._attempts.pop(entry_id, None)
        dead = {**fields, "dl_entry_id": entry_id, "dl_error": error, "dl_attempts": str(n)}
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead_letters(shard), dead)  # type: ignore[arg-type]
        pipe.xack(self.keys.outbox(shard), GROUP, entry_id)
        await pipe.execute()
        self.stats.dead_lettered += 1
        log.error("outbox entry %s moved to the dead-letter stream: %s", entry_id, error)

    # -- trimming and status --------------------------------------------------------------

    async def safe_trim_id(self, shard: int) -> str | None:
        """The lowest entry id any consumer group still needs; None if nothing may go."""
        stream = self.keys.outbox(shard)
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:
            return None  # no stream
        if not groups:
            return None  # nobody has consumed anything yet: keep everything
        floor: tuple[int, int] | None = None
        for g in groups:
            name = _s(g["name"])
            summary: Any = await self.redis.xpending(stream, name) if int(g["pending"]) else None
            if summary and summary.get("min"):
                need = _id_key(_s(summary["min"]))
            else:
                ms, seq = _id_key(_s(g["last-delivered-id"]))
                need = (ms, seq + 1)
            floor = need if floor is None else min(floor, need)
        if floor is None or floor == (0, 1):
            return None
        return f"{floor[0]}-{floor[1]}"

    async def trim(self, shard: int, *, force: bool = False) -> int:
        now = self.clock()
        if not force and now - self._last_trim.get(shard, 0.0) < self.trim_interval_s:
            return 0
        self._last_trim[shard] = now
        minid = await self.safe_trim_id(shard)
        if minid is None:
            return 0
        removed = int(
            await self.redis.xtrim(self.keys.outbox(shard), minid=minid, approximate=False)
        )
        self.stats.trimmed += removed
        return removed


def stats_dict(stats: WriterStats) -> dict[str, Any]:
    return asdict(stats)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
