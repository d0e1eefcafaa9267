"""One process's capacity on a core of its own: the sidecar's worker, then the bare handler,
alone on core 0, while wrk, Redis and the outbox writer share the other cores.

On a small machine the shared runs measure the machine: wrk, Redis, the writer and the worker
all compete for the same cores, so the worker gets only part of one. Here the process under
test has core 0 to itself, its CPU time is measured, and its capacity is requests per CPU
second: what it would serve per core it is given. On 2 cores the worker cannot be driven to
100% of its core (the other core, running wrk, Redis and the writer, is full first), and a
process's CPU per request falls as its load rises (more requests per wake-up), so the bare
handler is measured twice: saturated, and paced to the sidecar's rate, at which the two
capacities compare like for like. Every check is verified as in the shared runs (credits
spent = checks allowed).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.checkrate import GRANT, SERVICE_TOKEN, setup_accounts
from bench.harness import BenchFailure, log, proc_cpu_s
from bench.load import Server, wrk
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.redis.client import RedisClient
from sidecar.redis.embedded import free_port

OWN = "0"  # the core of the process under test


def _rest() -> str:
    n = os.cpu_count() or 1
    return f"1-{n - 1}" if n > 2 else "1"


def pin(pid: int, cpus: str) -> None:
    subprocess.run(["taskset", "-apc", cpus, str(pid)], check=True, capture_output=True)


async def _run(
    server: Server, script: str, args: list[str], connections: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Measures the server's main process (the worker) over one wrk run after a warm-up."""
    assert server.proc is not None
    server.in_flight += 2 * connections
    warm = await asyncio.to_thread(wrk, server.url, script, args, connections, warmup, _rest())
    pid = server.proc.pid
    c0, t0 = proc_cpu_s(pid), time.perf_counter()
    res = await asyncio.to_thread(wrk, server.url, script, args, connections, seconds, _rest())
    cpu_s, wall = proc_cpu_s(pid) - c0, time.perf_counter() - t0
    if res["socket_errors"]:
        raise BenchFailure(f"pinned {script}: {res['socket_errors']} socket errors")
    per_s = res["requests"] / (res["duration_us"] / 1e6)
    return {
        "per_s": round(per_s, 1),
        "cpu_pct": round(100 * cpu_s / wall, 1),
        "cpu_us_per_req": round(1e6 * cpu_s / max(res["requests"], 1), 1),
        "capacity_per_s": round(res["requests"] / cpu_s, 1) if cpu_s else None,
        "p99_ms": res["p99_us"] / 1000,
        "ok": res["requests"] - res["non2xx"] + warm["requests"] - warm["non2xx"],
    }


async def pinned(
    redis_pid: int,
    redis: RedisClient,
    ledger: Ledger,
    accounts: list[str],
    env: dict[str, str],
    tmp: Path,
    *,
    connections: int,
    seconds: float,
    warmup: float,
) -> dict[str, Any]:
    """The bare handler's and the sidecar worker's capacity, each alone on core 0."""
    if (os.cpu_count() or 1) < 2:
        return {"skipped": "needs at least 2 CPUs"}
    py = sys.executable
    everywhere = f"0-{(os.cpu_count() or 1) - 1}"
    pin(redis_pid, _rest())
    try:
        await redis.flushall()
        await setup_accounts(ledger, accounts, 64)
        port = free_port()
        argv = ["taskset", "-c", OWN, py, "-m", "sidecar", "serve"]
        env = env | {"SIDECAR_LISTEN": f"127.0.0.1:{port}", "SIDECAR_DATA_DIR": str(tmp)}
        async with Server("sidecar (pinned)", argv, env, port) as s:
            for child in s.pids()[1:]:  # the outbox writer: off the worker's core
                pin(child, _rest())
            args = [str(len(accounts)), SERVICE_TOKEN]
            check = await _run(s, "check.lua", args, connections, seconds, warmup)
            slack = s.in_flight
        log(f"  pinned check: {check}")
        total = 0
        for a in accounts:
            bal = (await ledger.balance(a)).balance
            if bal < 0:
                raise BenchFailure(f"WRONG RESULT (pinned): {a} went negative ({bal})")
            total += GRANT - bal
        if not check["ok"] <= total <= check["ok"] + slack:
            raise BenchFailure(f"WRONG RESULT (pinned): {check['ok']} allowed, {total} spent")
        check["verified"] = f"{total:,} credits spent for {check['ok']:,} allowed checks"

        port = free_port()
        argv = ["taskset", "-c", OWN, py, "-m", "bench.bare_app", "--port", str(port)]
        async with Server("bare (pinned)", argv, dict(os.environ), port) as s:
            bare = await _run(s, "check.lua", ["1", ""], connections, seconds, warmup)
            # The same rate as the sidecar's: each connection paced (bench/wrk/check.lua).
            pace = str(max(1, round(connections * 1000 / check["per_s"])))
            bare_same = await _run(
                s, "check.lua", ["1", "", "1", "/v1/check", pace], connections, seconds, warmup
            )
        log(f"  pinned bare: {bare}; at the sidecar's rate: {bare_same}")
    finally:
        pin(redis_pid, everywhere)

    def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
        if a["capacity_per_s"] and b["capacity_per_s"]:
            return round(float(a["capacity_per_s"]) / float(b["capacity_per_s"]), 2)
        return None

    return {
        "check": check,
        "bare": bare,
        "bare_same_rate": bare_same,
        "capacity_ratio_same_rate": ratio(check, bare_same),
        "capacity_ratio_saturated_bare": ratio(check, bare),
    }
