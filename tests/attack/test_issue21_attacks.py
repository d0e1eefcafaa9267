"""Issue 21 (plans with renewing allowances) attacked as a hostile client and a chaos tester:
exactly-once issuance at boundaries (checks, holds, refunds, dry runs, the sweeper, several
shards), period arithmetic at the edges (month clamping, leap years, anchors at the last
millisecond, far past and far future), catch-up over thousands of missed periods near 2^53-1,
rollover caps with holds and refunds, plan changes, redefinitions and deletes racing accounts,
SQL and rebuild, and bad input.

Money invariants throughout: nothing created, lost or counted twice; the balance equals the
sum of the transactions' amounts; every 4xx names the problem in a JSON body and changes
nothing; never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar import errors
from sidecar.http.app import create_app
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.plans import Plans
from sidecar.ledger.results import Allowance, Allowed, HoldResult, Plan
from sidecar.persistence.db import create_engine, migrate, resolve_url
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.reconcile import reconcile
from sidecar.persistence.writer import OutboxWriter
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, outbox_entries, snapshot
from tests.persistence.test_rebuild import redis_state

Client = TestClient[web.Request, web.Application]
MAXINT = 2**53 - 1
DAY = 86_400_000


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


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


@pytest.fixture
def sharded(redis: RedisClient, clock: FakeClock) -> AsyncIterator[Ledger]:
    ledger = Ledger(redis, KeySpace(shards=4), retention_ms=3_600_000, clock=clock)
    yield ledger
    ledger.close()


async def define(
    ledger: Ledger,
    plan: str,
    credits: int,
    interval: str = "month",
    count: int = 1,
    mode: str = "reset",
    rollover: int | None = None,
    default: bool = False,
) -> None:
    """The plan through plan.lua on every shard, as PUT /v1/plans/{plan} does."""
    allowance = Allowance(credits, interval, count, mode, rollover)  # type: ignore[arg-type]
    await Plans(ledger).put(plan, Plan(plan.title(), allowance, default=default))


async def entries(redis: RedisClient, keys: KeySpace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for shard in range(keys.shards):
        out += await outbox_entries(redis, shard)
    return out


async def txns(
    redis: RedisClient, keys: KeySpace, account: str | None = None, ttype: str | None = None
) -> list[dict[str, Any]]:
    return [
        e
        for e in await entries(redis, keys)
        if e["kind"] == "txn"
        and (account is None or e["account"] == account)
        and (ttype is None or e["type"] == ttype)
    ]


async def assert_books_balance(ledger: Ledger, account: str) -> int:
    """The balance is the sum of the account's transactions' amounts, and each transaction's
    amount is the balance's change (the entries' balance after each)."""
    b = await ledger.balance(account)
    running = 0
    for t in sorted(await txns(ledger.redis, ledger.keys, account), key=lambda t: t["seq"]):
        running += t["amount"]
        assert t["balance"] == running, t
    assert b.balance == running
    return b.balance


async def sql_round_trip(ledger: Ledger, engine: AsyncEngine, now: int) -> None:
    """The outbox written to SQL on every shard, reconcile clean, then Redis flushed and
    rebuilt from SQL: the same state (but the accounts' clocks)."""
    redis, keys = ledger.redis, ledger.keys
    writer = OutboxWriter(redis, engine, keys)
    for shard in range(keys.shards):
        await writer.ensure_group(shard)
        while await writer.step(shard):
            pass
    assert await reconcile(redis, keys, engine) == []
    before = await redis_state(redis, keys)
    await redis.flushall()
    await rebuild(redis, keys, engine, now_ms=now, retention_ms=ledger.retention_ms)
    after = await redis_state(redis, keys)
    for state in (before, after):
        for _, value in state.values():
            if isinstance(value, dict):
                value.pop(b"clock", None)
    differing = {
        k: (before.get(k), after.get(k))
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k)
    }
    assert differing == {}


def assert_names_the_problem(status: int, body: Any, field: str | None = None) -> None:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert body["error"].get("code") and body["error"].get("message"), body
    if field is not None:
        assert field in str(body), body


# --- bucket ids: an allowance's id is the plan's alone --------------------------------------


async def test_a_grant_named_like_an_allowance_bucket_is_refused_naming_grant_id(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, client: Client
) -> None:
    """A grant whose id is the next period's allowance bucket (allowance:<plan>:<start>) used
    to stand in for the allowance (nothing issued for the period) and be cut by the plan as
    allowance: a purchase of 500 and the day's 100 both gone (balance 0, not 600). The
    allowance: prefix is the plans' own: such a grant is a 422 naming grant_id, nothing
    written."""
    await define(ledger, "pro", 100, "day", mode="accumulate", rollover=0)
    await ledger.configure_account("a", plan="pro", plan_anchor=clock.now)
    nxt = clock.now + DAY
    before = await snapshot(redis)
    with pytest.raises(errors.InvalidInput) as e:
        await ledger.grant("a", f"allowance:pro:{nxt}", 500, source="purchase")
    assert e.value.field == "grant_id"
    body = {"grant_id": f"allowance:pro:{nxt}", "credits": 500}
    r = await client.post("/v1/accounts/a/grants", json=body, headers=admin())
    assert_names_the_problem(r.status, await r.json(), "grant_id")
    assert await snapshot(redis) == before
    await ledger.grant("a", "allowance-pack", 500)  # (only the prefix with its colon is theirs)
    clock.now = nxt
    assert (await ledger.balance("a")).balance == 600
    assert await assert_books_balance(ledger, "a") == 600
