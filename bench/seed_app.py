"""The seed design's baseline: the credit deduction of the Laravel article this project grew
from (``credit_balances`` buckets, FIFO deduction in one DB transaction, a 402 middleware),
reimplemented in Python behind the sidecar's own HTTP stack (aiohttp on uvloop, the same
``POST /v1/check`` body, validation, bearer check and error JSON), so that a benchmark compares
the designs, not the languages or frameworks.

Per check, one SQL transaction, the article's way::

    BEGIN                          (SQLite: BEGIN IMMEDIATE)
    SELECT id, credits FROM seed_credit_balances
      WHERE user_id = :a AND credits > 0 AND (expires_at IS NULL OR expires_at > :now)
      ORDER BY created_at, id      (PostgreSQL: FOR UPDATE)
    -- sum < cost: 402, nothing written; else, deducting oldest first in Python:
    UPDATE seed_credit_balances SET credits = :new, updated_at = :now WHERE id = :id  (each)
    INSERT INTO seed_credit_transactions (..., amount = -cost, type = 'usage', ...)
    COMMIT

That is 4 + (buckets touched) database round trips per check, and the account's bucket rows
stay locked from the SELECT to the COMMIT, so concurrent checks of one account queue on the
row locks (on SQLite every write queues: one writer at a time). The sidecar instead runs one
Lua script in Redis per check, holds no lock across round trips, and writes SQL off the
request path, in batches, from the outbox.

Deviations from the article, each needed for correctness or in the baseline's favour: the
rows are locked (without it concurrent deductions lose updates, the article's "race
conditions" caveat); expired buckets are skipped by the deducting SELECT too (the article
only leaves them out of the sum); the balance is the sum of the locked rows rather than a
separate SUM query before them, and the 402 reports that sum (the article queries the sum
again); ``user_id`` is indexed (MySQL makes that index for the foreign key, PostgreSQL does
not); no authentication query (Sanctum), only the sidecar's in-memory token compare when a
token is set; ``idempotency_key`` is recorded in the transaction's metadata but not enforced
(the article has no idempotency: a retry is charged twice); on SQLite the process queues its
writers on an asyncio lock rather than in SQLite's busy handler (which sleeps in millisecond
steps); on PostgreSQL a fixed pool of 10 connections without a pre-ping per checkout.

    python -m bench.seed_app --db URL --port P [--setup-accounts N]
        [--buckets-per-account 3] [--credits 1000000000] [--service-token T]

serves on 127.0.0.1:P until SIGTERM/SIGINT; ``--setup-accounts`` first recreates the seed
tables and loads accounts ``acct-00000`` … (each with that many buckets of ``--credits``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sidecar.http.auth import role_check
from sidecar.http.contract import read_body as body
from sidecar.http.errors import error_middleware, json_response
from sidecar.http.schemas import (
    CheckRequest,
)
from sidecar.http.state import TOKENS
from sidecar.persistence.db import create_engine, resolve_url

PK = BigInteger().with_variant(Integer, "sqlite")  # INTEGER PRIMARY KEY: SQLite's rowid
seed_metadata = MetaData()
users = Table(
    "seed_users",
    seed_metadata,
    Column("id", String(128), primary_key=True),
    Column("created_at", DateTime, nullable=False),
)
balances = Table(
    "seed_credit_balances",
    seed_metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("seed_users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("credits", BigInteger, nullable=False),
    Column("expires_at", DateTime, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)
transactions = Table(
    "seed_credit_transactions",
    seed_metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("seed_users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("description", String(512), nullable=False),
    Column("type", String(32), nullable=False),  # purchase, usage, expiry, refund
    Column("metadata", JSON, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

b = balances.c
SELECT_BUCKETS = (
    select(b.id, b.credits)
    .where(
        b.user_id == bindparam("account"),
        b.credits > 0,
        or_(b.expires_at.is_(None), b.expires_at > bindparam("now")),
    )
    .order_by(b.created_at, b.id)
    .with_for_update()  # rendered on PostgreSQL; SQLite has none (BEGIN IMMEDIATE instead)
)
UPDATE_BUCKET = (
    update(balances)
    .where(b.id == bindparam("bucket_id"))
    .values(credits=bindparam("new_credits"), updated_at=bindparam("now"))
)
INSERT_TRANSACTION = insert(transactions)
CHUNK = 1000  # rows per multi-row INSERT


def utcnow() -> datetime:
    """Naive UTC, like Laravel's ``timestamp`` columns."""
    return datetime.now(UTC).replace(tzinfo=None)


def _autocommit_driver(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own implicit BEGIN is deferred and comes only before the first write, after
    # the SELECT: two checks would read the same buckets and one update would be lost.
    dbapi_conn.isolation_level = None


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def seed_engine(database_url: str) -> AsyncEngine:
    url = resolve_url(database_url, Path.cwd())
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url)  # WAL, synchronous=FULL, busy_timeout, foreign keys
        event.listen(engine.sync_engine, "connect", _autocommit_driver)
        event.listen(engine.sync_engine, "begin", _begin_immediate)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=0, pool_pre_ping=False)


async def setup_seed_schema(engine: AsyncEngine) -> None:
    """Drops the ``seed_`` tables if they exist and creates them empty."""
    async with engine.begin() as conn:
        await conn.run_sync(seed_metadata.drop_all)
        await conn.run_sync(seed_metadata.create_all)


