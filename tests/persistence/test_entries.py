"""The outbox transaction entry's model (sidecar/ledger/outbox.py) against what the scripts
write and what the SQL writer keeps: a transaction read back from its SQL row is the entry it
came from."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger import outbox
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.persistence.models import CreditTransaction, table_of
from tests.conftest import FakeClock
from tests.persistence.test_writer import busy_ledger, drain, make_writer


async def test_every_transaction_reads_back_from_sql_as_the_entry_it_came_from(
    ledger: Ledger, engine: AsyncEngine, clock: FakeClock
) -> None:
    await busy_ledger(ledger, clock)
    await ledger.grant("acme", "purchase:cs_1:li", 50, source="purchase")
    await ledger.revoke(
        "acme", "cs_1", 30, buckets=["purchase:cs_1:li"], policy="negative", version=1
    )
    raw: Any = await ledger.redis.xrange(ledger.keys.outbox(0))
    entries = [t for _, fields in raw if (t := outbox.read_txn(fields)) is not None]
    assert {t.type for t in entries} >= {
        "purchase",
        "grant",
        "usage",
        "hold",
        "settle",
        "release",
        "refund",
        "expiry",
        "revoke",
    }
    await drain(make_writer(ledger, engine))
    txns = table_of(CreditTransaction)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(txns))).mappings().all()
    from_sql = {r["id"]: outbox.TxnEntry.from_sql(r) for r in rows}
    assert from_sql == {t.id: t for t in entries}
