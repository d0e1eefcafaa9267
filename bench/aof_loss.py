"""How many acknowledged deductions does a Redis SIGKILL lose, per appendfsync mode?

Starts its own redis-server (temp dir, free port), runs deductions from 16 concurrent tasks,
SIGKILLs the server at a random moment, restarts it from its AOF and counts the acknowledged
transactions missing from the restarted server's outbox. Writes bench/results/aof_loss.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from sidecar.ledger import outbox
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.redis.client import connect
from sidecar.redis.embedded import RedisServer, free_port


async def one_run(mode: str, seconds: float) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", port=free_port(), appendfsync=mode)
        server.start()
        client = connect(server.url, retries=0)
        ledger = Ledger(client, KeySpace())
        await ledger.configure_account("a")
        await ledger.grant("a", "g", 10**12)
        acked: set[str] = set()
        stop = asyncio.Event()

        async def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = await ledger.deduct("a", 1, f"w{w}-{i}")
                except Exception:
                    return  # the server is gone: this call was not acknowledged
                if isinstance(r, Allowed):
                    acked.add(r.transaction_id)

        tasks = [asyncio.create_task(worker(w)) for w in range(16)]
        await asyncio.sleep(seconds * random.uniform(0.5, 1.0))
        server.kill()
        stop.set()
        await asyncio.gather(*tasks)
        await client.aclose()
        server.start()
        client = connect(server.url)
        entries: Any = await client.xrange(KeySpace().outbox(0))
        decoded = [outbox.decode(f) for _, f in entries]
        kept = {e["id"] for e in decoded if e.get("type") == "usage"}
        await client.aclose()
        server.stop()
        return {"acknowledged": len(acked), "lost": len(acked - kept)}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    results: dict[str, list[dict[str, int]]] = {}
    for mode in ("always", "everysec"):
        results[mode] = [await one_run(mode, args.seconds) for _ in range(args.runs)]
    lines = [
        "| appendfsync | runs | acknowledged | lost after SIGKILL |",
        "| --- | --- | --- | --- |",
    ]
    for mode, runs in results.items():
        lines.append(
            f"| {mode} | {len(runs)} | {sum(r['acknowledged'] for r in runs)} | "
            f"{sum(r['lost'] for r in runs)} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "aof_loss.md").write_text(__doc__ + "\n" + table + "\n")
    (args.out / "aof_loss.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
