"""Running the outbox writer: inline on an event loop, or as a supervised child process.

`serve` runs it as a child process by default: the writer then has a core of its own instead
of sharing the request handlers' event loop, which under load it cannot keep up with (see
bench/results/writer.md). The child gets every setting it needs explicitly, dies with its
parent (PDEATHSIG), and is restarted with backoff if it exits.

A child that is alive but hung (stopped, its event loop blocked) would never exit: `serve`
watches the leases it holds instead. The writer renews them every third of the lease period
whatever it is doing (sidecar/persistence/writer.py), so one of ours that lapses (not renewed for a
lease period) means a hung writer: it is killed (SIGKILL) and a new one started.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time

from sidecar.ledger.keyspace import KeySpace
from sidecar.persistence.db import engine_for, migrate, resolve_url
from sidecar.persistence.writer import OutboxWriter, pause
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.client import text as _text
from sidecar.runtime.supervisor import Supervised
from sidecar.settings import Settings

log = logging.getLogger(__name__)


def make_writer(redis: RedisClient, settings: Settings) -> OutboxWriter:
    """A writer configured by ``settings``, on its own SQL engine."""
    return OutboxWriter(
        redis,
        engine_for(settings),
        KeySpace(settings.shards),
        batch_size=settings.writer_batch_size,
        max_attempts=settings.writer_max_attempts,
        lease_ms=settings.writer_lease_ms,
        linger_s=settings.writer_linger_ms / 1000,
        # An idle writer renews its leases between blocking reads: several per lease, or
        # two writers take a short lease from each other back and forth.
        block_ms=max(10, min(1000, settings.writer_lease_ms // 3)),
    )


def tune_gc() -> None:
    """For a long-running process of ours (the writer, an HTTP worker). A writer's batch or a
    burst of requests allocates tens of thousands of short-lived, mostly acyclic objects,
    which would set off many collections, each also walking every long-lived object: those
    alive at start-up are frozen out of collection, and the young generation is collected
    less often (cycles are still collected)."""
    gc.freeze()
    gc.set_threshold(35_000, 20, 20)


async def run_inline(writer: OutboxWriter, stop: asyncio.Event) -> None:
    """Writes until ``stop``, having migrated the schema first (retried while SQL is
    unreachable, with the leases held meanwhile); then disposes of the writer's engine."""

    async def migrated() -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                await migrate(writer.engine)
                return
            except Exception as e:
                log.warning("SQL ledger unavailable (%s); retrying in %.1fs", e, backoff)
                await pause(stop, backoff)
                backoff = min(backoff * 2, 5.0)

    try:
        await writer.run(stop, prepare=migrated)
    finally:
        await writer.engine.dispose()


WRITER_NICE = 10
# How long a new writer child may take (imports, connections) before it must hold its leases.
WRITER_START_GRACE_S = 30.0


class WriterProcess(Supervised):
    """``credit-sidecar writer`` as a child of ``serve``, restarted if it exits."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        # Niced: the writer is about throughput and catches up in idle time; at the same
        # priority its batches took the CPU from the HTTP workers and doubled their p99.
        super().__init__(
            "outbox writer", ["writer"], self._env(settings, redis_url), nice=WRITER_NICE
        )
        self.redis_url = redis_url
        self.keys = KeySpace(settings.shards)
        self.lease_s = settings.writer_lease_ms / 1000
        self.hung_kills = 0
        self._watch_stop = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        super().start()
        self._watch = asyncio.create_task(self._watch_leases(), name="outbox-writer-watchdog")

    async def stop(self, grace_s: float = 15.0) -> None:
        self._watch_stop.set()
        if self._watch is not None:
            await self._watch
        await super().stop(grace_s)

    def status(self) -> dict[str, object]:
        return super().status() | {"hung_kills": self.hung_kills}

    async def _watch_leases(self) -> None:
        """Kills our writer once a shard's lease has gone unrenewed for a lease period: our
        writer renews the leases it holds every third of a lease, and takes a free one as
        fast, so a lease ours lets lapse, or one left free, means it is hung (a lease another
        writer holds means ours is standing by). A new writer has a start-up grace, and after
        Redis was unreachable (nobody could renew) every writer gets a full lease period."""
        interval = min(max(self.lease_s / 4, 0.05), 2.5)
        redis = connect(self.redis_url, retries=0, max_connections=2)
        ok_at: dict[int, float] = {}  # shard -> when it was last known written by a live writer
        pid: int | None = None
        answered = True
        try:
            while not self._watch_stop.is_set():
                await pause(self._watch_stop, interval)
                p = self.process
                if p is None or p.poll() is not None:
                    pid = None
                    continue
                if p.pid != pid:  # a new writer: it starts (imports, connects) before leasing
                    pid = p.pid
                    start = time.monotonic() + WRITER_START_GRACE_S
                    ok_at = dict.fromkeys(range(self.keys.shards), start)
                    continue
                try:
                    async with asyncio.timeout(max(interval, 1.0)):
                        leases = await self._leases(redis)
                except Exception:
                    answered = False  # Redis away: nobody can renew; not the writer's fault
                    continue
                now = time.monotonic()
                if not answered:
                    ok_at = {s: max(at, now) for s, at in ok_at.items()}
                    answered = True
                ours = f"{socket.gethostname()}:{pid}:"
                for shard, (holder, ttl_ms) in enumerate(leases):
                    if holder is None:
                        continue  # free: a live writer of ours takes it within a third
                    if holder.startswith(ours):  # renewed lease - remaining ago
                        ok_at[shard] = now - self.lease_s + max(ttl_ms, 0) / 1000
                    else:
                        ok_at[shard] = now  # another writer has it: ours stands by
                lapsed = sorted(s for s, at in ok_at.items() if now - at > self.lease_s)
                if lapsed:
                    log.error(
                        "outbox writer (pid %d) has not renewed its lease of shard(s) %s for "
                        "%.1fs (lease %.1fs): it is hung; killing it",
                        pid,
                        lapsed,
                        now - min(ok_at[s] for s in lapsed),
                        self.lease_s,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()  # the supervision loop starts a new one
                    self.hung_kills += 1
                    pid = None
        finally:
            await redis.aclose()

    async def _leases(self, redis: RedisClient) -> list[tuple[str | None, int]]:
        """Per shard: the lease's holder (None: nobody) and its remaining TTL in ms."""
        pipe = redis.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.get(self.keys.writer_lease(shard))
            pipe.pttl(self.keys.writer_lease(shard))
        raw = await pipe.execute()
        return [
            (None if holder is None else _text(holder), int(ttl))
            for holder, ttl in zip(raw[::2], raw[1::2], strict=True)
        ]

    @staticmethod
    def _env(s: Settings, redis_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env |= {
            "SIDECAR_REDIS_URL": redis_url,
            "SIDECAR_DATABASE_URL": resolve_url(s.database_url, s.data_dir),
            "SIDECAR_DATABASE_POOL_SIZE": str(s.database_pool_size),
            "SIDECAR_DATABASE_MAX_OVERFLOW": str(s.database_max_overflow),
            "SIDECAR_DATA_DIR": str(s.data_dir),
            "SIDECAR_SHARDS": str(s.shards),
            "SIDECAR_WRITER_BATCH_SIZE": str(s.writer_batch_size),
            "SIDECAR_WRITER_MAX_ATTEMPTS": str(s.writer_max_attempts),
            "SIDECAR_WRITER_LEASE_MS": str(s.writer_lease_ms),
            "SIDECAR_WRITER_LINGER_MS": str(s.writer_linger_ms),
        }
        return env
