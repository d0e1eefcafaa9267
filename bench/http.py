"""The HTTP hot path, side by side in one run: the sidecar's check against the HTTP ceiling of
one Python process, the seed design (one SQL transaction per check), and Redis itself.

Every target runs as its own server process on this machine, loaded by ``wrk`` (C, one
thread, the same connections and duration for all), after a warm-up run that is discarded:

1. ``bare``: an aiohttp handler on uvloop that reads the body and returns 200 (bench/bare_app.py);
2. the sidecar (`credit-sidecar serve`, writer in its own process as deployed): ``POST
   /v1/check`` with 1 and 2 workers, and ``/auth/nginx`` as nginx's auth_request sends it;
   also one hot account (every check on the same account until its credits run out) and
   accounts with 20 buckets each;
3. ``seed``: the Laravel article's deduction behind the same HTTP stack (bench/seed_app.py),
   on SQLite and on PostgreSQL;
4. ``redis-benchmark``: EVALSHA of deduct.lua against a plain SET, both pipelined.

Reported: requests/s, latency p50/p99/p99.9, server CPU per request, Redis commands per
check, and the ratios check/bare, check/seed and script/SET. Every load run is verified: RedisClient
(or SQL) spent exactly what the 2xx answers say (within the requests in flight when wrk
stopped), the hot account exactly its credits, never more. Results: bench/results/http.md,
http.json and http.png.

    .venv/bin/python -m bench.http [--seconds 10] [--connections 64] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench import servers
from bench.checkrate import ADMIN_TOKEN, GRANT, SERVICE_TOKEN, account_names, setup_accounts
from bench.harness import BenchFailure, CpuProbe, busy_before_start, host_info, log, write_results
from bench.http_report import plot, render
from bench.load import Server, wrk
from bench.pinned import pinned
from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.lua import source
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.embedded import free_port


@dataclass
class Config:
    seconds: float
    warmup: float
    connections: int
    accounts: int
    out: Path
    quick: bool
    sustained: float = 60.0


@dataclass
class Run:
    target: str
    requests: int
    ok: int  # 2xx
    per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_us_per_req: float  # server processes (and Redis) CPU per request
    server_cpu_pct: float
    redis_cpu_pct: float
    redis_cmds_per_req: float | None
    checks: list[str] = field(default_factory=list)
    warmup_ok: int = 0  # 2xx of the discarded warm-up run (they spent credits too)


async def commands(redis: RedisClient) -> int:
    stats: Any = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


async def measure(
    cfg: Config,
    target: str,
    server: Server,
    redis: RedisClient | None,
    probe: CpuProbe,
    script: str,
    args: list[str],
    connections: int | None = None,
) -> tuple[Run, dict[str, Any]]:
    conns = connections or cfg.connections
    server.in_flight += 2 * conns  # the warm-up's and the run's
    warm = await asyncio.to_thread(wrk, server.url, script, args, conns, cfg.warmup)
    before_cmds = await commands(redis) if redis is not None else 0
    watched = probe.plus("server", server.pids)
    a = watched.snap()
    res = await asyncio.to_thread(wrk, server.url, script, args, conns, cfg.seconds)
    b = watched.snap()
    after_cmds = await commands(redis) if redis is not None else 0
    cpu = CpuProbe.usage(a, b)
    seconds = res["duration_us"] / 1e6
    ok = res["requests"] - res["non2xx"]
    wall = b.wall - a.wall
    cpu_s = (cpu["server_pct"] + cpu.get("redis_server_pct", 0.0)) / 100 * wall
    run = Run(
        target=target,
        requests=res["requests"],
        ok=ok,
        per_s=round(res["requests"] / seconds, 1),
        p50_ms=res["p50_us"] / 1000,
        p99_ms=res["p99_us"] / 1000,
        p999_ms=res["p999_us"] / 1000,
        cpu_us_per_req=round(cpu_s / max(res["requests"], 1) * 1e6, 1),
        server_cpu_pct=cpu["server_pct"],
        redis_cpu_pct=cpu.get("redis_server_pct", 0.0),
        warmup_ok=warm["requests"] - warm["non2xx"],
        redis_cmds_per_req=(
            round((after_cmds - before_cmds) / max(res["requests"], 1), 2)
            if redis is not None
            else None
        ),
    )
    if res["socket_errors"]:
        raise BenchFailure(f"{target}: {res['socket_errors']} socket errors")
    log(
        f"  {target:32} {run.per_s:9,.0f} req/s  p50 {run.p50_ms:.2f} ms  p99 {run.p99_ms:.2f} ms"
        f"  p99.9 {run.p999_ms:.2f} ms  {run.cpu_us_per_req:.0f} µs CPU/req"
    )
    return run, res


async def half_load(
    cfg: Config, server: Server, redis: RedisClient, probe: CpuProbe, peak: float
) -> Run:
    """The check's latency at about half its peak rate: wrk is a closed loop, so the load is
    set by its connections; short probes find the count whose rate is nearest half the peak."""
    args = [str(cfg.accounts), SERVICE_TOKEN]
    best, best_gap = 1, float("inf")
    for c in (1, 2, 4, 8, 16):
        server.in_flight += c
        res = await asyncio.to_thread(wrk, server.url, "check.lua", args, c, 1.0)
        rate = res["requests"] / (res["duration_us"] / 1e6)
        probe_ok = res["requests"] - res["non2xx"]
        server.probe_ok += probe_ok
        if abs(rate - peak / 2) < best_gap:
            best, best_gap = c, abs(rate - peak / 2)
    run, _ = await measure(
        cfg,
        f"sidecar POST /v1/check at ~half load ({best} conn.)",
        server,
        redis,
        probe,
        "check.lua",
        args,
        connections=best,
    )
    run.warmup_ok += server.probe_ok
    return run


async def sustained_run(
    cfg: Config,
    srv: servers.Servers,
    redis: RedisClient,
    ledger: Ledger,
    accounts: list[str],
    rate: float | None = None,
) -> dict[str, Any]:
    """The sidecar as deployed (1 worker, the writer in its own process, SQLite) under a
    sustained check load, flat out or offered at ``rate`` checks/s (wrk's connections paced):
    the outbox backlog and lag are sampled every second, their trend tells whether the writer
    keeps up, and after the load the writer drains to zero with every check in SQL."""
    from sidecar.persistence.outbox_status import outbox_status

    await redis.flushall()
    await setup_accounts(ledger, accounts, 64)
    port = free_port()
    data = srv.tmp / f"sidecar-sustained-{'paced' if rate else 'flat'}"
    pace = ["1", "/v1/check", str(max(1, round(cfg.connections * 1000 / rate)))] if rate else []
    env = sidecar_env(srv.redis.url, data, 1) | {"SIDECAR_LISTEN": f"127.0.0.1:{port}"}
    samples: list[dict[str, float]] = []
    async with Server(
        "sidecar sustained", [sys.executable, "-m", "sidecar", "serve"], env, port
    ) as s:
        load = asyncio.create_task(
            asyncio.to_thread(
                wrk,
                s.url,
                "check.lua",
                [str(cfg.accounts), SERVICE_TOKEN, *pace],
                cfg.connections,
                cfg.sustained,
            )
        )
        t0 = time.perf_counter()
        while not load.done():
            st = (await outbox_status(redis, ledger.keys, int(time.time() * 1000)))[0]
            samples.append(
                {
                    "t": round(time.perf_counter() - t0, 1),
                    "unwritten": st["unwritten"],
                    "lag_s": st["lag_s"],
                }
            )
            await asyncio.sleep(1.0)
        res = await load
        drained_in = None
        t1 = time.perf_counter()
        while time.perf_counter() - t1 < 60:
            st = (await outbox_status(redis, ledger.keys, int(time.time() * 1000)))[0]
            if st["unwritten"] == 0:
                drained_in = round(time.perf_counter() - t1, 1)
                break
            await asyncio.sleep(0.2)
    if drained_in is None:
        raise BenchFailure("WRONG RESULT (sustained): the writer did not drain the outbox")
    import sqlite3

    db = sqlite3.connect(data / "ledger.db")
    try:
        usage = db.execute(
            "SELECT count(*) FROM credit_transactions WHERE type = 'usage'"
        ).fetchone()[0]
    finally:
        db.close()
    ok = res["requests"] - res["non2xx"]
    total, lowest = await spent(ledger, accounts, GRANT)
    if usage != total or lowest < 0 or not ok <= total <= ok + cfg.connections:
        raise BenchFailure(f"WRONG RESULT (sustained): {ok} allowed, {total} spent, {usage} in SQL")
    worst = max(samples, key=lambda x: x["unwritten"]) if samples else {"unwritten": 0, "lag_s": 0}
    out = {
        "seconds": cfg.sustained,
        "offered_per_s": rate,
        "checks_per_s": round(res["requests"] / (res["duration_us"] / 1e6), 1),
        "max_unwritten": worst["unwritten"],
        "max_lag_s": max((x["lag_s"] for x in samples), default=0.0),
        "drained_in_s": drained_in,
        "sql_usage_rows": usage,
        # The backlog's trend over the second half of the run, entries/s: about 0 when the
        # writer keeps up (the backlog oscillates by a batch or so), positive when it falls
        # behind (the lag would grow without bound).
        "backlog_growth_per_s": growth(samples[len(samples) // 2 :]),
        "samples": samples,
    }
    log(
        f"  sustained {cfg.sustained:g} s: {out['checks_per_s']:,.0f} checks/s, backlog at most "
        f"{out['max_unwritten']:,}, lag at most {out['max_lag_s']:.1f} s, drained in "
        f"{drained_in} s, {usage:,} rows in SQL"
    )
    return out


def growth(samples: list[dict[str, float]]) -> float:
    """Least-squares slope of the unwritten entries over time."""
    if len(samples) < 2:
        return 0.0
    ts, ys = [x["t"] for x in samples], [x["unwritten"] for x in samples]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    cov = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True))
    return round(cov / var, 1) if var else 0.0


async def spent(ledger: Ledger, accounts: list[str], grant: int) -> tuple[int, int]:
    """Credits spent over ``accounts`` (each granted ``grant``) and the lowest balance."""
    total, lowest = 0, grant
    for a in accounts:
        b = await ledger.balance(a)
        total += grant - b.balance
        lowest = min(lowest, b.balance)
    return total, lowest


def verify_spent(target: str, runs: list[Run], total: int, lowest: int, slack: int) -> str:
    """Redis spent what the 2xx answers say (warm-ups included), give or take the requests
    in flight when wrk stopped (at most ``slack``); no balance below zero."""
    ok = sum(r.ok + r.warmup_ok for r in runs)
    if lowest < 0:
        raise BenchFailure(f"WRONG RESULT ({target}): a balance went negative ({lowest})")
    if not ok <= total <= ok + slack:
        raise BenchFailure(f"WRONG RESULT ({target}): {ok} checks allowed but {total} spent")
    return f"{total:,} credits spent for {ok:,} allowed checks (+ <= {slack} in flight)"


async def verify_seed(run: Run, db: str, slack: int) -> str:
    """The seed's SQL ledger holds one usage row of 1 credit per allowed check."""
    from sqlalchemy import text

    from bench.seed_app import seed_engine

    engine = seed_engine(db)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*), coalesce(-sum(amount), 0) FROM seed_credit_transactions"
                        " WHERE type = 'usage'"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    count, total = int(row[0]), int(row[1])
    ok = run.ok + run.warmup_ok
    if count != total or not ok <= count <= ok + slack:
        raise BenchFailure(
            f"WRONG RESULT ({run.target}): {ok} allowed, {count} rows, {total} spent"
        )
    return f"{count:,} usage rows ({total:,} credits) for {ok:,} allowed checks"


