"""A shard's slot migrated to another master under load: no check is refused, and every credit
is accounted for afterwards.

While a slot migrates, a script call whose keys are split between the two masters (a check's
new idempotency key exists on neither) is answered TRYAGAIN by both, for the whole window:
from ``CLUSTER SETSLOT <slot> MIGRATING`` until ``CLUSTER SETSLOT <slot> NODE``. The sidecar
sends such calls again within their deadline instead of answering 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sidecar import errors
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
from sidecar.redis.client import connect
from sidecar.redis.embedded import RedisServer
from tests.rediscluster import LocalCluster

pytestmark = pytest.mark.slow

SHARDS = 4
GRANT = 1_000_000
WINDOW_S = 1.5  # the slot stays MIGRATING/IMPORTING this long before its keys move


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of the test's own: its slot map changes."""
    c = LocalCluster(tmp_path / "cluster", replicas=0)
    c.start()
    yield c
    c.stop()


def node(n: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=n.port, socket_timeout=10)


def move_slot(cluster: LocalCluster, slot: int, source: RedisServer, target: RedisServer) -> int:
    """What `redis-cli --cluster reshard` does for one slot; returns the keys moved."""
    with node(source) as src, node(target) as dst:
        source_id = src.execute_command("CLUSTER", "MYID").decode()
        target_id = dst.execute_command("CLUSTER", "MYID").decode()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        time.sleep(WINDOW_S)  # a big slot takes this long to move (the window the checks see)
        moved = 0
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        for n in (target, source, *(m for m in cluster.masters() if m not in (source, target))):
            with node(n) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return moved


async def test_a_slot_migrated_under_load_refuses_no_check_and_reconciles(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    keys = KeySpace(SHARDS)
    client = connect(cluster.url)
    ledger = Ledger(client, keys)  # the default deadline (5 s) spans the window
    accounts = [f"acct-{i}" for i in range(24)]
    migrating = [a for a in accounts if keys.shard_of(a) == 0]
    assert migrating and len(migrating) < len(accounts)
    for a in accounts:
        await ledger.configure_account(a)
        await ledger.grant(a, "g", GRANT)
    engine = create_engine(resolve_url(None, tmp_path))
    await migrate(engine)
    writer = OutboxWriter(client, engine, keys, block_ms=100, lease_ms=2000)
    stop_writer = asyncio.Event()
    writer_task = asyncio.create_task(writer.run(stop_writer))

    acknowledged = dict.fromkeys(accounts, 0)
    refused: list[str] = []
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            a = accounts[(worker * 5 + i) % len(accounts)]
            i += 1
            try:
                r = await ledger.deduct(a, 1, f"w{worker}-{i}")
            except errors.StoreUnavailable:
                refused.append(a)
                continue
            assert isinstance(r, Allowed)
            acknowledged[a] += 1

    with node(cluster.nodes[0]) as c:
        slot = int(c.execute_command("CLUSTER", "KEYSLOT", keys.outbox(0)))
    source = cluster.master_of(keys.outbox(0))
    target = next(m for m in cluster.masters() if m.port != source.port)
    tasks = [asyncio.create_task(load(w)) for w in range(12)]
    try:
        await asyncio.sleep(0.5)
        before = sum(acknowledged[a] for a in migrating)
        t0 = time.monotonic()
        moved = await asyncio.to_thread(move_slot, cluster, slot, source, target)
        window = time.monotonic() - t0
        await asyncio.sleep(0.5)  # load on the new owner
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    assert cluster.master_of(keys.outbox(0)).port == target.port
    assert moved > 0
    assert refused == []
    assert sum(acknowledged[a] for a in migrating) > before  # served through and after it
    for a in accounts:
        assert (await ledger.balance(a)).balance == GRANT - acknowledged[a], a

    async def unwritten() -> int:
        return sum(s["unwritten"] for s in await outbox_status(client, keys, 0))

    for _ in range(300):
        if await unwritten() == 0:
            break
        await asyncio.sleep(0.1)
    assert await unwritten() == 0
    stop_writer.set()
    await writer_task
    assert await reconcile(client, keys, engine) == []
    print(
        f"slot {slot} ({moved} keys) moved in {window:.1f} s under load: "
        f"{sum(acknowledged.values())} checks acknowledged, none refused"
    )
    await engine.dispose()
    ledger.close()
    await client.aclose()
