"""Issue 20 attacked as a hostile client and a chaos tester: settling above a hold (the extra
draw, the overdraft, `uncovered`, replays, refunds, spending limits, clawbacks, holds lapsing
in the same call, rebuild), usage reports, dry runs, spending-limit windows and odd input.

Money invariants throughout: nothing created, lost or counted twice; a call answered as
refused charged nothing; every 4xx names the problem in a JSON body; never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar import errors
from sidecar.http.app import create_app
from sidecar.ledger.calls import Ledger
from sidecar.ledger.results import HoldResult, SpendLimit
from sidecar.persistence.db import create_engine, migrate, resolve_url
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, service, snapshot
from tests.persistence.test_rebuild import redis_state
from tests.persistence.test_writer import drain, make_writer

Client = TestClient[web.Request, web.Application]
MAXINT = 2**53 - 1
PURCHASE = "purchase:cs_1:li_1"


@pytest.fixture
async def client(settings: Settings, redis: RedisClient, clock: FakeClock) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(settings, clock=clock))) as c:
        yield c


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated SQLite ledger of this test's own."""
    e = create_engine(resolve_url(None, tmp_path))
    await migrate(e)
    yield e
    await e.dispose()


async def make_account(c: Client, credits: int, **settings: Any) -> None:
    r = await c.put("/v1/accounts/acme", json=settings, headers=admin())
    assert r.status == 201, await r.text()
    if credits:
        grant = {"grant_id": "g", "credits": credits}
        r = await c.post("/v1/accounts/acme/grants", json=grant, headers=admin())
        assert r.status == 201, await r.text()


async def post(c: Client, path: str, body: Any, token: dict[str, str]) -> tuple[int, Any]:
    r = await c.post(path, json=body, headers=token)
    text = await r.text()
    assert r.status < 500, text
    return r.status, (await r.json()) if text else None


async def report(c: Client, cost: Any, key: str, **extra: Any) -> tuple[int, Any]:
    body = {"account": "acme", "cost": cost, "idempotency_key": key, **extra}
    return await post(c, "/v1/usage", body, service())


async def balance(c: Client) -> dict[str, Any]:
    r = await c.get("/v1/accounts/acme/balance", headers=admin())
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


def assert_names_the_problem(status: int, body: Any) -> None:
    assert 400 <= status < 500
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert body["error"].get("code") and body["error"].get("message"), body


# --- usage reports: debt past what the ledger can count -----------------------------------


async def test_usage_reports_never_push_the_debt_past_2_pow_53_minus_1(
    ledger: Ledger, redis: RedisClient
) -> None:
    """Credits are exact integers up to 2^53-1; a report is never refused for the balance, but
    debt past that range cannot be counted exactly (the second report used to be recorded with
    the debt rounded to 2^53: a credit lost, and a balance no reply model accepts). It is
    refused as balance_overflow (422), nothing charged. (On the ledger, not over HTTP: the
    process-wide metrics counters are floats, which such amounts would disturb for other
    tests.)"""
    await ledger.configure_account("acme")
    first = await ledger.report_usage("acme", MAXINT, "job-1")
    assert first.debt_added == MAXINT
    before = await snapshot(redis)
    with pytest.raises(errors.BalanceOverflow):
        await ledger.report_usage("acme", 2, "job-2")
    assert await snapshot(redis) == before
    b = await ledger.balance("acme")
    assert (b.debt, b.balance) == (MAXINT, -MAXINT)
    await ledger.grant("acme", "g", 5)  # repays debt; room for a report again
    assert (await ledger.report_usage("acme", 2, "job-2")).debt_added == 2
