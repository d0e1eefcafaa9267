"""The Alembic migrations build exactly the models' schema, on SQLite and PostgreSQL, and
can be undone and redone."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.persistence.db import alembic_config, migrate
from sidecar.persistence.models import Base


def _diff(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


async def test_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_migrations_downgrade_to_nothing_and_upgrade_again(engine: AsyncEngine) -> None:
    def down(conn: Connection) -> None:
        command.downgrade(alembic_config(conn), "base")

    async with engine.begin() as conn:
        await conn.run_sync(down)
    await migrate(engine)
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
