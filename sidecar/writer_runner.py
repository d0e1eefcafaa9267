"""Running the outbox writer: inline on an event loop, or as a supervised child process.

`serve` runs it as a child process by default: the writer then has a core of its own instead
of sharing the request handlers' event loop, which under load it cannot keep up with (see
bench/results/writer.md). The child gets every setting it needs explicitly, dies with its
parent (PDEATHSIG), and is restarted with backoff if it exits.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os

from sidecar.keys import KeySpace
from sidecar.persistence.db import engine_for, migrate, resolve_url
from sidecar.persistence.writer import OutboxWriter, pause
from sidecar.redis_client import RedisClient
from sidecar.settings import Settings
from sidecar.supervisor import Supervised

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
    """Migrates (retrying while SQL is unreachable) and writes until ``stop``; then disposes
    of the writer's engine."""
    try:
        backoff = 0.1
        while not stop.is_set():
            try:
                await migrate(writer.engine)
                break
            except Exception as e:
                log.warning("SQL ledger unavailable (%s); retrying in %.1fs", e, backoff)
                await pause(stop, backoff)
                backoff = min(backoff * 2, 5.0)
        await writer.run(stop)
    finally:
        await writer.engine.dispose()


WRITER_NICE = 10


class WriterProcess(Supervised):
    """``credit-sidecar writer`` as a child of ``serve``, restarted if it exits."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        # Niced: the writer is about throughput and catches up in idle time; at the same
        # priority its batches took the CPU from the HTTP workers and doubled their p99.
        super().__init__(
            "outbox writer", ["writer"], self._env(settings, redis_url), nice=WRITER_NICE
        )

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
