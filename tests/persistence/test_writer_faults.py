"""The writer under faults, on SQLite and PostgreSQL: a `credit-sidecar writer` process
SIGKILLed again and again mid-batch; Redis SIGKILLed under load (appendfsync always); the
writer stopped while 50k events pile up and trimming runs; SQL unreachable while the sidecar
keeps serving. Afterwards SQL equals Redis exactly, with no transaction missing or doubled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.http.app import create_app
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.persistence.db import create_engine, migrate, resolve_url
from sidecar.persistence.outbox_status import outbox_status
from sidecar.persistence.reconcile import reconcile
from sidecar.persistence.writer import OutboxWriter
from sidecar.redis import breaker
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.conftest import ADMIN, SERVICE, admin, service
from tests.persistence.conftest import empty, rows
from tests.persistence.test_writer import drain
from tests.ports import free_port

pytestmark = pytest.mark.slow


async def deduct_many(ledger: Ledger, accounts: list[str], n: int, workers: int = 16) -> set[str]:
    """n one-credit deductions spread over accounts; returns the acknowledged transaction ids."""
    acked: set[str] = set()

    async def worker(w: int) -> None:
        for i in range(w, n, workers):
            r = await ledger.deduct(accounts[i % len(accounts)], 1, f"r{i}")
            assert isinstance(r, Allowed)
            acked.add(r.transaction_id)

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return acked


async def setup_accounts(ledger: Ledger, n: int, credits: int) -> list[str]:
    names = [f"acct{i}" for i in range(n)]
    for a in names:
        await ledger.configure_account(a)
        await ledger.grant(a, "g", credits)
    return names


async def until(predicate: Any, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.05)


async def assert_sql_equals_redis(ledger: Ledger, engine: AsyncEngine, expected: int) -> None:
    assert await reconcile(ledger.redis, ledger.keys, engine) == []
    (counts,) = await rows(engine, "SELECT count(*), count(DISTINCT id) FROM credit_transactions")
    assert counts[0] == counts[1] == expected


def start_writer(redis_url: str, database_url: str, tmp: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SIDECAR_REDIS_URL": redis_url,
        "SIDECAR_DATABASE_URL": database_url,
        "SIDECAR_DATA_DIR": str(tmp),
        "SIDECAR_WRITER_BATCH_SIZE": "200",
        "SIDECAR_WRITER_LEASE_MS": "300",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar", "writer"], env=env, stderr=subprocess.DEVNULL
    )


async def test_writer_sigkilled_mid_batch_again_and_again_loses_and_doubles_nothing(
    ledger: Ledger,
    engine: AsyncEngine,
    database_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    accounts = await setup_accounts(ledger, 50, 1_000)
    proc = start_writer(redis_server.url, database_url, tmp_path)
    kills = 0
    load = asyncio.create_task(deduct_many(ledger, accounts, 10_000))
    try:
        while kills < 4 or not load.done():
            await asyncio.sleep(random.uniform(0.8, 1.5))  # started, and mid-batch by now
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start_writer(redis_server.url, database_url, tmp_path)
        acked = await load
        assert len(acked) == 10_000

        async def written() -> bool:
            status = await outbox_status(ledger.redis, ledger.keys, ledger.clock())
            return bool(status[0]["unwritten"] == 0)

        await until(written)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    await assert_sql_equals_redis(ledger, engine, 10_000 + 50)


@pytest.fixture
async def killable(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, Ledger]]:
    server = RedisServer(tmp_path / "redis", port=free_port(), appendfsync="always")
    server.start()
    client = connect(server.url)
    yield server, Ledger(client, KeySpace())
    await client.aclose()
    server.stop()


async def test_redis_sigkilled_under_load_every_acknowledged_deduction_reaches_sql(
    killable: tuple[RedisServer, Ledger], engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """appendfsync always: what a client was told is charged survives the crash and is
    written to SQL once Redis is back (the writer rides out the outage)."""
    # Calls ride out each restart however long a loaded machine takes to start redis-server
    # (past the breaker's grace they would fail at once: tests/test_redis_down.py covers that).
    monkeypatch.setattr(breaker, "GRACE_S", 30.0)
    server, ledger = killable
    accounts = await setup_accounts(ledger, 10, 10_000)
    writer = OutboxWriter(ledger.redis, engine, ledger.keys, lease_ms=300)
    stop = asyncio.Event()
    writing = asyncio.create_task(writer.run(stop))
    load = asyncio.create_task(deduct_many(ledger, accounts, 3_000, workers=8))
    for _ in range(2):
        await asyncio.sleep(0.3)
        server.kill()
        await asyncio.sleep(0.2)
        server.start()
    acked = await load

    async def written() -> bool:
        status = await outbox_status(ledger.redis, ledger.keys, ledger.clock())
        return bool(status[0]["unwritten"] == 0)

    await until(written)
    stop.set()
    await writing
    ids = {r[0] for r in await rows(engine, "SELECT id FROM credit_transactions")}
    assert acked <= ids
    await assert_sql_equals_redis(ledger, engine, 3_000 + 10)


async def test_writer_stopped_while_50k_events_pile_up_and_trimming_runs(
    ledger: Ledger, engine: AsyncEngine, redis: RedisClient
) -> None:
    accounts = await setup_accounts(ledger, 100, 1_000)
    writer = OutboxWriter(ledger.redis, engine, ledger.keys, batch_size=1000)
    await drain(writer)  # it ran once: the consumer group exists, 200 entries written
    assert await writer.trim(0, force=True) == 200
    await deduct_many(ledger, accounts, 50_000, workers=32)  # the writer is stopped
    assert await writer.trim(0, force=True) == 0  # nothing written since: nothing may go
    assert await redis.xlen(ledger.keys.outbox(0)) == 50_000
    await drain(OutboxWriter(ledger.redis, engine, ledger.keys, batch_size=1000))
    await assert_sql_equals_redis(ledger, engine, 50_000 + 100)  # usage + grants


class TcpProxy:
    """A TCP relay to PostgreSQL that the test can cut (SQL "down") and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.links):
            w.transport.abort()
        self.links.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.links |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


