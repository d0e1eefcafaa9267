"""SQL fixtures: every writer test runs on SQLite (a file in a temp dir) and on the machine's
PostgreSQL (one database per test session, emptied before each test)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.persistence.db import create_engine, migrate, resolve_url
from sidecar.persistence.models import Base

PG_ADMIN_URL = os.environ.get("SIDECAR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session; its URL."""
    name = f"cs_test_{os.getpid()}"
    _psql(f"DROP DATABASE IF EXISTS {name}")
    _psql(f"CREATE DATABASE {name}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return resolve_url(None, tmp_path)
    url: str = request.getfixturevalue("pg_database")
    return resolve_url(url, tmp_path)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty ledger database."""
    engine = create_engine(database_url)
    await migrate(engine)
    await empty(engine)
    yield engine
    await engine.dispose()


async def empty(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(text(f"DELETE FROM {table.name}"))  # noqa: S608 - our names


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def correct_bucket(engine: AsyncEngine, account: str, bucket: str, remaining: int) -> None:
    """An admin's correction as the README describes it: the bucket's new remaining credits,
    stamped with the account's current seq."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE credit_balances SET remaining = :remaining, "
                "version = (SELECT seq FROM accounts WHERE id = :account) "
                "WHERE account = :account AND bucket_id = :bucket"
            ),
            {"remaining": remaining, "account": account, "bucket": bucket},
        )
