"""Outbox writer throughput into SQLite and PostgreSQL, side by side with the check rate.

Goal (from the issue): sustained writer throughput at least 2x the sidecar's peak check rate
on the same machine. One run measures both, on this machine, against its own servers
(bench.servers): the check rate (bench.checkrate); the writer draining a filled outbox per
backend and batch size, verified after every drain (bench.writer_drain); a profile when a
backend misses the goal (bench.writer_profile); the writer under peak check load
(bench.writer_mixed). Results: a Markdown table on stdout, ``<out>/writer.md`` and
``<out>/writer.json`` (bench.writer_report). A wrong result exits with status 1.

    .venv/bin/python -m bench.writer [--events 50000] [--out bench/results] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench import servers
from bench.checkrate import GRANT, account_names, check_rate_direct, check_rate_http, setup_accounts
from bench.harness import (
    BenchFailure,
    CpuProbe,
    Load,
    busy_before_start,
    code_state,
    host_info,
    log,
    package_version,
    write_results,
)
from bench.writer_drain import (
    Census,
    Drain,
    Fill,
    Rig,
    drain,
    dump_outbox,
    fill_outbox,
    outbox_census,
    redis_truth,
    restore_outbox,
    verify,
    warmup_entries,
)
from bench.writer_mixed import WIRINGS, mixed_run
from bench.writer_profile import profile_writer
from bench.writer_report import GOAL, method, render
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import RedisClient, connect
from sidecar.runtime.writer_runner import tune_gc

# The batch size of the profile and of the runs under check load (the sweep covers others).
DEFAULT_BATCH = 5000  # the service default (SIDECAR_WRITER_BATCH_SIZE)
WRITER_FILES = [
    "sidecar/persistence/writer.py",
    "sidecar/persistence/projection.py",
    "sidecar/persistence/db.py",
]
LIBRARIES = ("redis", "hiredis", "sqlalchemy", "aiosqlite", "asyncpg", "aiohttp")
# Option defaults of a full run and of --quick (a smoke test: it must not overwrite the
# tracked results in bench/results).
FULL: dict[str, Any] = dict(events=50_000, accounts=1000, batch_sizes="500,2000,5000", shards="1,2")
FULL |= dict(profile="auto", warmup=1.0, seconds=5.0, out=Path("bench/results"))
QUICK: dict[str, Any] = dict(events=5_000, accounts=200, batch_sizes=str(DEFAULT_BATCH), shards="1")
QUICK |= dict(profile="never", warmup=0.5, seconds=1.0)
QUICK |= dict(out=Path(tempfile.gettempdir()) / "cs-bench-writer-quick")


@dataclass
class Config:
    events: int
    accounts: int
    concurrency: int
    warmup_s: float
    measure_s: float
    batch_sizes: list[int]
    shards: list[int]
    out: Path
    profile: str
    seed: int
    drain_timeout_s: float
    mixed: bool
    mixed_s: float
    mixed_warmup_s: float
    quick: bool = False


async def run(cfg: Config) -> dict[str, Any]:
    started = datetime.now(UTC).replace(microsecond=0).isoformat()
    t_start = time.perf_counter()
    quiet = await busy_before_start()
    async with servers.started("cs-bench-writer-") as srv:
        redis = connect(srv.redis.url, max_connections=max(64, cfg.concurrency))
        # The writer's own client, as `serve` and `credit-sidecar writer` make it.
        wredis = connect(srv.redis.url, max_connections=4, decode_responses=True)
        try:
            result = await _measure(cfg, srv, redis, wredis)
        finally:
            await redis.aclose()
            await wredis.aclose()
    result["machine"]["busy_before_start_pct"] = quiet
    return {"started": started, "elapsed_s": round(time.perf_counter() - t_start, 1)} | result


async def _measure(
    cfg: Config, srv: servers.Servers, redis: RedisClient, wredis: RedisClient
) -> dict[str, Any]:
    accounts = account_names(cfg.accounts)
    probe = CpuProbe(srv.watched())

    def rig_of(shards: int) -> Rig:
        keys = KeySpace(shards)
        ledger = Ledger(redis, keys)
        return Rig(srv, redis, wredis, keys, ledger, accounts, probe, cfg.drain_timeout_s)

    rig = rig_of(1)
    ledger = rig.ledger
    machine = host_info() | {
        "redis": await servers.redis_version(redis),
        **await srv.dbs.versions(),
        "libraries": {d: package_version(d) for d in LIBRARIES},
        "temp_dir": str(srv.tmp),
        "code": code_state(WRITER_FILES),
    }
    load = Load(cfg.concurrency, cfg.warmup_s, cfg.measure_s)

    # 1. check rate
    log(f"setting up {cfg.accounts} accounts")
    await setup_accounts(ledger, accounts, cfg.concurrency)
    log("check rate: Ledger.deduct direct")
    direct = await check_rate_direct(ledger, accounts, load, cfg.seed, probe)
    log(f"  {direct.per_s:,.0f} checks/s")
    log("check rate: POST /v1/check over HTTP")
    http, http_info = await check_rate_http(srv.redis.url, accounts, load, cfg.seed, probe, srv.tmp)
    log(f"  {http.per_s:,.0f} checks/s")
    peak = max(direct.per_s, http.per_s)

    # 2. per shard count: the outbox to drain, and what SQL must hold after each drain;
    # 3. the writer, per backend and batch size, verified after every drain. The process
    # tunes its garbage collector as `credit-sidecar writer` does.
    tune_gc()
    drains: list[dict[str, Any]] = []
    fills: dict[int, Fill] = {}
    # The fewest shards last: the profile and the mixed runs below use the state it leaves.
    for shards in sorted(cfg.shards, reverse=True):
        srig = rig_of(shards)
        fills[shards], census, truth = await _fill(cfg, srig)
        payload = await dump_outbox(srig)
        log(
            f"  {fills[shards].per_s:,.0f}/s while filling; {shards} outbox shard(s), "
            f"{census.entries:,} entries"
        )
        for backend in servers.BACKENDS:
            for bs in cfg.batch_sizes:
                d = await _drain_verified(srig, payload, census, truth, backend, bs, cfg.events)
                ratio = d.txns_per_s / peak
                drains.append(asdict(d) | {"ratio": round(ratio, 3), "goal_met": ratio >= GOAL})
                log(
                    f"  {backend:10} batch {bs:5} shards {shards}: {d.txns_per_s:9,.0f} txns/s  "
                    f"({ratio:.2f}x peak check rate)  verified"
                )
    rig, fill = srig, fills[min(fills)]
    goal = {b: _goal([d for d in drains if d["backend"] == b], peak) for b in servers.BACKENDS}

    # 4. profile when below the goal
    profiles: list[dict[str, Any]] = []
    for backend in servers.BACKENDS:
        if cfg.profile == "always" or (cfg.profile == "auto" and not goal[backend]["met"]):
            log(f"profiling the writer on {backend} (batch {DEFAULT_BATCH})")
            p = await profile_writer(
                rig, backend, DEFAULT_BATCH, payload, census, cfg.events, cfg.out
            )
            profiles.append(asdict(p))

    # 5. the writer under peak check load: in the app's event loop, or in its own process
    mixed: list[dict[str, Any]] = []
    mixed_load = Load(cfg.concurrency, cfg.mixed_warmup_s, cfg.mixed_s)
    for backend in servers.BACKENDS if cfg.mixed else ():
        for wiring in WIRINGS:
            log(f"writer under check load ({backend}, batch {DEFAULT_BATCH}): {wiring}")
            x = await mixed_run(rig, backend, wiring, mixed_load, cfg.seed, DEFAULT_BATCH)
            log(
                f"  checks {x['checks_per_s']:,.0f}/s, writer {x['writer_txns_per_s']:,.0f}/s, "
                f"backlog {x['backlog_at_end']:,} at the end"
            )
            mixed.append(x)

    config = asdict(cfg) | {"out": str(cfg.out)}
    return {
        "machine": machine,
        "config": config,
        "check": {
            "concurrency": cfg.concurrency,
            "direct": asdict(direct),
            "http": asdict(http) | http_info,
            "peak_per_s": peak,
            "peak_from": "direct Ledger.deduct" if direct.per_s >= http.per_s else "HTTP",
        },
        "fill": {k: v for k, v in asdict(fill).items() if k != "spent"},
        "census": asdict(census),
        "writer": drains,
        "goal": goal,
        "profiles": profiles,
        "mixed": mixed,
        "method": method(config, machine["cpu_count"], http_info, DEFAULT_BATCH),
    }


async def _fill(cfg: Config, rig: Rig) -> tuple[Fill, Census, dict[str, tuple[int, int]]]:
    """A fresh Redis with the accounts and ``cfg.events`` usage transactions in the outbox;
    checks Redis itself holds what the fill did."""
    await rig.redis.flushall()
    log(f"filling {rig.keys.shards} outbox shard(s): {cfg.events:,} usage transactions")
    await setup_accounts(rig.ledger, rig.accounts, cfg.concurrency)
    fill = await fill_outbox(rig.ledger, rig.accounts, cfg.events, cfg.concurrency, cfg.seed)
    census = await outbox_census(rig.redis, rig.keys)
    if census.txns != cfg.events + cfg.accounts:
        raise BenchFailure(
            f"outbox holds {census.txns} transactions, expected {cfg.events + cfg.accounts}"
        )
    truth = await redis_truth(rig)
    for a, (balance, _seq) in truth.items():
        if balance != GRANT - fill.spent[a]:
            raise BenchFailure(
                f"Redis balance of {a} is {balance}, expected {GRANT - fill.spent[a]}"
            )
    return fill, census, truth


async def _drain_verified(
    rig: Rig,
    payload: list[bytes],
    census: Census,
    truth: dict[str, tuple[int, int]],
    backend: str,
    batch_size: int,
    events: int,
) -> Drain:
    await restore_outbox(rig, payload)
    engine = await rig.srv.dbs.fresh(backend)
    try:
        warm_at = warmup_entries(census, batch_size, events)
        d = await drain(rig, engine, backend, batch_size, census, warm_at)
        t_verify = time.perf_counter()
        d.checks = await verify(rig, engine, census, truth)
        d.verified = True
        log(
            f"    drained in {d.total_seconds:.1f}s, verified in "
            f"{time.perf_counter() - t_verify:.1f}s"
        )
    finally:
        await engine.dispose()
    return d


def _goal(mine: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    best = max(mine, key=lambda d: d["ratio"])
    one_shard = max((d for d in mine if d["shards"] == 1), key=lambda d: d["ratio"], default=None)
    return {
        "met": best["ratio"] >= GOAL,
        "best_ratio": best["ratio"],
        "best_batch": best["batch_size"],
        "best_shards": best["shards"],
        "best_ratio_one_shard": one_shard["ratio"] if one_shard else None,
        "best_txns_per_s": best["txns_per_s"],
        "needed_txns_per_s": round(GOAL * peak, 1),
        "ratio_at_default_batch": next(
            (d["ratio"] for d in mine if d["batch_size"] == DEFAULT_BATCH), None
        ),
    }


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m bench.writer", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    # Defaults of None are filled from FULL or QUICK: explicit options win over --quick.
    p.add_argument("--events", type=int, help="usage transactions to drain (50000)")
    p.add_argument("--accounts", type=int, help="accounts the checks spread over (1000)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent checks")
    p.add_argument("--warmup", type=float, help="check warm-up seconds (1)")
    p.add_argument("--seconds", type=float, help="check measurement seconds (5)")
    p.add_argument("--batch-sizes", help="comma-separated (500,2000,5000)")
    p.add_argument("--shards", help="outbox shard counts to drain, comma-separated (1,2)")
    p.add_argument("--out", type=Path, help="results directory (bench/results)")
    p.add_argument(
        "--profile",
        choices=["auto", "always", "never"],
        help="profile the writer (auto, the default: when a backend misses the goal)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--no-mixed", action="store_true", help="skip the runs of the writer under check load"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test in about half a minute: 5000 events, 200 accounts, batch 500 only, "
        "no profile, short windows; results go to a temp dir unless --out is given",
    )
    a = p.parse_args(argv)
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.events < 1000 or a.accounts < 1 or a.concurrency < 1:
        p.error("need --events >= 1000, --accounts >= 1, --concurrency >= 1")
    return Config(
        events=a.events,
        accounts=a.accounts,
        concurrency=a.concurrency,
        warmup_s=a.warmup,
        measure_s=a.seconds,
        batch_sizes=[int(x) for x in a.batch_sizes.split(",") if x],
        shards=sorted({int(x) for x in a.shards.split(",") if x}),
        out=a.out,
        profile=a.profile,
        seed=a.seed,
        drain_timeout_s=300.0,
        mixed=not a.no_mixed,
        mixed_s=min(a.seconds, 2.0),
        mixed_warmup_s=min(a.warmup, 0.5),
        quick=a.quick,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    cfg.out.mkdir(parents=True, exist_ok=True)
    try:
        result = uvloop.run(run(cfg))
    except BenchFailure as e:
        print(f"\nBENCH FAILED: {e}", file=sys.stderr)
        return 1
    md = render(result)
    write_results(cfg.out, "writer", md, result)
    print(md)
    log(f"wrote {cfg.out / 'writer.md'} and {cfg.out / 'writer.json'} ({result['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
