"""Shared fixtures: one real Redis server process per session (free port, temp dir), a clean
database per test, a ledger with a controllable clock, and an HTTP client on the real app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from sidecar.http.app import create_app
from sidecar.ledger import outbox
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.persistence.db import create_engine, migrate, resolve_url
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.ports import free_port

# Examples per property test of the ledger's laws (sequences of operations against the
# reference model): 150 in `make test`; `make check`, the inner loop, runs fewer.
PROPERTY_EXAMPLES = int(os.environ.get("SIDECAR_TEST_PROPERTY_EXAMPLES", "150"))

ADMIN = "admin-test-token"
SERVICE = "service-test-token"
START_MS = 1_800_000_000_000


class FakeClock:
    """Unix milliseconds that move only when a test says so."""

    def __init__(self, now: int = START_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisClient]:
    client = connect(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def paused(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, RedisClient]]:
    """A Redis of its own (fsync always) for a test that SIGSTOPs it; resumed and stopped after."""
    server = RedisServer(tmp_path / "redis", port=free_port(), appendfsync="always")
    server.start()
    client = connect(server.url)
    yield server, client
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)
    await client.aclose()
    server.stop()


@pytest.fixture
def ledger(redis: RedisClient, clock: FakeClock) -> Iterator[Ledger]:
    ledger = Ledger(redis, KeySpace(), retention_ms=3_600_000, clock=clock)
    yield ledger
    ledger.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite ledger migrated once per session, as the app's own migration at start would.

    The app-level tests start an app per test, and migrating an empty SQLite file (tables,
    indexes, each commit fsynced) costs more than most of those tests; each starts on a copy
    of this instead (:func:`premigrated`), and the app's migration then has nothing to do,
    as on the PostgreSQL pass (tests/sqlbackend.py). Migrating an empty ledger at start is
    itself tested on the processes of tests/cli and tests/persistence/test_migrations.py."""
    data_dir = tmp_path_factory.mktemp("sqlite-template")

    async def build() -> None:
        engine = create_engine(resolve_url(None, data_dir))
        try:
            await migrate(engine)
        finally:
            await engine.dispose()  # the last connection's close checkpoints the WAL

    # Its own thread: a session fixture may be set up while a test's event loop runs.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, build()).result()
    return data_dir / "ledger.db"


def premigrated(template: Path, data_dir: Path) -> Path:
    """Puts a copy of the migrated ``template`` where the app's default SQLite ledger lives in
    ``data_dir`` (mode 0600, as the app creates it); returns ``data_dir``."""
    target = data_dir / "ledger.db"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(template.read_bytes())
    return data_dir


@pytest.fixture
def settings(redis_server: RedisServer, tmp_path: Path, sqlite_template: Path) -> Settings:
    premigrated(sqlite_template, tmp_path)
    return Settings(
        redis_url=redis_server.url,
        admin_token=SecretStr(ADMIN),
        service_token=SecretStr(SERVICE),
        data_dir=tmp_path,
        writer="off",  # the writer's own tests turn it on (tests/persistence/)
        billing_worker="off",  # and the billing tests theirs (tests/billing/)
    )


@pytest.fixture
async def client(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(settings, clock=clock)
    async with TestClient(TestServer(app)) as c:
        yield c


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def service() -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE}"}


async def snapshot(redis: RedisClient) -> dict[bytes, object]:
    """Every key's type and content: equal snapshots mean nothing was written.

    (DUMP is not stable: reading a hashtable-encoded hash may rehash it and reorder fields.)
    """
    out: dict[bytes, object] = {}
    keys: Any = await redis.keys("*")
    # each serving process's token heartbeat and last-use notes (sidecar/ledger/token_cache.py)
    # are written in the background, not by the request under test
    chatter = {KeySpace().token_workers().encode(), KeySpace().token_use().encode()}
    for key in sorted(k for k in keys if k not in chatter):
        kind: Any = await redis.type(key)
        kind = kind.decode()
        value: object
        if kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = await redis.xrange(key)
        elif kind == "string":
            value = await redis.get(key)
        else:
            value = await redis.dump(key)
        out[key] = (kind, value)
    return out


async def stream(redis: RedisClient, key: str) -> list[dict[str, str]]:
    """A stream's entries as text dicts."""
    entries: Any = await redis.xrange(key)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def outbox_entries(redis: RedisClient, shard: int = 0) -> list[dict[str, Any]]:
    """The outbox's entries, decoded (typed JSON objects, sidecar/ledger/outbox.py)."""
    entries: Any = await redis.xrange(KeySpace().outbox(shard))
    return [outbox.decode(fields) for _, fields in entries]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """What needs PostgreSQL, beyond the modules marked so: the tests parametrized over the SQL
    backends (``[postgresql]``), and those that pick their own database (all PostgreSQL). What
    runs on a Redis Cluster (tests/cluster: six servers, the single-node suites again) is
    marked ``cluster``."""
    for item in items:
        if "/tests/cluster/" in str(item.path):
            item.add_marker(pytest.mark.cluster)
        if (
            "[postgresql" in item.nodeid
            or "pg_database" in getattr(item, "fixturenames", ())
            or item.get_closest_marker("own_database") is not None
        ):
            item.add_marker(pytest.mark.postgres)
    # Files with fault-injection (slow) tests first, the most first: pytest-xdist hands each
    # worker whole files in this order, and the longest files starting last would leave the
    # other workers idle at the end while one finishes them. Within a file the order stays.
    slow: dict[Path, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])
