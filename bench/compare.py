"""A/B of the ``POST /v1/check`` hot path at two git refs, side by side in one run.

``base`` is a temporary ``git worktree`` of a ref; ``head`` is this working tree (or another
ref's worktree with ``--head``). Each side gets its own redis-server and its own
``python -m sidecar serve`` (1 worker, writer off: the hot path alone, and no writer backlog of
one side's round spilling into the other's), started with ``PYTHONPATH`` and the working
directory at its tree, both on this venv's libraries. Both are seeded the same way through
their own HTTP admin API (the Redis layout may differ between refs), then loaded by ``wrk``
(1 thread, the same connections) in alternating rounds, base-head then head-base (ABBA), so
that machine noise and drift hit both alike. Per round: req/s, p50/p99, the sidecar's CPU per
check and Redis's (``INFO cpu`` used_cpu_sys+user, and ``INFO commandstats`` calls and usec,
of that side's own redis-server). Every side is verified at the end: credits spent, read
through its own API, equal the checks allowed (give or take the requests in flight when wrk
stopped); every answer was a 2xx. Results: ``bench/results/compare.md`` and ``compare.json``.

    .venv/bin/python -m bench.compare --base <ref> [--head <ref>] [--rounds 12] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import uvloop

from bench.checkrate import ADMIN_TOKEN, GRANT, SERVICE_TOKEN, account_names
from bench.compare_report import render
from bench.harness import (
    ROOT,
    BenchFailure,
    CpuProbe,
    Pids,
    busy_before_start,
    host_info,
    log,
    write_results,
)
from bench.load import Server, wrk
from sidecar.redis.embedded import RedisServer, free_port


@dataclass
class Config:
    base: str
    head: str | None  # None: the working tree
    rounds: int
    seconds: float
    warmup: float
    connections: int
    accounts: int
    out: Path
    # head's accounts are created with these settings (PUT /v1/accounts body), base's with none:
    # what a feature costs when it is used (a spending limit, a plan), against before it existed
    head_account: dict[str, Any] = field(default_factory=dict)
    # plans PUT on head before its accounts are seeded ({plan id: PUT /v1/plans body})
    head_plans: dict[str, Any] = field(default_factory=dict)
    # head's checks carry a named token with these scopes (POST /v1/tokens), not the bootstrap one
    head_token: list[str] = field(default_factory=list)


@dataclass
class Round:
    side: str
    round: int
    requests: int
    per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float  # the sidecar's processes, per check
    redis_cpu_us: float  # INFO cpu used_cpu_sys + used_cpu_user, per check
    redis_cmd_us: float  # INFO commandstats usec of the script calls (wall time), per check
    redis_cmds: float  # commands run per check, the scripts' own calls included
    aof_bytes: float  # appended to the AOF per check (what the scripts write)
    other_pct: float  # other processes' CPU, % of one core: the noise this round
    idle_side_pct: float  # the other side's server and Redis meanwhile (should be about 0)
    loadavg: float  # 1-minute load average at the round's end

    @property
    def cpu_us(self) -> float:
        """The sidecar's and Redis's CPU per check: the work a check costs, which the load of
        other processes moves less than the rate (they take CPU away, not add work)."""
        return self.server_cpu_us + self.redis_cpu_us


@dataclass
class Side:
    name: str  # "base" or "head"
    ref: str
    commit: str
    tree: Path
    dirty: list[str] = field(default_factory=list)  # uncommitted changes under sidecar/
    redis: RedisServer | None = None
    server: Server | None = None
    ok: int = 0  # 2xx over every wrk run, warm-ups included
    slack: int = 0  # requests possibly served after wrk stopped counting
    rounds: list[Round] = field(default_factory=list)
    verified: str = ""
    token: str = SERVICE_TOKEN  # what its checks carry


def git(*args: str, cwd: Path = ROOT) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
    except subprocess.CalledProcessError as e:
        raise BenchFailure(f"git {' '.join(args)}: {e.stderr.strip()}") from e


@contextlib.contextmanager
def worktree(ref: str, path: Path) -> Iterator[Path]:
    """A detached worktree of ``ref`` at ``path``, removed at the end."""
    git("worktree", "add", "--detach", "--quiet", str(path), ref)
    try:
        package_dirs(path)
        yield path
    finally:
        with contextlib.suppress(BenchFailure):
            git("worktree", "remove", "--force", str(path))


def package_dirs(tree: Path) -> None:
    """Older refs mapped packages to other folders in pyproject (``sidecar.lua`` = ``lua/``),
    which only an install honours. On ``PYTHONPATH`` such a package would be missing from the
    tree and found by this venv's editable install instead, in the other tree: link it."""
    meta = tomllib.loads((tree / "pyproject.toml").read_text())
    mapping = meta.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    for pkg, folder in mapping.items():
        link = tree / pkg.replace(".", "/")
        if pkg and pkg.replace(".", "/") != folder and not link.exists():
            link.symlink_to((tree / folder).resolve(), target_is_directory=True)


