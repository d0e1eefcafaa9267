"""Running the outbox writer: inline on an event loop, or as a supervised child process.

`serve` runs it as a child process by default: the writer then has a core of its own instead
of sharing the request handlers' event loop, which under load it cannot keep up with (see
bench/results/writer.md). The child gets every setting it needs explicitly, dies with its
parent (PDEATHSIG), and is restarted with backoff if it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys

from redis.asyncio import Redis

from sidecar.embedded import die_with_parent
from sidecar.keys import KeySpace
from sidecar.persistence.db import create_engine, migrate, resolve_url
from sidecar.persistence.writer import OutboxWriter, pause
from sidecar.settings import Settings

log = logging.getLogger(__name__)


def make_writer(redis: Redis, settings: Settings) -> OutboxWriter:
    """A writer configured by ``settings``, on its own SQL engine."""
    return OutboxWriter(
        redis,
        create_engine(resolve_url(settings.database_url, settings.data_dir)),
        KeySpace(settings.shards),
        batch_size=settings.writer_batch_size,
        max_attempts=settings.writer_max_attempts,
        lease_ms=settings.writer_lease_ms,
    )


def tune_gc() -> None:
    """For a process that runs the writer alone. A batch allocates tens of thousands of
    short-lived, acyclic tuples, which would set off many collections per batch, each also
    walking every long-lived object: those alive at start-up are frozen out of collection,
    and the young generation is collected 50x less often (cycles are still collected)."""
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


class WriterProcess:
    """``credit-sidecar writer`` as a child of ``serve``, restarted if it exits."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env |= {
            "SIDECAR_REDIS_URL": self.redis_url,
            "SIDECAR_DATABASE_URL": resolve_url(s.database_url, s.data_dir),
            "SIDECAR_DATA_DIR": str(s.data_dir),
            "SIDECAR_SHARDS": str(s.shards),
            "SIDECAR_WRITER_BATCH_SIZE": str(s.writer_batch_size),
            "SIDECAR_WRITER_MAX_ATTEMPTS": str(s.writer_max_attempts),
            "SIDECAR_WRITER_LEASE_MS": str(s.writer_lease_ms),
        }
        return env

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="outbox-writer-process")

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sidecar",
                "writer",
                env=self.env(),
                preexec_fn=die_with_parent,
            )
            if self._stop.is_set():  # stop() ran while it was being spawned
                await self._terminate(self.process, 15.0)
                return
            started = asyncio.get_running_loop().time()
            code = await self.process.wait()
            if self._stop.is_set():
                return
            self.restarts += 1
            if asyncio.get_running_loop().time() - started > 60:
                backoff = 0.5  # it had been healthy: a fresh failure, not a crash loop
            log.error("outbox writer process exited (%s); restarting in %.1fs", code, backoff)
            await pause(self._stop, backoff)
            backoff = min(backoff * 2, 10.0)

    async def stop(self, grace_s: float = 15.0) -> None:
        self._stop.set()
        if self.process is not None:
            await self._terminate(self.process, grace_s)
        if self._task is not None:
            await self._task  # it terminates a child spawned meanwhile itself

    @staticmethod
    async def _terminate(p: asyncio.subprocess.Process, grace_s: float) -> None:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.wait(), grace_s)
            except TimeoutError:
                log.error("outbox writer process did not stop; killing it")
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()

    def status(self) -> dict[str, object]:
        p = self.process
        return {
            "mode": "process",
            "pid": p.pid if p is not None else None,
            "running": p is not None and p.returncode is None,
            "restarts": self.restarts,
        }
