"""Voids in the SQL ledger: a void's refund reaches SQL as a refund of the usage (with the voided
attempt's token in its details), reconcile is clean, and `rebuild` does not bring back the
voided check's idempotency record (a retry stays a new request, not a free replay)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.voids import send_void
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock
from tests.persistence.test_writer import drain, make_writer
from tests.test_void import attempt, void_of


async def test_a_voided_check_reaches_sql_as_a_refund_and_rebuild_does_not_restore_its_record(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 100)
    await attempt(ledger, "r1", "t1")  # lost
    assert await send_void(ledger, void_of("r1", "t1")) == "voided"
    await attempt(ledger, "r2", "t2")  # lost
    await attempt(ledger, "r2", "t3")  # its retry got the 200: the charge stays
    assert await send_void(ledger, void_of("r2", "t2")) == "marked"
    assert await drain(make_writer(ledger, engine)) == 5
    assert await reconcile(redis, ledger.keys, engine) == []
    async with engine.connect() as conn:
        rows = (
            await conn.exec_driver_sql(
                "SELECT type, amount, source_transaction_id FROM credit_transactions "
                "WHERE account = 'acme' ORDER BY seq"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("grant", 100, None),
        ("usage", -5, None),
        ("refund", 5, "tx_t1"),
        ("usage", -5, None),
    ]

    await rebuild(
        redis,
        ledger.keys,
        engine,
        replace=True,
        now_ms=clock.now,
        retention_ms=ledger.retention_ms,
    )
    assert await redis.get(ledger.keys.idempotency("acme", "r1")) is None
    assert await redis.get(ledger.keys.idempotency("acme", "r2")) is not None
    # r1 is a new request (charged), r2 still a replay of its charge
    r = await attempt(ledger, "r1", "t4")
    assert r[0] == b"ok" and r[4] == 0
    r = await attempt(ledger, "r2", "t5")
    assert r[0] == b"ok" and r[4] == 1
    assert (await ledger.balance("acme")).balance == 90
    await drain(make_writer(ledger, engine))
    assert await reconcile(redis, ledger.keys, engine) == []
