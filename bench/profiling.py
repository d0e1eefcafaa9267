"""Profiling this process while a benchmark step runs: py-spy (sampling, all threads) when it
is installed, cProfile otherwise; and the summary of py-spy's folded stacks that reports show
(busy threads, main-thread time by code owner and by phase, hottest leaf functions)."""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import BenchFailure

RATE_HZ = 200
SQLITE_THREAD = "SQLite worker thread (aiosqlite)"


@dataclass
class Summary:
    threads: dict[str, float] = field(default_factory=dict)  # % of wall time busy (sampled)
    main_by_owner: dict[str, float] = field(default_factory=dict)  # % of main-thread samples
    main_by_phase: dict[str, float] = field(default_factory=dict)
    top_self: list[tuple[str, float]] = field(default_factory=list)  # leaf functions


@dataclass
class Recording:
    tool: str
    raw_file: Path
    folded: bool  # py-spy's folded stacks (else a cProfile text report, not summarized)


def py_spy_exe() -> str | None:
    """The venv's py-spy first: `pip install py-spy` into .venv is the documented way."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


@contextlib.contextmanager
def profiled(raw_stem: Path) -> Iterator[Recording]:
    """Profiles this process while the block runs; raw data goes to ``raw_stem`` + suffix."""
    exe = py_spy_exe()
    if exe is not None:
        tool = f"py-spy {RATE_HZ} Hz, all threads, idle excluded"
        rec = Recording(tool, Path(f"{raw_stem}.folded"), folded=True)
        with _py_spy(exe, rec.raw_file):
            yield rec
        return
    tool = "cProfile (main thread only; py-spy not installed)"
    rec = Recording(tool, Path(f"{raw_stem}.pstats.txt"), folded=False)
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield rec
    finally:
        prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(40)
    rec.raw_file.write_text(buf.getvalue())


@contextlib.contextmanager
def _py_spy(exe: str, out: Path) -> Iterator[None]:
    # --nonblocking: pausing the process at every sample would slow what is measured.
    proc = subprocess.Popen(
        [
            exe, "record", "--pid", str(os.getpid()), "--rate", str(RATE_HZ),
            "--format", "raw", "--output", str(out), "--nonblocking", "--threads",
            "--full-filenames",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.0)  # let it attach before the measured work starts
    if proc.poll() is not None:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise BenchFailure(f"py-spy could not attach: {err}")
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def summarize(
    rec: Recording,
    seconds: float,
    owners: list[tuple[str, str]],
    phase_of: Callable[[list[str]], str],
) -> Summary:
    """``owners``: (file path fragment, label), the leaf-most matching frame wins (so stdlib
    helpers count for the library that called them); ``phase_of``: a main-thread stack's
    phase. A cProfile recording has no samples to summarize."""
    if not rec.folded:
        return Summary()
    threads: Counter[str] = Counter()
    by_owner: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    main = 0
    for line in rec.raw_file.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        head, _, rest = stack.partition(";")
        thread_name = head.split(": ", 1)[1] if ": " in head else head
        frames = rest.split(";") if rest else []
        is_sqlite = any("/aiosqlite/" in f for f in frames) and thread_name != "MainThread"
        threads[SQLITE_THREAD if is_sqlite else thread_name] += count
        if thread_name != "MainThread":
            continue
        main += count
        owner = "other (stdlib, C)"
        for f in reversed(frames):
            file = f.rsplit("(", 1)[1] if "(" in f else f
            hit = next((o for pat, o in owners if pat in file), None)
            if hit:
                owner = hit
                break
        by_owner[owner] += count
        phases[phase_of(frames)] += count
        if frames:
            name, _, where = frames[-1].partition(" (")
            short = where.rstrip(")").split("site-packages/")[-1].replace(str(Path.cwd()) + "/", "")
            leaves[f"{name} ({short})"] += count
    wall_samples = max(seconds * RATE_HZ, 1.0)
    main_samples = max(main, 1)

    def pct(c: Counter[str], total: float) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in c.most_common()}

    return Summary(
        threads=pct(threads, wall_samples),
        main_by_owner=pct(by_owner, main_samples),
        main_by_phase=pct(phases, main_samples),
        top_self=[(k, round(100 * v / main_samples, 1)) for k, v in leaves.most_common(15)],
    )
