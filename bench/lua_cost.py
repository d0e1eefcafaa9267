"""What the shared Lua library costs Redis on every script call, at several git refs.

Every ledger script is ``_lib.lua`` followed by the script (sidecar/lua/__init__.py), and
Redis runs the whole chunk on each ``EVALSHA``: each ``local function`` statement creates a
closure then, capturing its upvalues (Lua 5.1 finds each in a list as long as the locals
already captured). This runs ``_lib.lua`` of each ref followed by ``return 1`` (the argument
checks pass; nothing is read or written), pipelined on one private redis-server, in
alternating rounds, and reports Redis' own time per call (``INFO commandstats``, µs). A
trivial script is the floor. Results: ``bench/results/lua_cost.md`` and ``lua_cost.json``.

    .venv/bin/python -m bench.lua_cost [--refs 0b33280 HEAD] [--worktree] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.harness import ROOT, host_info, write_results
from sidecar.redis.embedded import RedisServer, free_port

CALLS = 5000
KEYS = [f"{{0}}k{i}" for i in range(7)]


def library(ref: str | None) -> str:
    """``_lib.lua`` at ``ref`` (None: the working tree)."""
    if ref is None:
        return (ROOT / "sidecar" / "lua" / "_lib.lua").read_text()
    return subprocess.run(
        ["git", "show", f"{ref}:sidecar/lua/_lib.lua"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


async def per_call(client: aioredis.Redis, sha: str) -> float:
    """Redis' µs per call of ``sha`` over CALLS pipelined calls."""
    await client.config_resetstat()
    for _ in range(CALLS // 500):
        pipe = client.pipeline(transaction=False)
        for _ in range(500):
            pipe.evalsha(sha, len(KEYS), *KEYS, "acct", int(time.time() * 1000), "tx1", 1000, "")
        await pipe.execute()
    stats = await client.info("commandstats")
    return float(stats["cmdstat_evalsha"]["usec_per_call"])


async def run(sources: dict[str, str], rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), port=free_port())
        server.start()
        client = aioredis.from_url(server.url)
        try:
            shas = {name: await client.script_load(text) for name, text in sources.items()}
            times: dict[str, list[float]] = {name: [] for name in shas}
            for r in range(rounds):
                order = list(shas) if r % 2 == 0 else list(reversed(shas))
                for name in order:
                    times[name].append(await per_call(client, shas[name]))
        finally:
            await client.aclose()
            server.stop()
    return {
        "host": host_info(),
        "calls_per_round": CALLS,
        "rounds": rounds,
        "us_per_call": {n: {"median": statistics.median(t), "all": t} for n, t in times.items()},
        "functions": {
            n: text.count("\nlocal function ") for n, text in sources.items() if n != "trivial"
        },
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Redis time per script call spent in the shared library",
        "",
        f"{result['rounds']} rounds of {result['calls_per_round']} pipelined calls each; "
        "`_lib.lua` of each ref followed by `return 1`.",
        "",
        "| script | top-level functions | µs per call (median) | rounds |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in result["us_per_call"].items():
        funcs = result["functions"].get(name, "")
        rounds = ", ".join(f"{x:.1f}" for x in t["all"])
        lines.append(f"| {name} | {funcs} | {t['median']:.1f} | {rounds} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lua_cost", description=__doc__)
    p.add_argument("--refs", nargs="*", default=[], help="git refs to measure")
    p.add_argument("--worktree", action="store_true", help="also the working tree's library")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    sources = {"trivial": "return 1"}
    for ref in a.refs:
        sources[ref] = library(ref) + "\nreturn 1"
    if a.worktree or not a.refs:
        sources["working tree"] = library(None) + "\nreturn 1"
    result = asyncio.run(run(sources, a.rounds))
    md = render(result)
    write_results(a.out, "lua_cost", md, result)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
