"""Many sidecars, one Redis: real `credit-sidecar serve` processes (own ports, own data dirs)
on the tests' Redis with one PostgreSQL ledger (a fresh database per test).

- Checks sent concurrently to two sidecars on the same accounts spend each credit exactly once;
  an idempotency key replayed on the other sidecar, or sent to both at once, is charged once.
- The sidecars' writers share the outbox: after they drain, SQL holds every transaction once
  and `credit-sidecar reconcile` finds no difference.
- Two `credit-sidecar writer` processes share the shards; when one is SIGKILLed the other takes
  its shards over once the lease lapses, and still every transaction reaches SQL exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from sidecar.ledger.keyspace import KeySpace
from sidecar.persistence.db import create_engine, resolve_url
from sidecar.persistence.writer import GROUP
from sidecar.redis.embedded import RedisServer
from tests.conftest import ADMIN, SERVICE, admin, service
from tests.e2e.conftest import wait_listening
from tests.ports import free_port
from tests.sqlbackend import fresh_database

pytestmark = pytest.mark.own_database  # PostgreSQL, whatever SIDECAR_TEST_SQL says

SHARDS = 4
LEASE_MS = 2000  # > the writer's 1 s blocking read, so an idle writer keeps its lease


def sidecar_env(redis_url: str, database_url: str, **more: str) -> dict[str, str]:
    """The environment every process of the deployment shares (nothing from the caller's
    SIDECAR_* variables leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return env | {
        "SIDECAR_REDIS_URL": redis_url,
        "SIDECAR_DATABASE_URL": database_url,
        "SIDECAR_ADMIN_TOKEN": ADMIN,
        "SIDECAR_SERVICE_TOKEN": SERVICE,
        "SIDECAR_SHARDS": str(SHARDS),
        "SIDECAR_WRITER_LEASE_MS": str(LEASE_MS),
        "SIDECAR_WRITER_LINGER_MS": "20",
        **more,
    }


class Processes:
    """Processes a test starts (output in its temp dir); all stopped when the test ends."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started.append(proc)
        return proc

    async def serve(self, n: int, env: dict[str, str], data: Path) -> list[str]:
        """``n`` `serve` processes with their own ports and data dirs; their base URLs once
        they answer."""
        urls = []
        for i in range(n):
            port = free_port()
            listen = {"SIDECAR_LISTEN": f"127.0.0.1:{port}", "SIDECAR_DATA_DIR": str(data / str(i))}
            self.spawn(f"serve-{i}", env | listen, "serve")
            urls.append(f"http://127.0.0.1:{port}")
        await asyncio.gather(*(wait_listening(f"{u}/healthz") for u in urls))
        return urls

    def stop(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.send_signal(signal.SIGCONT)  # in case a test left it stopped
        for p in self.started:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def processes(tmp_path: Path, redis: Any, pg_url: str) -> Iterator[Processes]:
    # Depends on `redis` (emptied before the test) and the database: stopped before either.
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: object = None, *, svc: bool = False
) -> tuple[int, Any]:
    headers = service() if svc else admin()
    async with http.request(method, url, json=body, headers=headers) as r:
        return r.status, await r.json()


async def check(http: aiohttp.ClientSession, url: str, account: str, key: str) -> tuple[int, Any]:
    body = {"account": account, "cost": 1, "idempotency_key": key}
    return await call(http, "POST", f"{url}/v1/check", body, svc=True)


async def open_account(http: aiohttp.ClientSession, url: str, account: str, credits: int) -> None:
    assert (await call(http, "PUT", f"{url}/v1/accounts/{account}", {}))[0] == 201
    grant = {"grant_id": "g", "credits": credits, "source": "purchase"}
    assert (await call(http, "POST", f"{url}/v1/accounts/{account}/grants", grant))[0] == 201


async def drained(http: aiohttp.ClientSession, url: str, timeout_s: float = 20) -> dict[str, Any]:
    """The outbox status once every entry is written to SQL."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await call(http, "GET", f"{url}/v1/admin/outbox")
        assert status == 200, body
        if body["unwritten"] == 0:
            return dict(body)
        assert time.monotonic() < deadline, f"the writers did not drain the outbox: {body}"
        await asyncio.sleep(0.1)


async def sql(database_url: str, query: str) -> list[Any]:
    engine = create_engine(resolve_url(database_url, Path()))
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(query))).all())
    finally:
        await engine.dispose()


async def usage_ids(database_url: str) -> list[str]:
    rows = await sql(database_url, "SELECT id FROM credit_transactions WHERE type = 'usage'")
    return [r[0] for r in rows]


