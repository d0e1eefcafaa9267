"""Fixtures of the attack suites: a SQLite ledger of each test's own, and the app on a Redis the
test may pause (the app-level ``client`` is tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.http.app import create_app
from sidecar.persistence.db import create_engine, migrate, resolve_url
from sidecar.redis.client import RedisClient
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.conftest import ADMIN, SERVICE, FakeClock, premigrated

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated SQLite ledger of this test's own."""
    e = create_engine(resolve_url(None, tmp_path))
    await migrate(e)
    yield e
    await e.dispose()


def paused_settings(server: RedisServer, tmp_path: Path, sqlite_template: Path) -> Settings:
    """The app's settings on ``server`` (which the test may SIGSTOP): a 1 s Redis deadline."""
    data = tmp_path / "data"
    data.mkdir()
    premigrated(sqlite_template, data)
    return Settings(
        redis_url=server.url,
        admin_token=SecretStr(ADMIN),
        service_token=SecretStr(SERVICE),
        data_dir=data,
        writer="off",
        billing_worker="off",
        redis_deadline_s=1.0,
        redis_deadline_margin_ms=200,
    )


@pytest.fixture
async def paused_client(
    paused: tuple[RedisServer, RedisClient], tmp_path: Path, sqlite_template: Path, clock: FakeClock
) -> AsyncIterator[tuple[Client, RedisServer, RedisClient]]:
    """The app on a Redis of its own that the test may SIGSTOP (a 1 s deadline)."""
    server, redis_client = paused
    app = create_app(paused_settings(server, tmp_path, sqlite_template), clock=clock)
    async with TestClient(TestServer(app)) as c:
        yield c, server, redis_client
