"""The writer scenario's outbox and drains: fill the outbox with usage transactions, restore
it before each run, drain it with the production ``OutboxWriter.run`` while measuring the
throughput after a warm-up, and verify that SQL then holds exactly what Redis does."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.harness import BenchFailure, CpuProbe, CpuSnap
from bench.servers import Servers
from sidecar.ledger import outbox
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.persistence.outbox_status import outbox_status
from sidecar.persistence.reconcile import Difference, reconcile, redis_state
from sidecar.persistence.writer import OutboxWriter
from sidecar.redis.client import RedisClient

SHARD = 0


@dataclass
class Rig:
    """What every run of the writer scenario uses."""

    srv: Servers
    redis: RedisClient  # the bench's client (bytes replies, a pool for the check load)
    writer_redis: (
        RedisClient  # the writer's own client, as `serve` and `credit-sidecar writer` make it
    )
    keys: KeySpace
    ledger: Ledger
    accounts: list[str]
    probe: CpuProbe  # the servers' processes and the machine
    timeout_s: float  # for a drain, or for the writer to catch up


@dataclass
class Fill:
    usage_txns: int
    seconds: float
    per_s: float
    spent: dict[str, int]  # account -> credits the fill deducted


@dataclass
class Census:
    entries: int  # everything in the outbox (what the writer must write and acknowledge)
    txns: int  # kind=txn entries (= rows expected in credit_transactions)
    setup_entries: int  # account creation + grant entries before the usage transactions
    by_kind: dict[str, int]


@dataclass
class Drain:
    backend: str
    batch_size: int
    shards: int  # outbox shards, each written by its own task (concurrent SQL transactions)
    entries_total: int
    total_seconds: float  # start of the writer to the last batch written (incl. warm-up)
    measured_entries: int
    measured_seconds: float
    txns_per_s: float  # the steady-state throughput (after warm-up)
    batches: int
    cpu: dict[str, float]
    verified: bool = False
    checks: list[str] = field(default_factory=list)


async def fill_outbox(
    ledger: Ledger, accounts: list[str], events: int, concurrency: int, seed: int
) -> Fill:
    spent = dict.fromkeys(accounts, 0)
    next_i = 0

    async def worker(w: int) -> None:
        nonlocal next_i
        rng = random.Random(seed * 31337 + w)
        while next_i < events:
            i = next_i
            next_i += 1
            account, cost = rng.choice(accounts), 1 + i % 7
            r = await ledger.deduct(account, cost, f"fill-{i}", description="bench")
            if not isinstance(r, Allowed):
                raise BenchFailure(f"fill deduction refused: {r!r}")
            spent[account] += cost

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    seconds = time.perf_counter() - t0
    return Fill(events, round(seconds, 3), round(events / seconds, 1), spent)


async def outbox_census(redis: RedisClient, keys: KeySpace) -> Census:
    """What every shard's outbox holds; setup entries are those before each shard's first
    usage transaction."""
    kinds: Counter[str] = Counter()
    n = setup = 0
    for shard in range(keys.shards):
        first_usage: int | None = None
        start, before = "-", n
        while True:
            chunk: Any = await redis.xrange(keys.outbox(shard), min=start, count=10_000)
            if not chunk:
                break
            for _entry_id, fields in chunk:
                entry = outbox.decode(fields)
                kinds[entry["kind"]] += 1
                if first_usage is None and entry.get("type") == "usage":
                    first_usage = n - before
                n += 1
            start = "(" + chunk[-1][0].decode()
        setup += first_usage if first_usage is not None else n - before
    return Census(entries=n, txns=kinds["txn"], setup_entries=setup, by_kind=dict(kinds))


async def redis_truth(rig: Rig) -> dict[str, tuple[int, int]]:
    """Per account, Redis's (balance, seq): what SQL must agree with after a drain."""
    truth = {}
    for a in rig.accounts:
        state = await redis_state(rig.redis, rig.keys, a)
        if state is None:
            raise BenchFailure(f"account {a} is missing from Redis")
        truth[a] = (state["balance"], state["seq"])
    return truth


async def dump_outbox(rig: Rig) -> list[bytes]:
    """Every shard's filled outbox (DUMP payloads), to restore before each drain."""
    return [await rig.redis.dump(rig.keys.outbox(s)) for s in range(rig.keys.shards)]  # type: ignore[misc]


async def restore_outbox(rig: Rig, payload: list[bytes]) -> None:
    """The filled outboxes exactly as they were, without consumer groups, leases or dead
    letters."""
    redis, keys = rig.redis, rig.keys
    for shard, dumped in enumerate(payload):
        outbox_key = keys.outbox(shard)
        await redis.delete(outbox_key, keys.writer_lease(shard), keys.dead_letters(shard))
        await redis.restore(outbox_key, 0, dumped)
        groups: Any = await redis.xinfo_groups(outbox_key)
        if groups:
            raise BenchFailure("the restored outbox already has a consumer group")