async def assert_reconciled(env: dict[str, str]) -> None:
    """`credit-sidecar reconcile` (every account, both sides) finds Redis and SQL equal."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "reconcile",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out, err)
    assert json.loads(out) == {"clean": True, "unwritten": 0, "differences": []}


def accounts_on_every_shard(per_shard: int) -> list[str]:
    """Account names, ``per_shard`` on each outbox shard."""
    keys, out, count = KeySpace(SHARDS), [], Counter[int]()
    for i in itertools.count():
        name = f"acct-{i}"
        shard = keys.shard_of(name)
        if count[shard] < per_shard:
            count[shard] += 1
            out.append(name)
        if len(out) == per_shard * SHARDS:
            return out
    raise AssertionError("unreachable")


async def test_two_sidecars_on_one_redis_spend_each_credit_once_and_sql_records_each_once(
    redis_server: RedisServer,
    pg_url: str,
    processes: Processes,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Two `serve` processes (writer in each) take concurrent checks on the same accounts:
    exactly the granted credits are allowed, each remaining balance is seen once, replays on
    the other sidecar and keys sent to both at once are charged once; after the writers
    drain, SQL holds each transaction exactly once and reconcile is clean."""
    env = sidecar_env(redis_server.url, pg_url)
    urls = await processes.serve(2, env, tmp_path)
    accounts, credits, tries = accounts_on_every_shard(1), 40, 100
    for a in accounts:
        await open_account(http, urls[0], a, credits)

    # Every account at once, its checks alternating between the two sidecars.
    jobs = [(a, f"{a}-r{j}", urls[j % 2]) for a in accounts for j in range(tries)]
    replies = await asyncio.gather(*(check(http, u, a, k) for a, k, u in jobs))
    allowed: dict[str, tuple[str, str]] = {}  # key -> (account, transaction id)
    for (a, key, _), (status, body) in zip(jobs, replies, strict=True):
        assert status in (200, 402), body
        if status == 200:
            assert body["replayed"] is False
            allowed[key] = (a, body["transaction_id"])
    for a in accounts:
        mine = [
            body["balance"]
            for (acct, _, _), (status, body) in zip(jobs, replies, strict=True)
            if acct == a and status == 200
        ]
        assert sorted(mine) == list(range(credits)), a  # each credit spent once, in turn
    assert len(allowed) == credits * len(accounts)
    assert len({t for _, t in allowed.values()}) == len(allowed)

    # Replayed on the other sidecar: the first result, nothing charged.
    by_key = {k: u for _, k, u in jobs}
    other = {urls[0]: urls[1], urls[1]: urls[0]}
    replays = await asyncio.gather(
        *(check(http, other[by_key[k]], a, k) for k, (a, _) in allowed.items())
    )
    for (key, (_, txn)), (status, body) in zip(allowed.items(), replays, strict=True):
        assert status == 200 and body["replayed"] is True and body["transaction_id"] == txn, key
    for a in accounts:
        status, body = await call(http, "GET", f"{urls[1]}/v1/accounts/{a}/balance")
        assert body["balance"] == 0

    # One key sent to both sidecars at the same moment: charged once.
    await open_account(http, urls[1], "dup", 100)
    pairs = [(f"dup-{j}", u) for j in range(60) for u in urls]
    replies = await asyncio.gather(*(check(http, u, "dup", k) for k, u in pairs))
    first: dict[str, list[bool]] = {}
    txns: dict[str, set[str]] = {}
    for (key, _), (status, body) in zip(pairs, replies, strict=True):
        assert status == 200, body
        first.setdefault(key, []).append(not body["replayed"])
        txns.setdefault(key, set()).add(body["transaction_id"])
    assert all(sum(f) == 1 for f in first.values()) and all(len(t) == 1 for t in txns.values())
    assert (await call(http, "GET", f"{urls[0]}/v1/accounts/dup/balance"))[1]["balance"] == 40
    expected = {t for _, t in allowed.values()} | {t for ts in txns.values() for t in ts}

    for u in urls:
        outbox = await drained(http, u)
        assert outbox["dead_letters"] == 0 and outbox["writer"]["running"], outbox
    ids = await usage_ids(pg_url)
    assert len(ids) == len(set(ids)) and set(ids) == expected
    rows = await sql(
        pg_url,
        "SELECT account, count(*), sum(amount), min(seq), max(seq) FROM credit_transactions "
        "GROUP BY account",
    )
    totals = {r[0]: tuple(r[1:]) for r in rows}
    # Per account: the grant and one row per allowed check, gap-free seqs, amounts summing
    # to the balance.
    assert totals == {a: (credits + 1, 0, 1, credits + 1) for a in accounts} | {
        "dup": (61, 40, 1, 61)
    }
    await assert_reconciled(env)


