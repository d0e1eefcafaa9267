"""Alembic environment: runs on the connection the sidecar passes (see persistence/db.py), or,
for ``alembic revision --autogenerate`` during development, on SIDECAR_DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import context
from sqlalchemy import Connection

from sidecar.persistence.db import create_engine, resolve_url
from sidecar.persistence.models import Base

target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    url = resolve_url(os.environ.get("SIDECAR_DATABASE_URL"), Path(".data"))
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(run)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    asyncio.run(run_standalone())
