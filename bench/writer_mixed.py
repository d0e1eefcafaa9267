"""The writer under peak check load: does it keep up? Both run at once, from an empty outbox,
with the writer either inside the real app (sharing its event loop) or in its own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bench.checkrate import app_settings, setup_accounts
from bench.harness import BenchFailure, CpuProbe, Load, closed_loop
from bench.servers import url_of
from bench.writer_drain import SHARD, Census, Rig, redis_truth, verify
from sidecar.http.app import create_app
from sidecar.http.state import LEDGER, WRITER
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.persistence.outbox_status import outbox_status
from sidecar.redis.client import connect

INLINE = "inside the app (SIDECAR_WRITER=inline)"
PROCESS = "own process (credit-sidecar writer)"
WIRINGS = (INLINE, PROCESS)


@dataclass
class Wired:
    """A running writer, wired one way or the other."""

    ledger: Ledger  # the ledger the check load drives
    written: Callable[[], Awaitable[int]]  # outbox entries the writer has written so far
    exited: Callable[[], bool]
    probe: CpuProbe


@contextlib.asynccontextmanager
async def _in_app(rig: Rig, db_url: str, batch_size: int) -> AsyncIterator[Wired]:
    """The real app with its writer inline (no HTTP listener): the load drives the app's own
    ledger, so the writer shares the event loop as in `serve` with SIDECAR_WRITER=inline."""
    settings = app_settings(
        rig.srv.redis.url,
        rig.srv.tmp / "serve",
        "inline",
        database_url=db_url,
        writer_batch_size=batch_size,
    )
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()  # the app's contexts: its Redis client, sweeper, writer
    try:
        writer = runner.app[WRITER]

        async def written() -> int:
            return writer.stats.written

        yield Wired(runner.app[LEDGER], written, lambda: False, rig.probe)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _own_process(
    rig: Rig, db_url: str, batch_size: int, appended: Callable[[], int]
) -> AsyncIterator[Wired]:
    """`credit-sidecar writer` in a child process; the load runs in the bench. ``appended``:
    entries in the outbox so far (written = appended - unwritten)."""
    tmp = rig.srv.tmp
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")} | {
        "SIDECAR_REDIS_URL": rig.srv.redis.url,
        "SIDECAR_DATABASE_URL": db_url,
        "SIDECAR_DATA_DIR": str(tmp / "writer"),
        "SIDECAR_WRITER_BATCH_SIZE": str(batch_size),
    }
    # Its log would interleave with the bench's progress lines.
    with (tmp / "writer.log").open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            "writer",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    # Not the ledger's client: the check load keeps all of its connections busy.
    monitor = connect(rig.srv.redis.url, max_connections=2)
    try:

        async def written() -> int:
            status = (await outbox_status(monitor, rig.keys, int(time.time() * 1000)))[SHARD]
            return appended() - int(status["unwritten"]) if status["writer_group"] else 0

        def exited() -> bool:
            return proc.returncode is not None

        pid = proc.pid
        yield Wired(rig.ledger, written, exited, rig.probe.plus("writer_process", lambda: [pid]))
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await monitor.aclose()


async def mixed_run(
    rig: Rig, backend: str, wiring: str, load: Load, seed: int, batch_size: int
) -> dict[str, Any]:
    """Peak check load and the writer at once: both rates over the same window (after the
    warm-up), then the backlog is drained and verified like every run."""
    redis, keys, accounts = rig.redis, rig.keys, rig.accounts
    await redis.flushall()
    await setup_accounts(rig.ledger, accounts, load.concurrency)
    setup = int(await redis.xlen(keys.outbox(SHARD)))
    produced = 0
    engine = await rig.srv.dbs.fresh(backend)
    try:
        if wiring == INLINE:
            wire = _in_app(rig, url_of(engine), batch_size)
        else:
            wire = _own_process(rig, url_of(engine), batch_size, lambda: setup + produced)
        async with wire as w:
            rngs = [random.Random(seed * 65537 + i) for i in range(load.concurrency)]

            async def op(worker: int, i: int) -> None:
                nonlocal produced
                account = rngs[worker].choice(accounts)
                r = await w.ledger.deduct(account, 1 + i % 7, f"mixed-{worker}-{i}")
                if not isinstance(r, Allowed):
                    raise BenchFailure(f"check refused: {r!r}")
                produced += 1

            async def wait_written(target: int, what: str) -> None:
                deadline = time.perf_counter() + rig.timeout_s
                while await w.written() < target:
                    if w.exited():
                        raise BenchFailure(
                            f"mixed {backend} ({wiring}): the writer exited ({what})"
                        )
                    if time.perf_counter() > deadline:
                        raise BenchFailure(f"mixed {backend} ({wiring}): timeout ({what})")
                    await asyncio.sleep(0.01)

            await wait_written(setup, "start")  # the writer is up and has written the setup
            rate = await closed_loop(op, load, w.probe, w.written)
            assert rate.side is not None
            backlog_end = setup + rate.total_ops - rate.side[1]
            writer_per_s = (rate.side[1] - rate.side[0]) / rate.seconds
            await wait_written(setup + produced, "draining the backlog")
        census = Census(
            entries=setup + produced, txns=len(accounts) + produced, setup_entries=setup, by_kind={}
        )
        checks = await verify(rig, engine, census, await redis_truth(rig))
    finally:
        await engine.dispose()
    return {
        "backend": backend,
        "wiring": wiring,
        "batch_size": batch_size,
        "checks_per_s": rate.per_s,
        "writer_txns_per_s": round(writer_per_s, 1),
        "backlog_at_end": backlog_end,
        "backlog_growth_per_s": round(rate.per_s - writer_per_s, 1),
        # In-flight checks may have appended entries that the writer cannot have seen yet.
        "kept_up": backlog_end <= 2 * batch_size + load.concurrency,
        "concurrency": load.concurrency,
        "window_s": rate.seconds,
        "warmup_s": load.warmup_s,
        "cpu": rate.cpu,
        "verified": True,
        "checks": checks,
    }
