"""What only a cluster has: shards spread over every master, a writer that consumes every
shard on every master, and `credit-sidecar serve` end to end on a cluster URL."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

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
from sidecar.redis.client import RedisClient
from tests.cli.conftest import call
from tests.conftest import ADMIN, SERVICE
from tests.rediscluster import LocalCluster

SHARDS = 16


def test_shards_spread_over_every_master(redis_cluster: LocalCluster) -> None:
    keys = KeySpace(SHARDS)
    owners = {redis_cluster.master_of(keys.outbox(s)).port for s in range(SHARDS)}
    assert owners == {m.port for m in redis_cluster.masters()}
    for s in range(SHARDS):  # an account's keys live with its shard's outbox
        account = next(a for a in (f"acct-{i}" for i in range(1000)) if keys.shard_of(a) == s)
        k = keys.for_account(account)
        assert {redis_cluster.master_of(x).port for x in [*k.common(), keys.outbox(s)]} == {
            redis_cluster.master_of(keys.outbox(s)).port
        }


async def drain(writer: OutboxWriter, shards: int) -> int:
    total = 0
    for s in range(shards):
        await writer.ensure_group(s)
        while n := await writer.step(s):
            total += n
    return total


async def test_writer_consumes_every_shard_on_every_master(
    redis: RedisClient, tmp_path: Path
) -> None:
    keys = KeySpace(SHARDS)
    ledger = Ledger(redis, keys)
    accounts = [f"acct-{i}" for i in range(64)]
    assert {keys.shard_of(a) for a in accounts} == set(range(SHARDS))
    for a in accounts:
        await ledger.configure_account(a)
        await ledger.grant(a, "g", 100)
    results = await asyncio.gather(
        *(ledger.deduct(a, 3, f"k{i}") for a in accounts for i in range(5))
    )
    assert all(isinstance(r, Allowed) for r in results)
    engine: AsyncEngine = create_engine(resolve_url(None, tmp_path))
    try:
        await migrate(engine)
        writer = OutboxWriter(redis, engine, keys)
        # account + grant + 5 checks per account
        assert await drain(writer, SHARDS) == len(accounts) * 7
        assert await reconcile(redis, keys, engine) == []
        assert all(s["unwritten"] == 0 for s in await outbox_status(redis, keys, 0))
    finally:
        await engine.dispose()


def test_serve_on_a_cluster_url_end_to_end(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    """`serve` with a redis+cluster:// URL and 16 shards: accounts, grants and checks over
    HTTP, then its writer puts every transaction in SQL."""
    redis_cluster.flush()
    from tests.ports import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {
        "SIDECAR_REDIS_URL": redis_cluster.url,
        "SIDECAR_SHARDS": str(SHARDS),
        "SIDECAR_DATA_DIR": str(tmp_path),
        "SIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
        "SIDECAR_ADMIN_TOKEN": ADMIN,
        "SIDECAR_SERVICE_TOKEN": SERVICE,
        "SIDECAR_WRITER_LINGER_MS": "0",
    }
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env)
    try:
        for _ in range(300):
            try:
                if call(env, "GET", "/healthz", None, ADMIN)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        accounts = [f"acct-{i}" for i in range(20)]
        for a in accounts:
            assert call(env, "PUT", f"/v1/accounts/{a}", {}, ADMIN)[0] == 201
            grant = {"grant_id": "g", "credits": 5, "reason": "test"}
            assert call(env, "POST", f"/v1/accounts/{a}/grants", grant, ADMIN)[0] == 201
        allowed = refused = 0
        for a in accounts:
            for i in range(6):  # the sixth is refused: 5 credits
                check = {"account": a, "cost": 1, "idempotency_key": f"{i}"}
                status, body = call(env, "POST", "/v1/check", check, SERVICE)
                allowed += status == 200 and body["allowed"]
                refused += status == 402
        assert (allowed, refused) == (100, 20)
        db = tmp_path / "ledger.db"
        rows = 0
        for _ in range(1200):  # a minute at most: the writer starts slowly on a busy machine
            if db.exists():
                with sqlite3.connect(db) as conn:
                    rows = conn.execute(
                        "SELECT count(*) FROM credit_transactions WHERE type = 'usage'"
                    ).fetchone()[0]
                if rows == 100:
                    break
            time.sleep(0.05)
        assert rows == 100
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
