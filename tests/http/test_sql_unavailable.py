"""The SQL ledger refusing connections on the real PostgreSQL (a database that does not allow
connections, or is gone): every route that reads SQL answers 503 ``ledger_unavailable``, never
a 500, and answers again once SQL is back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import create_app
from sidecar.http.state import BILLING, LEDGER
from sidecar.persistence.writer import OutboxWriter
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import admin
from tests.persistence.test_writer import drain
from tests.sqlbackend import fresh_database, migrate_cli, psql

pytestmark = pytest.mark.own_database  # PostgreSQL, whatever SIDECAR_TEST_SQL says

Client = TestClient[web.Request, web.Application]
SQL_ROUTES = (
    "/v1/admin/accounts",
    "/v1/accounts/acme/transactions",
    "/v1/accounts/acme/transactions?format=csv",
    "/v1/accounts/acme/usage",
    "/v1/admin/packages",
    # One per billing store read by a route (they share one transaction helper).
    "/v1/admin/billing/events",
    "/v1/admin/billing/status",
    "/v1/admin/accounts/acme/notifications",
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        migrate_cli(url)
        yield url


@pytest.fixture
async def pg_client(
    settings: Settings, redis: RedisClient, pg_url: str, tmp_path: Path
) -> AsyncIterator[Client]:
    app = create_app(settings.model_copy(update={"database_url": pg_url}))
    async with TestClient(TestServer(app)) as c:
        r = await c.put("/v1/accounts/acme", json={}, headers=admin())
        assert r.status == 201
        ledger = c.app[LEDGER]
        await drain(OutboxWriter(ledger.redis, c.app[BILLING].sql.engine, ledger.keys))
        yield c


def _refuse(name: str, how: str) -> tuple[list[str], list[str]]:
    """SQL statements that make database ``name`` refuse new connections (and end the open
    ones, so the pool must reconnect), and those that undo it."""
    sessions = f"FROM pg_stat_activity WHERE datname = '{name}'"
    terminate = f"SELECT pg_terminate_backend(pid) {sessions}"
    if how == "allow_connections_false":
        return (
            [f"ALTER DATABASE {name} ALLOW_CONNECTIONS false", terminate],
            [f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"],
        )
    # Gone: renamed away (with its connections ended first), then renamed back.
    return (
        [f"ALTER DATABASE {name} ALLOW_CONNECTIONS false", terminate,
         f"ALTER DATABASE {name} RENAME TO {name}_away"],
        [f"ALTER DATABASE {name}_away RENAME TO {name}",
         f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"],
    )  # fmt: skip


async def _get(c: Client, path: str) -> tuple[int, Any]:
    r = await c.get(path, headers=admin())
    body = await r.json() if r.content_type == "application/json" else await r.text()
    return r.status, body


@pytest.mark.parametrize("how", ["allow_connections_false", "database_gone"])
async def test_sql_refusing_connections_is_503_ledger_unavailable_on_every_sql_route(
    pg_client: Client, pg_url: str, how: str
) -> None:
    for path in SQL_ROUTES:
        status, body = await _get(pg_client, path)
        assert status == 200, (path, body)
    name = pg_url.rsplit("/", 1)[1]
    refuse, undo = _refuse(name, how)
    psql(*refuse)
    try:
        for path in SQL_ROUTES:
            status, body = await _get(pg_client, path)
            assert status == 503, (path, body)
            assert body["error"]["code"] == "ledger_unavailable", (path, body)
        r = await pg_client.get("/readyz")
        assert (await r.json())["checks"]["sql"]["ok"] is False
    finally:
        psql(*undo)
    for path in SQL_ROUTES:
        status, body = await _get(pg_client, path)
        assert status == 200, (path, body)
