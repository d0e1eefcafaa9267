"""The example SQL of docs/sql-ledger.md, run exactly as shown, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.persistence.writer import OutboxWriter
from tests.conftest import FakeClock

PAGE = Path(__file__).resolve().parents[2] / "docs" / "sql-ledger.md"
BURN_ORDER_MARKER = "-- what is left in each live bucket, in burn order"


def docs_statement(marker: str) -> str:
    """The SQL statement that follows the comment line ``marker`` in docs/sql-ledger.md."""
    lines = PAGE.read_text().splitlines()
    start = lines.index(marker) + 1
    statement: list[str] = []
    for line in lines[start:]:
        statement.append(line)
        if line.rstrip().endswith(";"):
            break
    return "\n".join(statement).rstrip().removesuffix(";")


async def test_the_documented_burn_order_query_lists_buckets_in_the_ledgers_burn_order(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    """Never-expiring buckets burn after expiring ones of the same priority: the page's
    query must say so on both databases (ASC puts NULLs first on SQLite, last on
    PostgreSQL)."""
    day = 86_400_000
    await ledger.configure_account("acme")
    await ledger.grant("acme", "forever-old", 5)
    clock.advance(1000)
    await ledger.grant("acme", "later", 5, expires_at=clock.now + 9 * day)
    await ledger.grant("acme", "soon", 5, expires_at=clock.now + day)
    await ledger.grant("acme", "forever-new", 5)
    await ledger.grant("acme", "first", 5, priority=-1)
    await ledger.grant("acme", "last", 5, priority=3, expires_at=clock.now + day)
    burn_order = [b.id for b in (await ledger.balance("acme")).buckets]
    assert burn_order == ["first", "soon", "later", "forever-old", "forever-new", "last"]

    writer = OutboxWriter(ledger.redis, engine, ledger.keys)
    await writer.ensure_group(0)
    while await writer.step(0):
        pass
    sql = docs_statement(BURN_ORDER_MARKER)
    async with engine.connect() as conn:
        rows = (await conn.execute(text(sql))).all()
    assert [r[0] for r in rows] == burn_order