async def load(
    http: aiohttp.ClientSession,
    urls: list[str],
    accounts: list[str],
    stop: asyncio.Event,
    allowed: set[str],
    concurrency: int = 8,
) -> None:
    """Checks with fresh keys on every account through every sidecar until ``stop``; the
    transaction id of each allowed one goes into ``allowed``."""
    counter = itertools.count()

    async def one_client() -> None:
        while not stop.is_set():
            n = next(counter)
            status, body = await check(
                http, urls[n % len(urls)], accounts[n % len(accounts)], f"k{n}"
            )
            assert status == 200, body
            allowed.add(body["transaction_id"])

    await asyncio.gather(*(one_client() for _ in range(concurrency)))


async def lease_holders(redis: Any) -> list[str | None]:
    keys = KeySpace(SHARDS)
    out: list[str | None] = []
    for shard in range(SHARDS):
        holder = await redis.get(keys.writer_lease(shard))
        out.append(holder.decode() if isinstance(holder, bytes) else holder)
    return out


def held_by(holders: list[str | None], pid: int) -> bool:
    return all(h is not None and f":{pid}:" in h for h in holders)


async def wait_for(what: str, predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> float:
    """Polls the async ``predicate`` until it is true; the seconds it took."""
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < timeout_s, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.slow
async def test_a_sigkilled_writer_s_shards_are_taken_over_and_sql_gets_each_entry_once(
    redis_server: RedisServer,
    redis: Any,
    pg_url: str,
    processes: Processes,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Two `serve` processes (writer off) and two `credit-sidecar writer` processes on 4
    shards under load: writer A holds every shard's lease, B waits; A is SIGKILLed in the
    middle of a batch (entries read, not acknowledged) and B takes every shard over once the
    lease lapses (within a few lease periods). When B has drained the outbox, SQL holds each allowed
    check exactly once, nothing is dead-lettered and reconcile is clean."""
    env = sidecar_env(redis_server.url, pg_url, SIDECAR_WRITER="off")
    urls = await processes.serve(2, env, tmp_path)
    accounts = accounts_on_every_shard(2)
    for a in accounts:
        await open_account(http, urls[0], a, 1_000_000)
    # No linger: under load the writer is always in a batch (read, SQL, acknowledge).
    writer_env = env | {
        "SIDECAR_DATA_DIR": str(tmp_path / "writers"),
        "SIDECAR_WRITER_LINGER_MS": "0",
    }
    wa = processes.spawn("writer-a", writer_env, "writer")
    await wait_for("writer A to take every lease", lambda: _held(redis, wa.pid), 20)
    wb = processes.spawn("writer-b", writer_env, "writer")

    stop, allowed = asyncio.Event(), set[str]()
    traffic = asyncio.create_task(load(http, urls, accounts, stop, allowed))
    try:
        await wait_for("A to write", lambda: _written(pg_url), 10)
        assert await freeze_with_pending(redis, wa.pid) > 0
        wa.kill()  # SIGKILL mid-batch: entries read but not acknowledged, the leases kept
        wa.wait()
        took = await wait_for("B to take A's shards", lambda: _held(redis, wb.pid), 20)
        # once A's lease lapsed (2 s) and B's next poll came: on a quiet machine about 3 s;
        # the bound is generous (a busy CI machine), a writer that never took over is not
        assert took <= 5 * LEASE_MS / 1000, took
        await asyncio.sleep(0.5)  # more load with B alone
    finally:
        stop.set()
        await traffic
    assert wb.poll() is None

    outbox = await drained(http, urls[0])
    assert outbox["dead_letters"] == 0
    ids = await usage_ids(pg_url)
    assert len(ids) == len(set(ids)) and set(ids) == allowed and len(allowed) > 100
    await assert_reconciled(env)
    assert held_by(await lease_holders(redis), wb.pid)


async def pending(redis: Any) -> int:
    """Outbox entries read by a writer and not yet acknowledged, over every shard."""
    keys, n = KeySpace(SHARDS), 0
    for shard in range(SHARDS):
        summary: Any = await redis.xpending(keys.outbox(shard), GROUP)
        n += int(summary["pending"])
    return n


async def freeze_with_pending(redis: Any, pid: int, tries: int = 200) -> int:
    """SIGSTOPs process ``pid`` at a moment it has entries pending (resuming and retrying
    until it does); the count."""
    for _ in range(tries):
        os.kill(pid, signal.SIGSTOP)
        n = await pending(redis)
        if n:
            return n
        os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(0.01)
    return 0


async def _held(redis: Any, pid: int) -> bool:
    return held_by(await lease_holders(redis), pid)


async def _written(database_url: str) -> bool:
    with contextlib.suppress(Exception):  # the writer may not have migrated yet
        return bool(await usage_ids(database_url))
    return False