def tree_env(tree: Path, redis_url: str, data: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return env | {
        "PYTHONPATH": str(tree),
        "SIDECAR_REDIS_URL": redis_url,
        "SIDECAR_DATA_DIR": str(data),
        "SIDECAR_ADMIN_TOKEN": ADMIN_TOKEN,
        "SIDECAR_SERVICE_TOKEN": SERVICE_TOKEN,
        "SIDECAR_WORKERS": "1",
        "SIDECAR_WRITER": "off",
        "SIDECAR_LISTEN": f"127.0.0.1:{port}",
    }


PREFLIGHT = """
import importlib, importlib.resources, json, sys
importlib.import_module("sidecar.cli.serve")
lua = importlib.resources.files("sidecar.lua")
files = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.startswith("sidecar")}
print(json.dumps({"files": files, "lua": str(lua)}))
"""


def preflight(side: Side) -> int:
    """The tree's server code imports with this venv's libraries, and every ``sidecar``
    module (and the Lua scripts) comes from that tree, not from the editable install."""
    env = tree_env(side.tree, "redis://127.0.0.1:1", side.tree, 1)
    proc = subprocess.run(
        [sys.executable, "-c", PREFLIGHT], env=env, cwd=side.tree, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BenchFailure(
            f"{side.name} ({side.ref}) does not import with this venv:\n{proc.stderr[-2000:]}"
        )
    import json

    found = json.loads(proc.stdout.strip().splitlines()[-1])
    root = side.tree.resolve()
    paths = [f for f in found["files"].values() if f] + [found["lua"]]
    stray = [p for p in paths if not Path(p).resolve().is_relative_to(root)]
    if stray:
        raise BenchFailure(f"{side.name}: modules loaded from outside {root}: {stray[:5]}")
    return len(found["files"])


async def seed(
    side: Side, accounts: list[str], settings: dict[str, Any], plans: dict[str, Any]
) -> None:
    """``plans`` defined, then each account configured (with ``settings``) and granted
    ``GRANT`` credits through the side's own API."""
    assert side.server is not None
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(side.server.url, headers=headers) as s:
        for plan, body in plans.items():
            async with s.put(f"/v1/plans/{plan}", json=body) as r:
                if r.status not in (200, 201):
                    raise BenchFailure(f"{side.name}: PUT plan {r.status} {await r.text()}")

        async def one(a: str) -> None:
            async with sem:
                async with s.put(f"/v1/accounts/{a}", json=settings) as r:
                    if r.status not in (200, 201):
                        raise BenchFailure(f"{side.name}: PUT account {r.status} {await r.text()}")
                grant = {"grant_id": "bench-grant", "credits": GRANT, "source": "purchase"}
                async with s.post(f"/v1/accounts/{a}/grants", json=grant) as r:
                    if r.status not in (200, 201):
                        raise BenchFailure(f"{side.name}: grant {r.status} {await r.text()}")

        await asyncio.gather(*(one(a) for a in accounts))


async def named_token(side: Side, scopes: list[str]) -> str:
    """A named sidecar API token with ``scopes``, made through the side's admin API."""
    assert side.server is not None
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(side.server.url, headers=headers) as s:
        body = {"name": "bench", "scopes": scopes}
        async with s.post("/v1/tokens", json=body) as r:
            if r.status != 201:
                raise BenchFailure(f"{side.name}: POST /v1/tokens {r.status} {await r.text()}")
            return str((await r.json())["token"])


async def spent(side: Side, accounts: list[str]) -> tuple[int, int]:
    """Credits spent and the lowest balance, read through the side's own API."""
    assert side.server is not None
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    total, lowest = 0, GRANT
    async with aiohttp.ClientSession(side.server.url, headers=headers) as s:
        for a in accounts:
            async with s.get(f"/v1/accounts/{a}/balance") as r:
                if r.status != 200:
                    raise BenchFailure(f"{side.name}: balance {r.status} {await r.text()}")
                body = await r.json()
            bal = int(body["balance"])
            # what came in: the grant, and a plan's allowance buckets (head's accounts on one)
            issued = GRANT + sum(
                int(b["credits"]) for b in body["buckets"] if b["source"] == "allowance"
            )
            total += issued - bal
            lowest = min(lowest, bal)
    return total, lowest


SCRIPT_CALLS = {f"cmdstat_{c}" for c in ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall")}


async def redis_counters(client: aioredis.Redis) -> tuple[float, int, int, int]:
    """(CPU seconds, commands run, µs inside script calls, AOF bytes) of a redis-server."""
    cpu: Any = await client.info("cpu")
    aof: Any = await client.info("persistence")
    stats: Any = await client.info("commandstats")
    cmds = {k: v for k, v in stats.items() if k.startswith("cmdstat_")}
    used = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
    # A script's usec includes the commands it calls (also counted on their own): only the
    # top-level script calls, or the time would count twice.
    scripts = sum(int(v["usec"]) for k, v in cmds.items() if k in SCRIPT_CALLS)
    calls = sum(int(v["calls"]) for v in cmds.values())
    return used, calls, scripts, int(aof.get("aof_current_size", 0))


async def load(cfg: Config, side: Side, seconds: float) -> dict[str, Any]:
    assert side.server is not None
    args = [str(cfg.accounts), side.token]
    res = await asyncio.to_thread(wrk, side.server.url, "check.lua", args, cfg.connections, seconds)
    side.ok += res["requests"] - res["non2xx"]
    side.slack += cfg.connections
    if res["non2xx"] or res["socket_errors"]:
        raise BenchFailure(
            f"{side.name}: {res['non2xx']} non-2xx answers, {res['socket_errors']} socket errors"
        )
    return res


def pids(side: Side) -> tuple[Pids, Pids]:
    """The side's server processes and its redis-server (with any child it forks)."""
    assert side.server is not None and side.redis is not None and side.redis.process is not None
    server = side.server
    rpid = side.redis.process.pid
    return server.pids, lambda: Server.tree_of(rpid)


async def measure(cfg: Config, side: Side, idle: Side, client: aioredis.Redis, n: int) -> Round:
    server, redis_server = pids(side)
    idle_server, idle_redis = pids(idle)
    probe = CpuProbe(
        {
            "server": server,
            "redis_server": redis_server,
            "idle_side": lambda: idle_server() + idle_redis(),
        }
    )
    r0, a = await redis_counters(client), probe.snap()
    res = await load(cfg, side, cfg.seconds)
    b, r1 = probe.snap(), await redis_counters(client)
    cpu = CpuProbe.usage(a, b)
    checks = max(res["requests"], 1)
    wall = b.wall - a.wall
    rnd = Round(
        side=side.name,
        round=n,
        requests=res["requests"],
        per_s=round(res["requests"] / (res["duration_us"] / 1e6), 1),
        p50_ms=res["p50_us"] / 1000,
        p99_ms=res["p99_us"] / 1000,
        server_cpu_us=round(cpu["server_pct"] / 100 * wall / checks * 1e6, 2),
        redis_cpu_us=round((r1[0] - r0[0]) / checks * 1e6, 2),
        redis_cmd_us=round((r1[2] - r0[2]) / checks, 2),
        redis_cmds=round((r1[1] - r0[1]) / checks, 3),
        aof_bytes=round((r1[3] - r0[3]) / checks, 1),
        other_pct=cpu["other_pct"],
        idle_side_pct=cpu["idle_side_pct"],
        loadavg=round(os.getloadavg()[0], 2),
    )
    log(
        f"  round {n} {side.name:4} {rnd.per_s:9,.0f} req/s  p50 {rnd.p50_ms:.2f} ms"
        f"  p99 {rnd.p99_ms:.2f} ms  redis {rnd.redis_cpu_us:.1f} µs/check"
        f"  server {rnd.server_cpu_us:.1f} µs/check  others {rnd.other_pct:.0f}% of a core"
    )
    side.rounds.append(rnd)
    return rnd


@contextlib.asynccontextmanager
async def running(side: Side, tmp: Path) -> AsyncIterator[aioredis.Redis]:
    """The side's own redis-server and sidecar server; a client of that Redis."""
    # No automatic AOF rewrite: its fork would load whichever side runs next, at random.
    side.redis = RedisServer(
        tmp / side.name / "redis",
        port=free_port(),
        extra_args=("--auto-aof-rewrite-percentage", "0"),
    )
    side.redis.directory.mkdir(parents=True, exist_ok=True)
    side.redis.start()
    client = aioredis.Redis.from_url(side.redis.url)
    try:
        port = free_port()
        env = tree_env(side.tree, side.redis.url, tmp / side.name / "data", port)
        argv = [sys.executable, "-m", "sidecar", "serve"]
        async with Server(f"{side.name} sidecar", argv, env, port, cwd=side.tree) as s:
            side.server = s
            yield client
    finally:
        await client.aclose()
        side.redis.stop()


def paired(base: list[Round], head: list[Round], key: str) -> dict[str, Any]:
    """Head/base of ``key`` round by round, their geometric mean and its 95% bootstrap
    interval: how far the ratio could move by the noise of this run alone."""
    ratios = [
        getattr(h, key) / getattr(b, key)
        for b, h in zip(base, head, strict=True)
        if getattr(b, key)
    ]
    rng = random.Random(0)
    means = sorted(
        statistics.geometric_mean(rng.choices(ratios, k=len(ratios))) for _ in range(2000)
    )
    return {
        "by_round": [round(x, 3) for x in ratios],
        "geomean": round(statistics.geometric_mean(ratios), 3),
        "ci95": [round(means[49], 3), round(means[1949], 3)],
    }


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def summary(side: Side) -> dict[str, float]:
    rs = side.rounds
    return {
        "median_per_s": median([r.per_s for r in rs]),
        "min_per_s": min(r.per_s for r in rs),
        "max_per_s": max(r.per_s for r in rs),
        "median_p50_ms": median([r.p50_ms for r in rs]),
        "median_p99_ms": median([r.p99_ms for r in rs]),
        "median_server_cpu_us": median([r.server_cpu_us for r in rs]),
        "median_redis_cpu_us": median([r.redis_cpu_us for r in rs]),
        "median_redis_cmd_us": median([r.redis_cmd_us for r in rs]),
        "redis_cmds_per_check": median([r.redis_cmds for r in rs]),
        "aof_bytes_per_check": median([r.aof_bytes for r in rs]),
    }


async def run(cfg: Config) -> dict[str, Any]:
    started = datetime.now(UTC).replace(microsecond=0).isoformat()
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-compare-"))
    accounts = account_names(cfg.accounts)
    try:
        with contextlib.ExitStack() as stack:
            base = Side("base", cfg.base, git("rev-parse", "--short", cfg.base), tmp / "base-tree")
            stack.enter_context(worktree(base.commit, base.tree))
            if cfg.head is None:
                head = Side("head", "working tree", git("rev-parse", "--short", "HEAD"), ROOT)
                changed = git("status", "--porcelain", "--", "sidecar")
                head.dirty = [x for x in changed.splitlines() if x]
            else:
                head = Side("head", cfg.head, git("rev-parse", "--short", cfg.head), tmp / "h")
                stack.enter_context(worktree(head.commit, head.tree))
            sides = [base, head]
            for s in sides:
                log(f"{s.name}: {s.ref} ({s.commit}) at {s.tree}: {preflight(s)} modules import")
            quiet = await busy_before_start()
            load_before = os.getloadavg()
            async with running(base, tmp) as base_redis, running(head, tmp) as head_redis:
                clients = {"base": base_redis, "head": head_redis}
                for s in sides:
                    if s is head:
                        await seed(s, accounts, cfg.head_account, cfg.head_plans)
                        if cfg.head_token:
                            s.token = await named_token(s, cfg.head_token)
                    else:
                        await seed(s, accounts, {}, {})
                log(f"seeded {cfg.accounts} accounts on each side; warm-up {cfg.warmup:g} s each")
                for s in sides:
                    await load(cfg, s, cfg.warmup)
                for n in range(1, cfg.rounds + 1):
                    # ABBA: the order flips every round, so a drift favours neither side.
                    for s in sides if n % 2 else sides[::-1]:
                        idle = head if s is base else base
                        await measure(cfg, s, idle, clients[s.name], n)
                for s in sides:
                    total, lowest = await spent(s, accounts)
                    if lowest < 0 or not s.ok <= total <= s.ok + s.slack:
                        raise BenchFailure(
                            f"WRONG RESULT ({s.name}): {s.ok} checks allowed, {total} spent"
                        )
                    s.verified = (
                        f"{total:,} credits spent for {s.ok:,} allowed checks "
                        f"(+ <= {s.slack} in flight), no balance below zero, no non-2xx"
                    )
                    log(f"{s.name}: {s.verified}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sb, sh = summary(base), summary(head)
    # Paired by round (ABBA with an even number of rounds puts each side first equally
    # often, so an effect of the position in a round cancels).
    rate = paired(base.rounds, head.rounds, "per_s")
    redis_cpu = paired(base.rounds, head.rounds, "redis_cpu_us")
    cpu = paired(base.rounds, head.rounds, "cpu_us")
    return {
        "started": started,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "machine": host_info()
        | {
            "busy_before_start_pct": quiet,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "config": asdict(cfg) | {"out": str(cfg.out)},
        "sides": {
            s.name: {
                "ref": s.ref,
                "commit": s.commit,
                "uncommitted": s.dirty,
                "verified": s.verified,
                "summary": summ,
                "rounds": [asdict(r) for r in s.rounds],
            }
            for s, summ in ((base, sb), (head, sh))
        },
        "ratio_per_s": round(sh["median_per_s"] / sb["median_per_s"], 3),
        "paired_per_s": rate,
        "paired_redis_cpu_us": redis_cpu,
        "paired_cpu_us": cpu,
        "ratio_redis_cpu": round(sh["median_redis_cpu_us"] / sb["median_redis_cpu_us"], 3),
        "ratio_redis_cmd_us": round(sh["median_redis_cmd_us"] / sb["median_redis_cmd_us"], 3),
        "ratio_server_cpu": round(sh["median_server_cpu_us"] / sb["median_server_cpu_us"], 3),
    }


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--base", required=True, help="git ref of the baseline")
    p.add_argument("--head", help="git ref to compare (default: the working tree)")
    # Short rounds, many of them: on a shared machine the load of others changes within seconds
    # (A/A runs here: 4 x 10 s gave a 95% interval of -26%..+3%, 20 x 3 s -23%..+6%, -9%..+9%).
    p.add_argument(
        "--rounds", type=int, default=12, help="per side; even: each side first as often"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="of each round")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--head-account",
        type=json.loads,
        default={},
        help="JSON settings of head's accounts (PUT /v1/accounts), e.g. a spend_limit",
    )
    p.add_argument(
        "--head-plans",
        type=json.loads,
        default={},
        help='JSON {plan id: PUT /v1/plans body} defined on head first, e.g. for "plan" above',
    )
    p.add_argument(
        "--head-token",
        nargs="+",
        default=[],
        metavar="SCOPE",
        help="head's checks carry a named token with these scopes (e.g. service)",
    )
    a = p.parse_args(argv)
    return Config(
        a.base,
        a.head,
        a.rounds,
        a.seconds,
        a.warmup,
        a.connections,
        a.accounts,
        a.out,
        a.head_account,
        a.head_plans,
        a.head_token,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: run scripts/bench-deps.sh (apt-get install wrk)", file=sys.stderr)
        return 2
    try:
        result = uvloop.run(run(cfg))
    except BenchFailure as e:
        print(f"\nBENCH FAILED: {e}", file=sys.stderr)
        return 1
    md = render(result)
    write_results(cfg.out, "compare", md, result)
    print(md)
    log(f"wrote {cfg.out / 'compare.md'} and compare.json ({result['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
