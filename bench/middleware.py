"""The middleware's own overhead (issue 24): the latency a route gains behind the Python ASGI
middleware (Starlette under uvicorn) and the Express middleware, against the same route without
it, with the sidecar's own ``POST /v1/check`` round trip for reference. Goal: at most 1 ms added
at p50 under moderate load, the sidecar's round trip included, with connection reuse.

One run, every target side by side on this machine: a private redis-server, the sidecar as
deployed (``credit-sidecar serve``: 1 worker, its writer process, SQLite), and four app servers
(uvicorn + Starlette with and without ``CreditsMiddleware``, Express with and without
``requireCredits``), each route costing 1 credit when behind the middleware; and the floor
under the sidecar's round trip (bench/mw_floor_app.py: aiohttp answering from one Redis call).
``wrk`` (1 thread, keep-alive connections) offers each target two loads in turn:

- steady (the goal's "moderate load"): one connection, each request sent as the last one is
  answered. Nothing queues and the machine is never idle; about half its two cores are busy.
- sparse: ``--connections`` connections each pausing ``--pace-ms`` on average between requests
  (about 200 req/s). The cores idle between requests; on a VM whose idle vCPUs halt, every
  process a request wakes costs it a wake-up, so the more processes a request crosses, the more
  it pays.

Each load runs ``--rounds`` rounds of ``--seconds`` per target, the targets' order reversed
every other round so machine noise hits them alike. Added latency is paired per round (with
minus without, measured back to back), then the median of the rounds.

Verified: every answer a 2xx, and the credits spent equal the checks counted (plus at most the
requests in flight when each wrk run stopped). Results: ``bench/results/middleware/``
(``middleware.md``, ``middleware.json``).

    .venv/bin/python -m bench.middleware [--rounds 3] [--seconds 5] [--connections 32]
        [--pace-ms 160] [--loads steady,sparse]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.checkrate import ADMIN_TOKEN, GRANT, SERVICE_TOKEN
from bench.harness import (
    ROOT,
    BenchFailure,
    CpuProbe,
    busy_before_start,
    code_state,
    host_info,
    log,
    md_table,
    noise_note,
    package_version,
    write_results,
)
from bench.load import Server, wrk
from credit_sidecar import Client
from sidecar.redis.embedded import RedisServer, free_port

ACCOUNT = "acct-00000"  # check.lua's account with one account
EXPRESS_DIR = ROOT / "examples" / "express"
GOAL_MS = 1.0


@dataclass(frozen=True)
class Shape:
    """A load wrk offers: ``connections`` keep-alive connections, each pausing ``pace_ms`` on
    average between its requests (0: the next request as soon as the last is answered)."""

    name: str
    connections: int
    pace_ms: int

    def describe(self) -> str:
        if not self.pace_ms:
            conns = "one connection" if self.connections == 1 else f"{self.connections} connections"
            return f"{conns}, each request sent as the last is answered (nothing queues)"
        rate = self.connections * 1000 / self.pace_ms
        return (
            f"{self.connections} connections, each pausing {self.pace_ms} ms on average between "
            f"requests (about {rate:,.0f} req/s offered)"
        )


@dataclass(frozen=True)
class Config:
    rounds: int
    seconds: float
    warmup: float
    shapes: tuple[Shape, ...]
    out: Path


@dataclass(frozen=True)
class Target:
    key: str
    name: str
    server: str  # the Server it loads
    script: str
    path: str
    charged: bool  # each answered request is one check


TARGETS = [
    Target(
        "floor",
        "floor: aiohttp + one Redis call (no auth, no ledger)",
        "floor",
        "check.lua",
        "",
        False,
    ),
    Target(
        "sidecar",
        "sidecar `POST /v1/check` (the round trip alone)",
        "sidecar",
        "check.lua",
        "",
        True,
    ),
    Target(
        "asgi_bare",
        "uvicorn + Starlette, no middleware",
        "asgi_bare",
        "get.lua",
        "/v1/thing",
        False,
    ),
    Target(
        "asgi_mw",
        "uvicorn + Starlette + `CreditsMiddleware` (1 credit)",
        "asgi_mw",
        "get.lua",
        "/v1/thing",
        True,
    ),
    Target("express_bare", "Express, no middleware", "express_bare", "get.lua", "/v1/thing", False),
    Target(
        "express_mw", "Express + `requireCredits(1)`", "express_mw", "get.lua", "/v1/thing", True
    ),
]
PAIRS = {"python": ("asgi_bare", "asgi_mw"), "express": ("express_bare", "express_mw")}


def npm_ci() -> None:
    """examples/express's dependencies (Express), as its run.sh installs them."""
    stamp = EXPRESS_DIR / "node_modules" / ".package-lock.json"
    lock = EXPRESS_DIR / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    log("npm ci in examples/express")
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=EXPRESS_DIR, check=True
    )


