"""Dead letters end to end through the admin API, on SQLite and PostgreSQL: an entry SQL
refuses goes to the dead-letter stream, stays visible, and once the cause is fixed the retry
moves it back into the outbox and the writer applies it; bad retry requests change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.http.app import create_app
from sidecar.http.state import LEDGER
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.persistence.reconcile import reconcile
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin
from tests.persistence.test_writer import drain, make_writer

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def api(settings: Settings, redis: Any, clock: FakeClock) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(settings, clock=clock))) as c:
        yield c


async def test_a_refused_entry_is_dead_lettered_then_retried_after_the_fix(
    api: Client, engine: AsyncEngine
) -> None:
    ledger: Ledger = api.app[LEDGER]
    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 10)
    await drain(make_writer(ledger, engine))
    # Something in SQL blocks the next transaction: a stray row holding its (account, seq).
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO credit_transactions (id, account, seq, type, amount, balance_after,"
                " debt_after, description, created_ms, created_at, details) VALUES ('stray',"
                " 'acme', 2, 'grant', 0, 0, 0, '', 0, '2026-01-01 00:00:00', '{}')"
            )
        )
    await ledger.deduct("acme", 3, "r1")
    await drain(make_writer(ledger, engine, max_attempts=2))

    r = await api.get("/v1/admin/outbox/dead-letters", headers=admin())
    (dead,) = (await r.json())["entries"]
    assert dead["entry"]["idempotency_key"] == "r1" and "dl_error" in dead["fields"]
    assert (await reconcile(ledger.redis, ledger.keys, engine)) != []

    for bad in ({"shard": 7}, {"ids": "x"}, {"ids": [dead["id"], "1-1"]}, [1]):
        r = await api.post("/v1/admin/outbox/dead-letters/retry", json=bad, headers=admin())
        assert r.status == 422, bad
    assert await ledger.redis.xlen(ledger.keys.dead_letters(0)) == 1  # nothing moved

    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM credit_transactions WHERE id = 'stray'"))
    r = await api.post(
        "/v1/admin/outbox/dead-letters/retry", json={"ids": [dead["id"]]}, headers=admin()
    )
    assert (await r.json())["retried"] == [dead["id"]]
    assert await ledger.redis.xlen(ledger.keys.dead_letters(0)) == 0
    await drain(make_writer(ledger, engine))
    assert await reconcile(ledger.redis, ledger.keys, engine) == []
