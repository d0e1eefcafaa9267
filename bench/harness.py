"""What every benchmark here needs to measure honestly and report: CPU use of the processes
involved, how noisy the machine is, a closed-loop load generator, which machine and code was
measured, and the Markdown/JSON result files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BUSY_PCT = 15.0  # % of one core busy before the start above which the bench warns
NOISY_PCT = 20.0  # % of one core used by others above which a run is reported as noisy

Pids = Callable[[], list[int]]  # looked up at each snapshot: processes come and go


class BenchFailure(RuntimeError):
    """A wrong result or a broken setup: the bench stops and reports no numbers."""


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress on stderr, so that stdout holds only the result table."""
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- CPU accounting -------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float, float]:
    """(busy, steal, total) jiffies of all CPUs since boot (guest time is inside user)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f
    busy = user + nice + system + irq + softirq
    return float(busy), float(steal), float(busy + idle + iowait + steal)


@dataclass
class CpuSnap:
    wall: float
    own: float
    procs: dict[str, float]
    busy: tuple[float, float, float]


class CpuProbe:
    """Snapshots of this process's CPU, named other processes' CPU and the machine's load."""

    def __init__(self, procs: dict[str, Pids] | None = None) -> None:
        self.procs = dict(procs or {})

    def plus(self, name: str, pids: Pids) -> CpuProbe:
        return CpuProbe(self.procs | {name: pids})

    def snap(self) -> CpuSnap:
        return CpuSnap(
            wall=time.perf_counter(),
            own=time.process_time(),
            procs={n: sum(proc_cpu_s(p) for p in pids()) for n, pids in self.procs.items()},
            busy=machine_busy(),
        )

    @staticmethod
    def usage(a: CpuSnap, b: CpuSnap) -> dict[str, float]:
        """CPU use between two snapshots, in % of one core (machine: % of all cores)."""
        wall = max(b.wall - a.wall, 1e-9)
        out = {"bench_process_pct": round(100 * (b.own - a.own) / wall, 1)}
        for name in a.procs:
            out[f"{name}_pct"] = round(max(0.0, 100 * (b.procs[name] - a.procs[name]) / wall), 1)
        total = b.busy[2] - a.busy[2]
        out["machine_pct"] = round(100 * (b.busy[0] - a.busy[0]) / total, 1) if total else 0.0
        # Busy CPU of everything else (other processes, kernel threads such as the ones that
        # flush our fsyncs), in % of one core: a large value means a noisy measurement.
        known = sum(v for k, v in out.items() if k != "machine_pct")
        busy_core_pct = 100 * (b.busy[0] - a.busy[0]) / CLK_TCK / wall
        out["other_pct"] = round(max(0.0, busy_core_pct - known), 1)
        steal = round(100 * (b.busy[1] - a.busy[1]) / total, 1) if total else 0.0
        if steal:
            out["steal_pct"] = steal
        return out


async def busy_before_start(seconds: float = 2.0) -> float:
    """How busy the machine is, in % of one core, over ``seconds``; warns when it is busy."""
    a = machine_busy()
    await asyncio.sleep(seconds)
    b = machine_busy()
    pct = round(100 * (b[0] - a[0]) / CLK_TCK / seconds, 1)
    if pct > BUSY_PCT:
        log(
            f"WARNING: the machine is busy before the bench starts ({pct}% of a core): "
            "the numbers will be low and noisy"
        )
    return pct


def noise_note(busy_before_pct: float, cpus: list[dict[str, float]]) -> str:
    """The report's interference sentence, from the idle check and every phase's CPU use."""
    other = max((c.get("other_pct", 0.0) for c in cpus), default=0.0)
    verdict = (
        " (**noisy run**: something else was using the machine)."
        if max(other, busy_before_pct) > NOISY_PCT
        else " (quiet)."
    )
    return (
        f"Interference: before the start the machine was busy {busy_before_pct:g}% of one "
        f"core; during the measurements other processes used up to {other:g}% of one core" + verdict
    )


# -- closed-loop load -----------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    concurrency: int
    warmup_s: float
    measure_s: float


@dataclass
class Rate:
    ops: int
    seconds: float
    per_s: float
    cpu: dict[str, float]
    total_ops: int = 0  # including the warm-up
    side: tuple[int, int] | None = None  # a side counter at the window's start and end


async def closed_loop(
    op: Callable[[int, int], Awaitable[None]],
    load: Load,
    probe: CpuProbe,
    side: Callable[[], Awaitable[int]] | None = None,
) -> Rate:
    """``load.concurrency`` tasks call ``op(worker, i)`` back to back; counts the calls
    completed in the measured window (after the warm-up), and samples ``side`` at its edges."""
    done = 0
    stop = False
    side0 = side1 = 0

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while not stop:
            await op(w, i)
            i += 1
            done += 1

    tasks = [asyncio.create_task(worker(w)) for w in range(load.concurrency)]
    try:
        await asyncio.sleep(load.warmup_s)
        _raise_failed(tasks)
        c0, s0 = done, probe.snap()
        side0 = await side() if side else 0
        await asyncio.sleep(load.measure_s)
        c1, s1 = done, probe.snap()
        side1 = await side() if side else 0
        _raise_failed(tasks)
    finally:
        stop = True
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise BenchFailure(f"load task failed: {r!r}") from r
    seconds = s1.wall - s0.wall
    return Rate(
        c1 - c0,
        round(seconds, 3),
        round((c1 - c0) / seconds, 1),
        probe.usage(s0, s1),
        total_ops=done,
        side=(side0, side1) if side else None,
    )


def _raise_failed(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        if t.done() and t.exception() is not None:
            raise BenchFailure(f"load task failed: {t.exception()!r}")


# -- what was measured ----------------------------------------------------------------------


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gb() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        return round(kb / 1024 / 1024, 1)
    return 0.0


def host_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory_gb": memory_gb(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "event_loop": f"uvloop {package_version('uvloop')}",
    }


def code_state(files: list[str]) -> dict[str, Any]:
    """Which code was measured: the commit, uncommitted changes, and hashes of ``files``."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    changed = git("status", "--porcelain", "--", "sidecar")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": [line for line in changed.splitlines() if line],
        "sha256": {
            f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest()[:16]
            for f in files
            if (ROOT / f).exists()
        },
    }


# -- result files ---------------------------------------------------------------------------

CPU_NAMES = {
    "bench_process_pct": "bench",
    "http_server_pct": "server",
    "writer_process_pct": "writer process",
    "redis_server_pct": "redis",
    "postgres_pct": "postgres",
    "machine_pct": "machine (all cores)",
    "other_pct": "other processes",
    "steal_pct": "VM steal",
}


def cpu_cell(cpu: dict[str, float]) -> str:
    """A CpuProbe.usage() dict for a table cell; below 0.5% is left out as noise."""
    shown = {k: v for k, v in cpu.items() if v >= 0.5 or k == "bench_process_pct"}
    return ", ".join(f"{CPU_NAMES.get(k, k)} {v:.0f}%" for k, v in shown.items())


def n(x: float) -> str:
    return f"{x:,.0f}"


def md_table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_atomic(path: Path, content: str) -> None:
    """Never leaves a half-written result behind (a bench may be interrupted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    tmp.replace(path)


def write_results(out: Path, name: str, markdown: str, result: dict[str, Any]) -> None:
    """``<out>/<name>.md`` for people and ``<out>/<name>.json`` for tools."""
    write_atomic(out / f"{name}.md", markdown)
    write_atomic(out / f"{name}.json", json.dumps(result, indent=2) + "\n")