def children_cpu_s() -> float:
    """CPU seconds of this process's children it has waited for (the wrk runs)."""
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def node_version() -> str:
    return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()


def load(shape: Shape, target: Target, url: str, seconds: float) -> dict[str, Any]:
    pace = str(shape.pace_ms)
    if target.script == "check.lua":
        args = ["1", SERVICE_TOKEN, "1", "/v1/check", pace]
    else:
        args = [ACCOUNT, pace]
    r = wrk(url + target.path, target.script, args, shape.connections, seconds)
    if r["non2xx"] or r["socket_errors"]:
        raise BenchFailure(f"{target.name}: {r['non2xx']} non-2xx, {r['socket_errors']} errors")
    return r


def ms(us: float) -> float:
    return round(us / 1000, 3)


async def run(cfg: Config) -> dict[str, Any]:
    started = datetime.now(UTC).replace(microsecond=0).isoformat()
    if shutil.which("wrk") is None:
        raise BenchFailure("wrk is not installed (make bench-deps)")
    await asyncio.to_thread(npm_ci)
    quiet = await busy_before_start()
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-mw-"))
    redis = RedisServer(tmp / "redis", port=free_port())
    redis.start()
    py = sys.executable
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    try:
        port = free_port()
        sidecar_env = base_env | {
            "SIDECAR_REDIS_URL": redis.url,
            "SIDECAR_DATA_DIR": str(tmp / "sidecar"),
            "SIDECAR_ADMIN_TOKEN": ADMIN_TOKEN,
            "SIDECAR_SERVICE_TOKEN": SERVICE_TOKEN,
            "SIDECAR_LISTEN": f"127.0.0.1:{port}",
        }
        async with Server("sidecar", [py, "-m", "sidecar", "serve"], sidecar_env, port) as sc:
            with Client(sc.url, ADMIN_TOKEN) as admin:
                admin.put_account(ACCOUNT, {})
                admin.grant(ACCOUNT, GRANT, source="purchase", grant_id="bench-grant")
            ports = {
                name: free_port()
                for name in ("floor", "asgi_bare", "asgi_mw", "express_bare", "express_mw")
            }
            asgi = [py, "-m", "bench.mw_asgi_app"]
            mw_args = ["--sidecar", sc.url, "--token", SERVICE_TOKEN]
            node = ["node", str(ROOT / "bench" / "mw_express_app.mjs")]
            mw_env = {"SIDECAR_URL": sc.url, "SIDECAR_SERVICE_TOKEN": SERVICE_TOKEN}
            floor = [py, "-m", "bench.mw_floor_app", "--redis", redis.url]
            specs = {
                "floor": ([*floor, "--port", str(ports["floor"])], base_env),
                "asgi_bare": ([*asgi, "--port", str(ports["asgi_bare"])], base_env),
                "asgi_mw": ([*asgi, "--port", str(ports["asgi_mw"]), *mw_args], base_env),
                "express_bare": (node, base_env | {"PORT": str(ports["express_bare"])}),
                "express_mw": (node, base_env | mw_env | {"PORT": str(ports["express_mw"])}),
            }
            apps = {n: Server(n, argv, env, ports[n], cwd=ROOT) for n, (argv, env) in specs.items()}
            for s in apps.values():
                await s.__aenter__()
            try:
                servers = {"sidecar": sc, **apps}
                assert redis.process is not None
                redis_pid = redis.process.pid
                probe = CpuProbe(
                    {n: (lambda s=s: s.pids()) for n, s in servers.items()}
                    | {"redis_server": lambda: [redis_pid]}
                )
                result: dict[str, Any] = {
                    "loads": {sh.name: await measure(cfg, sh, servers, probe) for sh in cfg.shapes}
                }
            finally:
                for s in apps.values():
                    await s.__aexit__(None, None, None)
            with Client(sc.url, ADMIN_TOKEN) as admin:
                spent = GRANT - admin.balance(ACCOUNT).balance
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    counted = sum(r.pop("_counted") for r in result["loads"].values())
    slack = sum(r.pop("_slack") for r in result["loads"].values())
    if not counted <= spent <= counted + slack:
        raise BenchFailure(f"WRONG RESULT: {spent} credits spent for {counted} checks counted")
    result["verified"] = (
        f"{spent:,} credits spent for {counted:,} checks counted (at most {slack} in flight "
        "when a wrk run stopped); every answer a 2xx"
    )
    result["config"] = {
        "rounds": cfg.rounds,
        "seconds": cfg.seconds,
        "warmup": cfg.warmup,
        "loads": {
            sh.name: {"connections": sh.connections, "pace_ms": sh.pace_ms} for sh in cfg.shapes
        },
    }
    steady = result["loads"].get("steady")
    result["goal_met"] = steady["goal_met"] if steady else {}
    result["started"] = started
    result["busy_before_pct"] = quiet
    result["host"] = host_info() | {
        "node": node_version(),
        "uvicorn": package_version("uvicorn"),
        "starlette": package_version("starlette"),
        "httpx": package_version("httpx"),
        "aiohttp": package_version("aiohttp"),
    }
    result["code"] = code_state(
        [
            "clients/python/src/credit_sidecar/middleware/asgi.py",
            "clients/python/src/credit_sidecar/_wire.py",
            "clients/python/src/credit_sidecar/async_client.py",
            "clients/typescript/src/express.js",
            "clients/typescript/src/nodewire.js",
            "clients/typescript/src/transport.js",
        ]
    )
    return result


