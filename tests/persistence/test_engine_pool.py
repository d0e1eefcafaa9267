"""The SQL connection pool follows the settings: ``SIDECAR_DATABASE_POOL_SIZE`` connections
stay open, up to ``SIDECAR_DATABASE_MAX_OVERFLOW`` more are opened under load and closed when
returned, the writer child process is given both, and out-of-range values are refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import QueuePool, text
from sqlalchemy.ext.asyncio import AsyncConnection

from sidecar.persistence.db import engine_for
from sidecar.runtime.writer_runner import WriterProcess
from sidecar.settings import Settings
from tests.sqlbackend import fresh_database, query

pytestmark = pytest.mark.postgres


def backends(url: str) -> int:
    """Connections PostgreSQL has open to the database of ``url``."""
    name = url.rsplit("/", 1)[1]
    rows = query(url, f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'")  # noqa: S608
    return int(rows[0][0]) - 1  # not the psql of this query


async def test_pool_settings_bound_the_postgresql_connections_of_an_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_DATABASE_POOL_SIZE", "2")
    monkeypatch.setenv("SIDECAR_DATABASE_MAX_OVERFLOW", "3")
    with fresh_database() as url:
        s = Settings(database_url=url, data_dir=tmp_path)
        engine = engine_for(s)
        try:
            assert isinstance(engine.pool, QueuePool) and engine.pool.size() == 2
            conns: list[AsyncConnection] = []
            for _ in range(5):  # 2 pooled + 3 overflow
                conns.append(await engine.connect())
                await conns[-1].execute(text("SELECT 1"))
            assert backends(url) == 5 and engine.pool.overflow() == 3
            with pytest.raises(TimeoutError):  # a 6th waits for one to come back
                await asyncio.wait_for(engine.connect(), 0.5)
            for c in conns:
                await c.close()
            assert backends(url) == 2 and engine.pool.checkedin() == 2  # overflow closed
        finally:
            await engine.dispose()


def test_the_writer_process_gets_the_pool_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings(data_dir=tmp_path, database_pool_size=12, database_max_overflow=0)
    env = WriterProcess._env(s, "redis://127.0.0.1:1")
    assert env["SIDECAR_DATABASE_POOL_SIZE"] == "12"
    assert env["SIDECAR_DATABASE_MAX_OVERFLOW"] == "0"
    for k, v in env.items():
        if k.startswith("SIDECAR_"):
            monkeypatch.setenv(k, v)
    child = Settings()  # what `credit-sidecar writer` reads
    assert (child.database_pool_size, child.database_max_overflow) == (12, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("database_pool_size", 0), ("database_pool_size", 1001), ("database_max_overflow", -1)],
)
def test_pool_settings_out_of_range_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings.model_validate({field: value})


async def test_sqlite_keeps_its_default_pool_whatever_the_pool_settings(tmp_path: Path) -> None:
    sqlite = f"sqlite:///{tmp_path / 'ledger.db'}"
    s = Settings(database_url=sqlite, database_pool_size=1, database_max_overflow=0)
    engine = engine_for(s)
    try:
        assert isinstance(engine.pool, QueuePool) and engine.pool.size() == 5
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
