"""The one transaction helper every billing store shares: a short transaction on the SQL
ledger's engine, with every failure to reach SQL turned into ``LedgerUnavailable`` (503) here
and nowhere else; and the dialect's INSERT for the upserts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sidecar.errors import LedgerUnavailable
from sidecar.persistence.db import sqlstate, unavailable


def _reason(e: BaseException) -> str:
    """What to tell the caller: the error's kind and SQLSTATE, never its message (which can
    name the database or its user)."""
    state = sqlstate(e)
    return type(e).__name__ + (f" (SQLSTATE {state})" if state else "")


def insert_for(conn: AsyncConnection, table: Table) -> Any:
    """The dialect's INSERT (with on_conflict_do_nothing/do_update)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class Sql:
    """The SQL ledger's engine, shared by every store (a test may swap ``engine`` to take
    SQL away from all of them at once)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncConnection]:
        """One transaction. Every failure to reach SQL becomes ``LedgerUnavailable`` (503)
        here, for every route and worker: whatever opening a connection raises (refused,
        database gone or not accepting connections, authentication, pool exhausted, each
        driver with its own exception classes), and what a statement raises when the server
        goes away or is overloaded mid-transaction (``db.unavailable``)."""
        conn = self.engine.connect()
        try:
            await conn.start()
        except Exception as e:
            raise LedgerUnavailable(f"the SQL ledger is unavailable: {_reason(e)}") from e
        try:
            try:
                async with conn.begin():
                    yield conn
            finally:
                await conn.close()
        except Exception as e:
            if unavailable(e):
                raise LedgerUnavailable(f"the SQL ledger is unavailable: {_reason(e)}") from e
            raise


class SqlStore:
    """A store of some billing tables: every method is one short transaction (``tx``)."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql

    def tx(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        return self.sql.tx()