async def measure(
    cfg: Config, shape: Shape, servers: dict[str, Server], probe: CpuProbe
) -> dict[str, Any]:
    counted = slack = 0
    log(f"{shape.name} load, warm-up: {cfg.warmup:g} s per target")
    for t in TARGETS:
        r = await asyncio.to_thread(load, shape, t, servers[t.server].url, cfg.warmup)
        if t.charged:
            counted += r["requests"]
            slack += shape.connections
    rounds: list[dict[str, Any]] = []
    for i in range(cfg.rounds):
        order = TARGETS if i % 2 == 0 else TARGETS[::-1]
        this: dict[str, Any] = {}
        for t in order:
            a, wrk_a = probe.snap(), children_cpu_s()
            r = await asyncio.to_thread(load, shape, t, servers[t.server].url, cfg.seconds)
            cpu = CpuProbe.usage(a, probe.snap())
            # wrk (a child this process waited for) is part of the setup, not interference
            cpu["wrk_pct"] = round(100 * (children_cpu_s() - wrk_a) / cfg.seconds, 1)
            cpu["other_pct"] = round(max(0.0, cpu["other_pct"] - cpu["wrk_pct"]), 1)
            if t.charged:
                counted += r["requests"]
                slack += shape.connections
            this[t.key] = {
                "rate": round(r["requests"] / (r["duration_us"] / 1e6), 1),
                "p50_ms": ms(r["p50_us"]),
                "p90_ms": ms(r["p90_us"]),
                "p99_ms": ms(r["p99_us"]),
                "p999_ms": ms(r["p999_us"]),
                "requests": r["requests"],
                # the target's own server process(es): what a request costs it
                "cpu_us": round(cpu[f"{t.server}_pct"] * 1e4 / max(r["requests"] / cfg.seconds, 1)),
                "cpu": cpu,
            }
            log(
                f"{shape.name} round {i + 1} {t.key}: {this[t.key]['rate']:.0f}/s p50 "
                f"{this[t.key]['p50_ms']} p99 {this[t.key]['p99_ms']} ms"
            )
        for lang, (bare, mw) in PAIRS.items():
            added = {
                q: round(this[mw][f"{q}_ms"] - this[bare][f"{q}_ms"], 3) for q in ("p50", "p99")
            }
            this[f"added_{lang}"] = added | {
                "cpu_us": this[mw]["cpu_us"] - this[bare]["cpu_us"],
                # beyond the sidecar's own round trip: the client, the app's extra hop
                "own_p50": round(added["p50"] - this["sidecar"]["p50_ms"], 3),
            }
        rounds.append(this)

    def med(key: str, field: str) -> float:
        return float(round(statistics.median(r[key][field] for r in rounds), 3))

    summary = {
        t.key: {
            f: med(t.key, f) for f in ("rate", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "cpu_us")
        }
        for t in TARGETS
    }
    added = {
        lang: {q: med(f"added_{lang}", q) for q in ("p50", "p99", "cpu_us", "own_p50")}
        for lang in PAIRS
    }
    return {
        "targets": {t.key: t.name for t in TARGETS},
        "summary": summary,
        "added_ms": added,
        "goal_met": {lang: added[lang]["p50"] <= GOAL_MS for lang in PAIRS},
        "rounds": rounds,
        "_counted": counted,
        "_slack": slack,
    }


def floor_note(s: dict[str, Any]) -> str:
    sidecar, floor = s["sidecar"]["p50_ms"], s["floor"]["p50_ms"]
    reach = (
        "on this machine the goal is out of reach for any middleware calling an HTTP service "
        "that calls Redis"
        if floor > GOAL_MS
        else "the goal leaves the middleware what the floor does not take"
    )
    return (
        f"The added latency includes the sidecar's round trip ({sidecar:.2f} ms p50 here), which "
        f"cannot be below the floor's ({floor:.2f} ms: an aiohttp service answering from one "
        f"Redis call, no auth, no ledger, measured in the same run): {reach}. Beyond the "
        "sidecar's round trip, a middleware adds its client's work and the app's extra hop."
    )


