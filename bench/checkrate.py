"""The sidecar's check rate on this machine, the yardstick other benchmarks compare against:
``Ledger.deduct`` calls/s from concurrent asyncio tasks in this process, and ``POST /v1/check``
requests/s against the real app served by a child process."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import signal
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
import uvloop
from aiohttp import web
from pydantic import SecretStr

from bench.harness import BenchFailure, CpuProbe, Load, Rate, closed_loop
from sidecar.http.app import create_app
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.redis.embedded import free_port
from sidecar.settings import Settings

ADMIN_TOKEN = "bench-admin-token-" + "a" * 16
SERVICE_TOKEN = "bench-service-token-" + "s" * 16
GRANT = 10**12  # per account: no deduction in the bench is ever refused for credits


def account_names(n: int) -> list[str]:
    return [f"acct-{i:05d}" for i in range(n)]


async def setup_accounts(ledger: Ledger, accounts: list[str], concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(a: str) -> None:
        async with sem:
            await ledger.configure_account(a)
            await ledger.grant(a, "bench-grant", GRANT, source="purchase")

    await asyncio.gather(*(one(a) for a in accounts))


def app_settings(
    redis_url: str,
    data_dir: Path,
    writer: Literal["process", "inline", "off"],
    **more: Any,
) -> Settings:
    """Settings of the real app with the bench's tokens."""
    return Settings(
        redis_url=redis_url,
        writer=writer,
        data_dir=data_dir,
        admin_token=SecretStr(ADMIN_TOKEN),
        service_token=SecretStr(SERVICE_TOKEN),
        **more,
    )


async def check_rate_direct(
    ledger: Ledger, accounts: list[str], load: Load, seed: int, probe: CpuProbe
) -> Rate:
    rngs = [random.Random(seed * 7919 + w) for w in range(load.concurrency)]

    async def op(w: int, i: int) -> None:
        r = await ledger.deduct(rngs[w].choice(accounts), 1, f"direct-{w}-{i}")
        if not isinstance(r, Allowed):
            raise BenchFailure(f"check refused: {r!r}")

    return await closed_loop(op, load, probe)


def _http_server_child(redis_url: str, port: int, data_dir: str) -> None:
    """Child process: the real app (writer off) on uvloop, until SIGTERM."""
    uvloop.run(_serve_http(redis_url, port, Path(data_dir)))


async def _serve_http(redis_url: str, port: int, data_dir: Path) -> None:
    settings = app_settings(redis_url, data_dir, "off", listen=f"127.0.0.1:{port}")
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


async def check_rate_http(
    redis_url: str, accounts: list[str], load: Load, seed: int, probe: CpuProbe, tmp: Path
) -> tuple[Rate, dict[str, str]]:
    """The rate and a description of the server and client (for the report)."""
    port = free_port()
    # spawn, not fork: the child must not inherit this process's event loop and clients.
    proc = multiprocessing.get_context("spawn").Process(
        target=_http_server_child, args=(redis_url, port, str(tmp / "http")), daemon=True
    )
    proc.start()
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}", "Content-Type": "application/json"}
    rngs = [random.Random(seed * 104729 + w) for w in range(load.concurrency)]
    try:
        connector = aiohttp.TCPConnector(limit=load.concurrency)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as s:
            await _wait_healthy(s, proc)
            pid = proc.pid
            assert pid is not None

            async def op(w: int, i: int) -> None:
                account = rngs[w].choice(accounts)
                body = orjson.dumps(
                    {"account": account, "cost": 1, "idempotency_key": f"http-{w}-{i}"}
                )
                async with s.post("/v1/check", data=body, headers=headers) as resp:
                    payload = await resp.read()
                    if resp.status != 200:
                        raise BenchFailure(f"/v1/check answered {resp.status}: {payload[:200]!r}")

            rate = await closed_loop(op, load, probe.plus("http_server", lambda: [pid]))
    finally:
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.kill()
    info = {
        "server": "sidecar.http.app.create_app (writer off) + aiohttp AppRunner on uvloop, "
        "in a child process",
        "client": f"aiohttp ClientSession, {load.concurrency} concurrent requests, in the bench "
        "process (same machine: client and server share the cores)",
    }
    return rate, info


async def _wait_healthy(session: aiohttp.ClientSession, proc: BaseProcess) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise BenchFailure("the HTTP server process exited at start")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get("/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise BenchFailure("the HTTP server did not become healthy within 20s")