def warmup_entries(census: Census, batch_size: int, events: int) -> int:
    """Entries excluded from the measurement: the setup entries, then at least two batches
    (connection, statement compilation and cache warm-up) or 5% of the usage transactions."""
    return census.setup_entries + min(max(2 * batch_size, events // 20), events // 2)


async def drain(
    rig: Rig,
    engine: AsyncEngine,
    backend: str,
    batch_size: int,
    census: Census,
    warm_at: int,
    until: int | None = None,
) -> Drain:
    """Runs the writer until it has written ``until`` entries (default: all of them); the
    throughput counts from the ``warm_at``-th entry."""
    target = census.entries if until is None else until
    # block_ms only matters once the outbox is empty (it makes the stop prompt); trimming stays
    # at its default (once a second), as in the service.
    writer = OutboxWriter(rig.writer_redis, engine, rig.keys, batch_size=batch_size, block_ms=100)
    stop, probe = asyncio.Event(), rig.probe
    start = probe.snap()
    task = asyncio.create_task(writer.run(stop), name=f"bench-writer-{backend}-{batch_size}")
    warm: tuple[int, CpuSnap] | None = None
    try:
        while writer.stats.written < target:
            if task.done():
                raise BenchFailure(f"the writer stopped early: {task.exception()!r}")
            if writer.stats.sql_errors or writer.stats.dead_lettered:
                raise BenchFailure(f"writer errors: {writer.stats}")
            if warm is None and writer.stats.written >= warm_at:
                warm = (writer.stats.written, probe.snap())
            if time.perf_counter() - start.wall > rig.timeout_s:
                raise BenchFailure(
                    f"{backend} batch {batch_size}: only {writer.stats.written} of "
                    f"{census.entries} entries written in {rig.timeout_s}s"
                )
            await asyncio.sleep(0.002)  # polling costs little next to a batch's SQL write
        end, written = probe.snap(), writer.stats.written
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    if warm is None:
        raise BenchFailure("the warm-up mark was never seen; use more --events")
    if until is None and written != census.entries:
        raise BenchFailure(f"writer wrote {written} entries, the outbox holds {census.entries}")
    measured, seconds = written - warm[0], end.wall - warm[1].wall
    return Drain(
        backend=backend,
        batch_size=batch_size,
        shards=rig.keys.shards,
        entries_total=written,
        total_seconds=round(end.wall - start.wall, 3),
        measured_entries=measured,
        measured_seconds=round(seconds, 3),
        txns_per_s=round(measured / seconds, 1),
        batches=writer.stats.batches,
        cpu=probe.usage(warm[1], end),
    )


async def _reconcile_all(
    redis: RedisClient, keys: KeySpace, engine: AsyncEngine, accounts: set[str]
) -> list[Difference]:
    sem = asyncio.Semaphore(8)  # a few at a time: each one needs a connection of the SQL pool

    async def one(account: str) -> list[Difference]:
        async with sem:
            return await reconcile(redis, keys, engine, account)

    found = await asyncio.gather(*(one(a) for a in sorted(accounts)))
    return [d for diffs in found for d in diffs]


async def verify(
    rig: Rig, engine: AsyncEngine, census: Census, truth: dict[str, tuple[int, int]]
) -> list[str]:
    """Fails loudly unless SQL holds exactly the outbox's transactions and Redis's balances;
    returns what was checked (for the report)."""
    redis, keys = rig.redis, rig.keys
    problems: list[str] = []
    for status in await outbox_status(redis, keys, int(time.time() * 1000)):
        if status["unwritten"] or status["dead_letters"]:
            problems.append(f"outbox not drained: {status}")
    async with engine.connect() as conn:
        n_txn = (await conn.execute(text("SELECT count(*) FROM credit_transactions"))).scalar()
        sql_accounts = set((await conn.execute(text("SELECT id FROM accounts"))).scalars())
        per_account = (
            await conn.execute(
                text(
                    "SELECT account, count(*), coalesce(sum(amount), 0) "
                    "FROM credit_transactions GROUP BY account"
                )
            )
        ).all()
    if n_txn != census.txns:
        problems.append(f"SQL has {n_txn} transactions, the outbox {census.txns}")
    if sql_accounts != set(truth):
        problems.append(f"SQL has {len(sql_accounts)} accounts, Redis {len(truth)}")
    sql = {row[0]: (int(row[2]), int(row[1])) for row in per_account}
    wrong = [(a, truth[a], sql.get(a)) for a in truth if sql.get(a) != truth[a]]
    if wrong:
        problems.append(
            f"{len(wrong)} accounts where SQL (sum of amounts, count) != Redis (balance, seq),"
            f" e.g. {wrong[:3]}"
        )
    diffs = await _reconcile_all(redis, keys, engine, set(truth) | sql_accounts)
    if diffs:
        problems.append(f"reconcile: {len(diffs)} differences, e.g. {[str(d) for d in diffs[:3]]}")
    if problems:
        raise BenchFailure("WRONG RESULT: " + "; ".join(problems))
    return [
        f"{n_txn} SQL transactions = {census.txns} outbox transactions",
        f"{len(truth)} accounts: SQL sum(amount) and count = Redis balance and seq",
        "reconcile(): no differences",
        "outbox: 0 unwritten, 0 dead letters",
    ]
