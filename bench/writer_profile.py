"""Where the writer's time goes: one extra drain under a profiler, and how its samples are
attributed to the writer's phases and to the code (library) that spent them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import profiling
from bench.writer_drain import Census, Rig, drain, restore_outbox, warmup_entries

# The leaf-most frame whose file matches wins; stdlib helpers go to the caller that owns them.
OWNERS: list[tuple[str, str]] = [
    ("/persistence/projection.py", "project.py: parse entries, build rows, apply()"),
    ("/persistence/writer.py", "writer.py: loop, _entries() decoding"),
    ("/sqlalchemy/", "SQLAlchemy: statement/param processing, result, pool"),
    ("/asyncpg/", "asyncpg driver"),
    ("/aiosqlite/", "aiosqlite (main-thread side: queue hand-off)"),
    ("/redis/", "redis-py: commands, reply parsing"),
    ("/hiredis/", "redis-py: commands, reply parsing"),
    ("/bench/", "bench harness (progress polling)"),
    ("/asyncio/", "event loop (asyncio/uvloop)"),
    ("/uvloop/", "event loop (asyncio/uvloop)"),
]
SQL_PHASE = "SQL write: apply() + COMMIT (incl. SQLAlchemy greenlet)"
# (function name suffix, phase): the leaf-most writer step on the stack wins.
PHASES: list[tuple[str, str]] = [
    ("Batch.add", "parse outbox entries (Batch.add)"),
    ("_commit", SQL_PHASE),
    ("_read", "XREADGROUP + decode reply"),
    ("take_lease", "lease script"),
    ("xack", "XACK"),
    ("trim", "trim"),
    ("xautoclaim", "XAUTOCLAIM"),
]


@dataclass
class Profile:
    tool: str
    backend: str
    batch_size: int
    seconds: float
    rate_hz: int
    txns_per_s: float
    threads: dict[str, float]  # thread -> % of the wall time it was busy (sampled)
    main_by_owner: dict[str, float]  # % of the main thread's busy samples
    main_by_phase: dict[str, float]
    top_self: list[tuple[str, float]]  # leaf functions, % of the main thread's samples
    raw_file: str


def phase_of(frames: list[str]) -> str:
    """The writer step a main-thread sample belongs to."""
    for f in reversed(frames):
        name = f.split(" (", 1)[0]
        hit = next((p for key, p in PHASES if name.endswith(key)), None)
        if hit:
            return hit
    if frames and not frames[0].startswith("_run_module_as_main"):
        # SQLAlchemy's async API runs the statement work in a greenlet, whose stack has no
        # caller frames: it is the SQL write.
        if any("/sqlalchemy/" in f for f in frames):
            return SQL_PHASE
        return "other (no caller frames)"
    if any("/redis/" in f for f in frames):
        return "Redis I/O callbacks (caller unknown)"
    if frames and frames[-1].startswith("Runner.run"):
        return "event loop itself (uvloop C: polling, callbacks)"
    return "other writer loop / bench polling"


async def profile_writer(
    rig: Rig,
    backend: str,
    batch_size: int,
    payload: list[bytes],
    census: Census,
    events: int,
    out: Path,
) -> Profile:
    """One more drain under a profiler, of the first half of the usage transactions (not
    verified, and not counted in the results: the profiler costs some throughput)."""
    await restore_outbox(rig, payload)
    engine = await rig.srv.dbs.fresh(backend)
    warm_at = warmup_entries(census, batch_size, events)
    until = census.setup_entries + events // 2
    try:
        with profiling.profiled(out / f"writer-profile-{backend}") as rec:
            d = await drain(rig, engine, backend, batch_size, census, warm_at, until)
    finally:
        await engine.dispose()
    s = profiling.summarize(rec, d.total_seconds, OWNERS, phase_of)
    return Profile(
        tool=rec.tool,
        backend=backend,
        batch_size=batch_size,
        seconds=d.total_seconds,
        rate_hz=profiling.RATE_HZ,
        txns_per_s=d.txns_per_s,
        threads=s.threads,
        main_by_owner=s.main_by_owner,
        main_by_phase=s.main_by_phase,
        top_self=s.top_self,
        raw_file=str(rec.raw_file),
    )