SHAPE_NOTES = {
    "steady": "the goal's moderate load: nothing queues, the machine never idles",
    "sparse": (
        "the cores idle between requests: on a VM whose idle vCPUs halt, each process a "
        "request wakes costs it a wake-up"
    ),
}


def section(name: str, shape: dict[str, Any], load: dict[str, Any]) -> str:
    s, added = load["summary"], load["added_ms"]
    rows = []
    for key, title in load["targets"].items():
        x = s[key]
        extra = ""
        for lang, (_, mw) in PAIRS.items():
            if key == mw:
                a = added[lang]
                extra = f"**{a['p50']:+.2f}** / {a['p99']:+.2f} ms, {a['cpu_us']:+,.0f} µs"
        rows.append(
            [
                title,
                f"{x['rate']:,.0f}",
                f"{x['p50_ms']:.2f}",
                f"{x['p90_ms']:.2f}",
                f"{x['p99_ms']:.2f}",
                f"{x['cpu_us']:,.0f}",
                extra,
            ]
        )
    table = md_table(
        rows,
        [
            "target",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "server CPU µs/req",
            "added p50 / p99, CPU",
        ],
    )
    verdict = "; ".join(
        f"{lang}: {added[lang]['p50']:+.2f} ms ({'within' if ok else 'over'} the goal; "
        f"{added[lang]['own_p50']:+.2f} ms beyond the sidecar's round trip)"
        for lang, ok in load["goal_met"].items()
    )
    per_round = md_table(
        [
            [str(i + 1)]
            + [
                f"{r[f'added_{lang}']['p50']:+.2f} / {r[f'added_{lang}']['p99']:+.2f}"
                for lang in PAIRS
            ]
            for i, r in enumerate(load["rounds"])
        ],
        ["round", "python added p50 / p99 ms", "express added p50 / p99 ms"],
    )
    desc = Shape(name, shape["connections"], shape["pace_ms"]).describe()
    return f"""## {name.capitalize()} load: {desc}

{SHAPE_NOTES.get(name, "")}.

{table}

Added at p50: {verdict}.

{floor_note(s)}

{per_round}
"""


def render(result: dict[str, Any]) -> str:
    cfg, h = result["config"], result["host"]
    sections = "\n".join(
        section(name, cfg["loads"][name], load) for name, load in result["loads"].items()
    )
    cpus = [
        r[k]["cpu"]
        for load in result["loads"].values()
        for r in load["rounds"]
        for k in load["targets"]
    ]
    goal = result["goal_met"]
    verdict = (
        "; ".join(f"{lang}: {'met' if ok else 'NOT met'}" for lang, ok in goal.items())
        if goal
        else "not measured (no steady load in this run)"
    )
    return f"""# Middleware overhead

Started {result["started"]}, commit `{result["code"]["commit"]}`. {h["cpus_usable"]} cores
({h["cpu_model"]}), Python {h["python"]}, uvicorn {h["uvicorn"]}, aiohttp {h["aiohttp"]}, Node
{h["node"]}. Every process on this one machine: wrk, Redis, the sidecar (1 worker and its writer
process), the floor and the four app servers.

Goal (at most {GOAL_MS:g} ms added at p50 under moderate load, the steady load below): {verdict}.

Each load: wrk, 1 thread, keep-alive connections, {cfg["rounds"]} rounds of {cfg["seconds"]:g} s
per target after a {cfg["warmup"]:g} s warm-up, the order reversed every other round. Medians
of the rounds; "added" is the route with the middleware minus the same route without it,
paired per round (the sidecar's round trip included). The clients use their default connection
pools (keep-alive to the sidecar). Server CPU µs/req: the target's own processes (the app
server; for the sidecar row, its worker and writer), so the middleware's CPU per request is the
difference of a pair.

{sections}
Verified: {result["verified"]}.
{noise_note(result["busy_before_pct"], cpus)}
"""


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=32, help="the sparse load's connections")
    p.add_argument(
        "--pace-ms",
        type=int,
        default=160,
        help="the sparse load's mean pause per connection between requests (32 / 160 ms: "
        "~200 req/s)",
    )
    p.add_argument("--loads", default="steady,sparse", help="which loads, in order")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "middleware")
    a = p.parse_args(argv)
    known = {"steady": Shape("steady", 1, 0), "sparse": Shape("sparse", a.connections, a.pace_ms)}
    names = [n.strip() for n in a.loads.split(",") if n.strip()]
    if not names or any(n not in known for n in names):
        p.error(f"--loads: a comma-separated list of {', '.join(known)}")
    return Config(a.rounds, a.seconds, a.warmup, tuple(known[n] for n in names), a.out)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    t0 = time.perf_counter()
    try:
        result = asyncio.run(run(cfg))
    except BenchFailure as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    md = render(result)
    print(md)
    write_results(cfg.out, "middleware", md, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