def sidecar_env(redis_url: str, data: Path, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return env | {
        "SIDECAR_REDIS_URL": redis_url,
        "SIDECAR_DATA_DIR": str(data),
        "SIDECAR_ADMIN_TOKEN": ADMIN_TOKEN,
        "SIDECAR_SERVICE_TOKEN": SERVICE_TOKEN,
        "SIDECAR_WORKERS": str(workers),
    }


async def run(cfg: Config) -> dict[str, Any]:
    started = datetime.now(UTC).replace(microsecond=0).isoformat()
    t0 = time.perf_counter()
    quiet = await busy_before_start()
    runs: list[Run] = []
    async with servers.started("cs-bench-http-") as srv:
        redis = connect(srv.redis.url, max_connections=64)
        probe = CpuProbe(srv.watched())
        ledger = Ledger(redis, KeySpace())
        accounts = account_names(cfg.accounts)
        py = sys.executable
        try:
            # 1. the HTTP ceiling
            port = free_port()
            async with Server(
                "bare", [py, "-m", "bench.bare_app", "--port", str(port)], dict(os.environ), port
            ) as s:
                r, _ = await measure(
                    cfg, "bare aiohttp handler", s, None, probe, "check.lua", ["1", ""]
                )
                runs.append(r)

            # 2. the sidecar
            for workers in (1, 2):
                await redis.flushall()
                await setup_accounts(ledger, accounts, 64)
                keys_file = srv.tmp / "keys.txt"
                if workers == 1:
                    api_keys = ApiKeys(ledger)
                    lines = []
                    for a in accounts[: min(200, len(accounts))]:
                        _, key = await api_keys.create(a, name="bench")
                        lines.append(f"{a} {key}")
                    keys_file.write_text("\n".join(lines) + "\n")
                port = free_port()
                env = sidecar_env(srv.redis.url, srv.tmp / f"sidecar-{workers}", workers)
                env["SIDECAR_LISTEN"] = f"127.0.0.1:{port}"
                argv = [py, "-m", "sidecar", "serve"]
                async with Server(f"sidecar x{workers}", argv, env, port) as s:
                    name = f"sidecar POST /v1/check, {workers} worker{'s' if workers > 1 else ''}"
                    r, _ = await measure(
                        cfg, name, s, redis, probe, "check.lua", [str(cfg.accounts), SERVICE_TOKEN]
                    )
                    mine = [r]
                    if workers == 1:
                        half = await half_load(cfg, s, redis, probe, r.per_s)
                        mine.append(half)
                        r2, _ = await measure(
                            cfg,
                            "sidecar /auth/nginx (API key), 1 worker",
                            s,
                            redis,
                            probe,
                            "nginx_auth.lua",
                            [str(keys_file)],
                        )
                        mine.append(r2)
                    slack = s.in_flight
                total, lowest = await spent(ledger, accounts, GRANT)
                note = verify_spent(name, mine, total, lowest, slack)
                for x in mine:
                    x.checks.append(note)
                runs += mine

            assert srv.redis.process is not None
            pinned_result = await pinned(
                srv.redis.process.pid,
                redis,
                ledger,
                accounts,
                sidecar_env(srv.redis.url, srv.tmp / "sidecar-pinned", 1),
                srv.tmp / "sidecar-pinned",
                connections=cfg.connections,
                seconds=cfg.seconds,
                warmup=cfg.warmup,
            )

            sustained = await sustained_run(cfg, srv, redis, ledger, accounts)
            # And at a rate a deployment would run at: three quarters of the peak.
            peak = next(r.per_s for r in runs if r.target.endswith("1 worker"))
            sustained_paced = await sustained_run(
                cfg, srv, redis, ledger, accounts, rate=0.75 * peak
            )

            # hot account: every check on one account with 5,000 credits
            await redis.flushall()
            await ledger.configure_account("acct-00000")
            await ledger.grant("acct-00000", "hot", 5000)
            port = free_port()
            env = sidecar_env(srv.redis.url, srv.tmp / "sidecar-hot", 1) | {
                "SIDECAR_LISTEN": f"127.0.0.1:{port}"
            }
            async with Server("sidecar hot", [py, "-m", "sidecar", "serve"], env, port) as s:
                res = await asyncio.to_thread(
                    wrk, s.url, "check.lua", ["1", SERVICE_TOKEN], cfg.connections, cfg.seconds
                )
                ok = res["requests"] - res["non2xx"]
                bal = (await ledger.balance("acct-00000")).balance
                if ok != 5000 or bal != 0:
                    raise BenchFailure(
                        f"WRONG RESULT (hot account): {ok} allowed of 5000 credits, balance {bal}"
                    )
                runs.append(
                    Run(
                        "sidecar hot account (5,000 credits, then 402)",
                        res["requests"],
                        ok,
                        round(res["requests"] / (res["duration_us"] / 1e6), 1),
                        res["p50_us"] / 1000,
                        res["p99_us"] / 1000,
                        res["p999_us"] / 1000,
                        0.0,
                        0.0,
                        0.0,
                        None,
                        [f"exactly 5,000 allowed, {res['non2xx']:,} refused with 402, balance 0"],
                    )
                )
                log(f"  hot account: {ok} allowed, {res['non2xx']} refused, balance {bal}")

            # 20 buckets per account
            await redis.flushall()
            few = accounts[: min(200, len(accounts))]
            for a in few:
                await ledger.configure_account(a)
                for i in range(20):
                    await ledger.grant(a, f"b{i:02d}", 10**9, priority=i)
            port = free_port()
            env = sidecar_env(srv.redis.url, srv.tmp / "sidecar-20", 1) | {
                "SIDECAR_LISTEN": f"127.0.0.1:{port}"
            }
            async with Server("sidecar 20 buckets", [py, "-m", "sidecar", "serve"], env, port) as s:
                r, _ = await measure(
                    cfg,
                    "sidecar /v1/check, 20 buckets/account",
                    s,
                    redis,
                    probe,
                    "check.lua",
                    [str(len(few)), SERVICE_TOKEN],
                )
            total, lowest = await spent(ledger, few, 20 * 10**9)
            r.checks.append(verify_spent(r.target, [r], total, lowest, 4 * cfg.connections))
            runs.append(r)

            # 3. the seed design
            for backend in ("sqlite", "postgresql"):
                db = f"sqlite:///{srv.tmp / 'seed.db'}" if backend == "sqlite" else srv.dbs.pg_url
                port = free_port()
                argv = [
                    py,
                    "-m",
                    "bench.seed_app",
                    "--db",
                    db,
                    "--port",
                    str(port),
                    "--setup-accounts",
                    str(cfg.accounts),
                    "--service-token",
                    SERVICE_TOKEN,
                ]
                watched = (
                    probe.plus("postgres_db", lambda: servers.postgres_pids(srv.dbs.pg_name))
                    if backend == "postgresql"
                    else probe
                )
                async with Server(f"seed {backend}", argv, dict(os.environ), port) as s:
                    r, _ = await measure(
                        cfg,
                        f"seed design, {backend}",
                        s,
                        None,
                        watched,
                        "check.lua",
                        [str(cfg.accounts), SERVICE_TOKEN],
                    )
                r.checks.append(await verify_seed(r, db, 4 * cfg.connections))
                runs.append(r)

            # 4. Redis itself
            redis_bench = await redis_benchmark(srv, redis, ledger, cfg)
        finally:
            await redis.aclose()
    result = {
        "started": started,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "machine": host_info() | {"busy_before_start_pct": quiet},
        "config": asdict(cfg) | {"out": str(cfg.out)},
        "runs": [asdict(r) for r in runs],
        "redis_benchmark": redis_bench,
        "sustained": sustained,
        "sustained_paced": sustained_paced,
        "pinned": pinned_result,
    }
    return result


async def redis_benchmark(
    srv: servers.Servers, redis: RedisClient, ledger: Ledger, cfg: Config
) -> dict[str, Any]:
    """redis-benchmark (pipelined 16, 50 clients): deduct.lua's EVALSHA against a plain SET."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise BenchFailure("redis-benchmark is missing (apt-get install redis-tools)")
    await redis.flushall()
    account = "acct-00000"
    await ledger.configure_account(account)
    await ledger.grant(account, "rb", GRANT)
    sha = await redis.script_load(source("deduct"))
    k = ledger.keys.for_account(account)
    keys = [
        *k.common(),
        ledger.keys.idempotency(account, "rb:__rand_int__"),
        ledger.keys.usage(account, "tx__rand_int__"),
        ledger.keys.events_for(account),
    ]
    args = [
        account,
        str(int(time.time() * 1000)),
        "tx__rand_int__",
        "86400000",
        "",  # no deadline: redis-benchmark repeats these arguments for minutes
        "1",
        "rb__rand_int__",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    n = 20_000 if cfg.quick else 200_000
    host, port = "127.0.0.1", str(srv.redis.port)
    base = [
        exe,
        "-h",
        host,
        "-p",
        port,
        "-n",
        str(n),
        "-c",
        "50",
        "-P",
        "16",
        "-r",
        "1000000000",
        "-q",
    ]
    out_set = await asyncio.to_thread(_output, [*base, "set", "k:__rand_int__", "v"])
    out_eval = await asyncio.to_thread(
        _output, [*base, "evalsha", sha, str(len(keys)), *keys, *args]
    )
    rates = [_rps(out_set), _rps(out_eval)]
    bal = (await ledger.balance(account)).balance
    if GRANT - bal > n:
        raise BenchFailure(
            f"WRONG RESULT (redis-benchmark): {GRANT - bal} credits spent by {n} calls"
        )
    log(f"  redis-benchmark: SET {rates[0]:,.0f}/s, EVALSHA deduct {rates[1]:,.0f}/s")
    return {
        "set_per_s": rates[0],
        "evalsha_deduct_per_s": rates[1],
        "calls": n,
        "spent": GRANT - bal,
        "pipeline": 16,
        "clients": 50,
    }


def _output(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _rps(out: str) -> float:
    m = re.findall(r"([0-9.]+) requests per second", out)
    if not m:
        raise BenchFailure(f"redis-benchmark printed no rate:\n{out}")
    return float(m[-1])


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m bench.http", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--sustained", type=float, default=60.0, help="seconds of the sustained run")
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--quick", action="store_true", help="2 s runs; results to a temp dir unless --out"
    )
    a = p.parse_args(argv)
    if a.quick:
        a.seconds, a.warmup, a.sustained = min(a.seconds, 2.0), 1.0, 5.0
    out = a.out or (
        Path(tempfile.gettempdir()) / "cs-bench-http-quick" if a.quick else Path("bench/results")
    )
    return Config(a.seconds, a.warmup, a.connections, a.accounts, out, a.quick, a.sustained)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if shutil.which("wrk") is None:
        print("wrk is missing: run scripts/bench-deps.sh (apt-get install wrk)", file=sys.stderr)
        return 2
    try:
        result = uvloop.run(run(cfg))
    except BenchFailure as e:
        print(f"\nBENCH FAILED: {e}", file=sys.stderr)
        return 1
    md = render(result)
    write_results(cfg.out, "http", md, result)
    with contextlib.suppress(Exception):
        plot(result, cfg.out / "http.png")
    print(md)
    log(f"wrote {cfg.out / 'http.md'}, http.json and http.png ({result['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