async def load_seed_accounts(
    engine: AsyncEngine, accounts: list[str], buckets_per_account: int, credits: int
) -> None:
    """Adds each account with ``buckets_per_account`` buckets of ``credits`` credits each
    (created a second apart, oldest first; no expiry) and their purchase transactions, as the
    article's ``purchase()`` writes them, in multi-row INSERTs."""
    base = utcnow() - timedelta(days=1)
    bucket_rows: list[dict[str, Any]] = []
    tx_rows: list[dict[str, Any]] = []
    for a in accounts:
        for i in range(buckets_per_account):
            t = base + timedelta(seconds=i)
            row = {"user_id": a, "created_at": t, "updated_at": t}
            bucket_rows.append({**row, "credits": credits, "expires_at": None})
            tx_rows.append(
                {**row, "amount": credits, "description": f"Purchased package {i}"}
                | {"type": "purchase", "metadata": {"package_id": i}}
            )
    async with engine.begin() as conn:
        for table, rows in (
            (users, [{"id": a, "created_at": base} for a in accounts]),
            (balances, bucket_rows),
            (transactions, tx_rows),
        ):
            for start in range(0, len(rows), CHUNK):
                await conn.execute(insert(table).values(rows[start : start + CHUNK]))


async def deduct(
    engine: AsyncEngine, account: str, cost: int, reason: str, metadata: dict[str, Any]
) -> tuple[bool, int, int | None]:
    """(allowed, balance after or current balance, usage transaction id)."""
    now = utcnow()
    async with engine.begin() as conn:
        rows = (await conn.execute(SELECT_BUCKETS, {"account": account, "now": now})).all()
        balance = sum(credits for _, credits in rows)
        if balance < cost:
            return False, balance, None
        remaining = cost
        for bucket_id, credits in rows:  # oldest first (FIFO)
            deduction = min(remaining, credits)
            await conn.execute(
                UPDATE_BUCKET,
                {"bucket_id": bucket_id, "new_credits": credits - deduction, "now": now},
            )
            remaining -= deduction
            if remaining == 0:
                break
        result = await conn.execute(
            INSERT_TRANSACTION,
            {
                "user_id": account,
                "amount": -cost,
                "description": reason,
                "type": "usage",
                "metadata": metadata,
                "created_at": now,
                "updated_at": now,
            },
        )
        pk = result.inserted_primary_key
        assert pk is not None
        return True, balance - cost, int(pk[0])


class Seed:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        sqlite = engine.dialect.name == "sqlite"
        self.writers: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if sqlite else contextlib.nullcontext()
        )


SEED = web.AppKey("seed", Seed)


async def check(request: web.Request) -> web.Response:
    if request.app[TOKENS]:
        role_check(request.app[TOKENS], ("service", "admin"))(request)
    req = await body(request, CheckRequest)
    seed = request.app[SEED]
    metadata = {**(req.metadata or {}), "idempotency_key": req.idempotency_key}
    reason = req.description or f"API call: {request.path}"
    async with seed.writers:
        allowed, balance, tx_id = await deduct(seed.engine, req.account, req.cost, reason, metadata)
    if allowed:
        return json_response(
            {
                "allowed": True,
                "account": req.account,
                "balance": balance,
                "cost": req.cost,
                "transaction_id": str(tx_id),
            }
        )
    return json_response(
        {
            "allowed": False,
            "reason": "insufficient_credits",
            "account": req.account,
            "balance": balance,
            "required": req.cost,
        },
        402,
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def create_seed_app(database_url: str, *, service_token: str | None = None) -> web.Application:
    """The baseline app; ``service_token`` (if set) is required as ``Authorization: Bearer``.
    The seed tables are created if missing, never emptied (see :func:`setup_seed_schema`)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app[TOKENS] = {"service": service_token.encode()} if service_token else {}

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        engine = seed_engine(database_url)
        async with engine.begin() as conn:
            await conn.run_sync(seed_metadata.create_all)
        app[SEED] = Seed(engine)
        yield
        await engine.dispose()

    app.cleanup_ctx.append(engine_ctx)
    app.router.add_post("/v1/check", check)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(args: argparse.Namespace) -> None:
    if args.setup_accounts is not None:
        engine = seed_engine(args.db)
        try:
            await setup_seed_schema(engine)
            names = [f"acct-{i:05d}" for i in range(args.setup_accounts)]
            await load_seed_accounts(engine, names, args.buckets_per_account, args.credits)
        finally:
            await engine.dispose()
    app = create_seed_app(args.db, service_token=args.service_token or None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.seed_app", description="The seed design's baseline app."
    )
    p.add_argument("--db", required=True, help="SQLAlchemy URL (sqlite:///…, postgresql://…)")
    p.add_argument("--port", type=int, required=True, help="serves on 127.0.0.1:PORT")
    p.add_argument("--setup-accounts", type=int, metavar="N", help="recreate tables, load N")
    p.add_argument("--buckets-per-account", type=int, default=3)
    p.add_argument("--credits", type=int, default=10**9, help="credits per bucket")
    p.add_argument(
        "--service-token",
        default=os.environ.get("SIDECAR_SERVICE_TOKEN"),
        help="bearer token required on /v1/check (default: $SIDECAR_SERVICE_TOKEN; none: open)",
    )
    uvloop.run(serve(p.parse_args(argv)))


if __name__ == "__main__":
    main()
