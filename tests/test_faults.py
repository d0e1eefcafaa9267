"""Fault injection under load: losing the script cache (SCRIPT FLUSH) or the whole server
(SIGKILL, restart with its AOF) fails no request and charges nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.embedded import RedisServer
from tests.conftest import outbox_entries
from tests.ports import free_port

pytestmark = pytest.mark.slow

WORKERS, PER_WORKER = 8, 150


@pytest.fixture
async def private(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, RedisClient, Ledger]]:
    """A server of the test's own (it gets killed), fsyncing every write."""
    server = RedisServer(tmp_path / "redis", port=free_port(), appendfsync="always")
    server.start()
    client = connect(server.url)
    ledger = Ledger(client, KeySpace())
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 1_000_000)
    yield server, client, ledger
    await client.aclose()
    server.stop()


async def load(ledger: Ledger) -> None:
    async def worker(w: int) -> None:
        for i in range(PER_WORKER):
            r = await ledger.deduct("a", 1, f"w{w}-{i}")
            assert isinstance(r, Allowed)

    await asyncio.gather(*(worker(w) for w in range(WORKERS)))


async def assert_charged_once_each(client: RedisClient, ledger: Ledger) -> None:
    total = WORKERS * PER_WORKER
    assert (await ledger.balance("a")).balance == 1_000_000 - total
    usage = [e for e in await outbox_entries(client) if e.get("type") == "usage"]
    assert len(usage) == total
    assert len({e["idempotency_key"] for e in usage}) == total


async def test_script_flush_under_load_fails_no_request(
    private: tuple[RedisServer, RedisClient, Ledger],
) -> None:
    _, client, ledger = private
    done = asyncio.Event()

    async def flusher() -> int:
        flushes = 0
        while not done.is_set():
            await client.script_flush()
            flushes += 1
            await asyncio.sleep(0.005)
        return flushes

    flushing = asyncio.create_task(flusher())
    await load(ledger)
    done.set()
    assert await flushing > 5
    await assert_charged_once_each(client, ledger)


async def test_server_killed_and_restarted_under_load_fails_no_request(
    private: tuple[RedisServer, RedisClient, Ledger],
) -> None:
    server, client, ledger = private

    async def crash_twice() -> None:
        for _ in range(2):
            await asyncio.sleep(0.15)
            server.kill()
            server.start()  # blocks the loop ~0.1 s: part of the outage

    await asyncio.gather(load(ledger), crash_twice())
    await assert_charged_once_each(client, ledger)
