"""Redis memory per account: 1,000,000 accounts with 2 buckets each, in a private Redis.

One account is made by the real scripts (account.lua, two grant.lua calls); its keys are
DUMPed and RESTOREd under every other account's names (pipelined: minutes of script calls
become seconds), so every account holds exactly the state the scripts write. Used memory is
read before and after (INFO memory, after the outbox of the template is deleted: the outbox
is trimmed in service); a sample of accounts is then read back through Ledger.balance.

    .venv/bin/python -m bench.memory [--accounts 1000000] [--out bench/results]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench import servers
from bench.harness import BenchFailure, host_info, log, md_table, n, write_results
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import connect

TEMPLATE = "tmpl"


async def run(accounts: int) -> dict[str, Any]:
    async with servers.started("cs-bench-mem-") as srv:
        redis = connect(srv.redis.url)
        try:
            keys = KeySpace()
            ledger = Ledger(redis, keys)
            await ledger.configure_account(TEMPLATE)
            await ledger.grant(TEMPLATE, "paid", 1000, source="purchase")
            await ledger.grant(TEMPLATE, "promo", 100, source="promo", priority=-1)
            k = keys.for_account(TEMPLATE)
            names = {"account": k.account, "order": k.order}
            dumps = {role: await redis.dump(key) for role, key in names.items()}
            await redis.delete(keys.outbox(0))
            mem: Any = await redis.info("memory")
            before = int(mem["used_memory"])
            t0 = time.perf_counter()
            chunk = 10_000
            for start in range(0, accounts, chunk):
                pipe = redis.pipeline(transaction=False)
                for i in range(start, min(start + chunk, accounts)):
                    ak = keys.for_account(f"acct-{i:07d}")
                    pipe.restore(ak.account, 0, dumps["account"])
                    pipe.restore(ak.order, 0, dumps["order"])
                await pipe.execute()
            seconds = time.perf_counter() - t0
            mem = await redis.info("memory")
            after = int(mem["used_memory"])
            template = await ledger.balance(TEMPLATE)
            for i in random.Random(1).sample(range(accounts), min(100, accounts)):
                b = await ledger.balance(f"acct-{i:07d}")
                if (b.balance, len(b.buckets)) != (template.balance, len(template.buckets)):
                    raise BenchFailure(f"acct-{i:07d} reads back {b}, not the template")
            return {
                "accounts": accounts,
                "buckets_per_account": len(template.buckets),
                "used_memory_before": before,
                "used_memory_after": after,
                "bytes_per_account": round((after - before) / accounts, 1),
                "load_seconds": round(seconds, 1),
                "redis": await servers.redis_version(redis),
            }
        finally:
            await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory")
    p.add_argument("--accounts", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    started = datetime.now(UTC).replace(microsecond=0).isoformat()
    try:
        r = uvloop.run(run(a.accounts))
    except BenchFailure as e:
        print(f"BENCH FAILED: {e}", file=sys.stderr)
        return 1
    result = {"started": started, "machine": host_info()} | r
    md = "\n".join(
        [
            "# Redis memory per account",
            "",
            f"Run {started}, {r['redis']}.",
            "",
            md_table(
                [
                    [
                        f"{r['accounts']:,}",
                        str(r["buckets_per_account"]),
                        f"{r['used_memory_after'] / 2**20:,.0f} MiB",
                        n(r["bytes_per_account"]),
                        f"{r['load_seconds']:g}",
                    ]
                ],
                ["accounts", "buckets each", "used_memory", "bytes per account", "load s"],
            ),
            "",
            "Each account: its hash (settings, aggregates, per bucket its record, remaining and "
            "held) and its burn-order zset, exactly as the scripts write them (one account made "
            "by the scripts, the others RESTOREd from its DUMP); idempotency and usage records "
            "(one per recent request, kept SIDECAR_RETENTION_S) come on top.",
            "",
        ]
    )
    a.out.mkdir(parents=True, exist_ok=True)
    write_results(a.out, "memory", md, result)
    print(md)
    log(f"wrote {a.out / 'memory.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