async def test_sql_down_fails_no_request_and_the_lag_drains_when_it_is_back(
    redis: RedisClient, redis_server: RedisServer, pg_database: str, tmp_path: Path
) -> None:
    """PostgreSQL only: a SQLite file cannot be made unreachable the way a server can."""
    proxy = TcpProxy(5432)
    await proxy.up()
    url = resolve_url(pg_database.replace(":5432/", f":{proxy.port}/"), tmp_path)
    engine = create_engine(resolve_url(pg_database, tmp_path))
    await migrate(engine)
    await empty(engine)
    settings = Settings(
        redis_url=redis_server.url,
        database_url=url,
        admin_token=SecretStr(ADMIN),
        service_token=SecretStr(SERVICE),
        data_dir=tmp_path,
        writer_lease_ms=300,
    )
    try:
        async with TestClient(TestServer(create_app(settings))) as c:
            await c.put("/v1/accounts/acme", json={}, headers=admin())
            grant = {"grant_id": "g", "credits": 1000, "reason": "test"}
            await c.post("/v1/accounts/acme/grants", json=grant, headers=admin())

            async def status() -> dict[str, Any]:
                r = await c.get("/v1/admin/outbox", headers=admin())
                body: dict[str, Any] = await r.json()
                return body

            async def drained() -> bool:
                return bool((await status())["unwritten"] == 0)

            await until(drained)
            await proxy.down()
            for i in range(200):
                body = {"account": "acme", "cost": 1, "idempotency_key": f"r{i}"}
                r = await c.post("/v1/check", json=body, headers=service())
                assert r.status == 200
            await asyncio.sleep(1.1)
            during = await status()
            assert during["unwritten"] >= 200 and during["lag_s"] >= 1
            await proxy.up()
            await until(drained)
            after = await status()
            assert after["lag_s"] == 0 and after["dead_letters"] == 0
        await assert_sql_equals_redis(Ledger(redis, KeySpace()), engine, 1 + 200)
    finally:
        await proxy.down()
        await engine.dispose()


async def test_a_batch_slower_than_the_lease_keeps_its_lease(
    redis: RedisClient, ledger: Ledger, tmp_path: Path
) -> None:
    """SQLite locked by another process for longer than the lease: the writer's commit waits
    (busy timeout), its lease is renewed meanwhile, and nobody may take the shard over (nor
    would `serve` think the writer hung and kill it)."""
    url = resolve_url(None, tmp_path)
    engine = create_engine(url)
    await migrate(engine)
    await ledger.configure_account("a")
    writer = OutboxWriter(redis, engine, ledger.keys, lease_ms=400, block_ms=100)
    lease = ledger.keys.writer_lease(0)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        await until(lambda: _is(redis.get(lease), writer.token))
        locker = await asyncio.create_subprocess_exec(  # holds the write lock for 2 s
            *(sys.executable, "-c", _LOCK_SQLITE, str(tmp_path / "ledger.db"), "2.0"),
            stdout=subprocess.PIPE,
        )
        assert locker.stdout is not None
        assert await locker.stdout.readline() == b"locked\n"
        await ledger.grant("a", "g", 5)  # its batch now waits for the lock
        holders = set()
        unlocked = asyncio.create_task(locker.wait())
        while not unlocked.done():
            holders.add(await redis.get(lease))
            await asyncio.sleep(0.02)
        assert holders == {writer.token.encode()}
        await until(lambda: _written(ledger))
    finally:
        stop.set()
        await task
        await engine.dispose()


_LOCK_SQLITE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


async def _is(value: Any, expected: str) -> bool:
    got = await value
    return bool(got is not None and got.decode() == expected)


async def _written(ledger: Ledger) -> bool:
    shards = await outbox_status(ledger.redis, ledger.keys, ledger.clock())
    return all(s["unwritten"] == 0 for s in shards)
