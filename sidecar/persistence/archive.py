"""Archiving old transactions: the engine of ``credit-sidecar archive`` (the seed design's
"consolidate balances and archive old transactions").

Transactions older than a cutoff move, with their allocations, from the live tables to
``credit_transactions_archive`` and ``credit_allocations_archive``, in batches, each batch one
SQL transaction; ``credit_archive_totals`` keeps per account what was moved. Nothing is lost
and the ledger totals do not change: for every account, the live transactions' amounts plus
the archived total still equal its balance (the command checks this before it commits each
batch). Accounts, buckets and holds stay where they are: Redis and ``rebuild`` need them.

Only transactions older than the idempotency retention may go (a refund or a replay within
the retention reads the usage it refers to), and never one the writer could still deliver:
the cutoff must be at least ``MIN_AGE_MS`` old. Running it again moves what has since aged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sidecar.persistence.models import (
    ARCHIVED_ALLOCATIONS,
    ARCHIVED_TRANSACTIONS,
    ArchiveTotal,
    CreditAllocation,
    CreditTransaction,
    table_of,
)

MIN_AGE_MS = 86_400_000  # a day: far beyond any outbox redelivery
TXNS = table_of(CreditTransaction)
ALLOCS = table_of(CreditAllocation)
TOTALS = table_of(ArchiveTotal)


class ArchiveError(Exception):
    """The archive was refused (cutoff too recent) or would have changed a total."""


@dataclass
class ArchiveResult:
    transactions: int = 0
    allocations: int = 0
    accounts: set[str] = field(default_factory=set)
    batches: int = 0


async def archive(
    engine: AsyncEngine,
    before_ms: int,
    now_ms: int,
    *,
    retention_ms: int,
    account: str | None = None,
    batch_size: int = 5000,
    dry_run: bool = False,
) -> ArchiveResult:
    """Moves transactions created before ``before_ms`` (unix ms) to the archive tables."""
    if before_ms > now_ms - max(MIN_AGE_MS, retention_ms):
        raise ArchiveError(
            "the cutoff must be older than the idempotency retention and at least a day "
            f"({max(MIN_AGE_MS, retention_ms) // 1000} s before now)"
        )
    old = (TXNS.c.created_ms < before_ms) & (
        TXNS.c.account == account if account is not None else true()
    )
    result = ArchiveResult()
    if dry_run:
        async with engine.connect() as conn:
            accounts = (await conn.execute(select(TXNS.c.account).where(old).distinct())).all()
            result.accounts = {r[0] for r in accounts}
            count = select(func.count()).select_from(TXNS).where(old)
            result.transactions = int((await conn.execute(count)).scalar_one())
        return result
    while True:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(TXNS.c.id, TXNS.c.account, TXNS.c.amount, TXNS.c.seq)
                    .where(old)
                    .order_by(TXNS.c.account, TXNS.c.seq)
                    .limit(batch_size)
                )
            ).all()
            if not rows:
                return result
            result.allocations += await _move(conn, rows)
            result.transactions += len(rows)
            result.accounts |= {r.account for r in rows}
            result.batches += 1


async def _move(conn: AsyncConnection, rows: Sequence[Any]) -> int:
    """Moves one batch (rows of id, account, amount, seq); returns the allocations moved."""
    ids = [r.id for r in rows]
    per_account: dict[str, tuple[int, int, int]] = {}
    for r in rows:
        n, amount, through = per_account.get(r.account, (0, 0, 0))
        per_account[r.account] = (n + 1, amount + r.amount, max(through, r.seq))
    before = await _archived(conn, list(per_account))
    await conn.execute(
        insert(ARCHIVED_TRANSACTIONS).from_select(
            [c.name for c in TXNS.columns], select(*TXNS.columns).where(TXNS.c.id.in_(ids))
        )
    )
    moved = await conn.execute(
        insert(ARCHIVED_ALLOCATIONS).from_select(
            [c.name for c in ALLOCS.columns],
            select(*ALLOCS.columns).where(ALLOCS.c.transaction_id.in_(ids)),
        )
    )
    await conn.execute(delete(ALLOCS).where(ALLOCS.c.transaction_id.in_(ids)))
    await conn.execute(delete(TXNS).where(TXNS.c.id.in_(ids)))
    now = datetime.now(UTC)
    for acct, (n, amount, through) in per_account.items():
        done = await conn.execute(
            update(TOTALS)
            .where(TOTALS.c.account == acct)
            .values(
                transactions=TOTALS.c.transactions + n,
                amount=TOTALS.c.amount + amount,
                through_seq=func.max(TOTALS.c.through_seq, through)
                if conn.dialect.name == "sqlite"
                else func.greatest(TOTALS.c.through_seq, through),
                updated_at=now,
            )
        )
        if done.rowcount == 0:
            await conn.execute(
                insert(TOTALS).values(
                    account=acct, transactions=n, amount=amount, through_seq=through, updated_at=now
                )
            )
    # Every total unchanged: each account's archived total grew by exactly what left its live
    # transactions, and the archive holds those rows. (Only the moved rows are compared: the
    # writer may append new ones meanwhile.)
    after = await _archived(conn, list(per_account))
    archived_rows = dict(
        (
            await conn.execute(
                select(ARCHIVED_TRANSACTIONS.c.account, func.sum(ARCHIVED_TRANSACTIONS.c.amount))
                .where(ARCHIVED_TRANSACTIONS.c.id.in_(ids))
                .group_by(ARCHIVED_TRANSACTIONS.c.account)
            )
        ).all()
    )
    left = (await conn.execute(select(func.count()).where(TXNS.c.id.in_(ids)))).scalar_one()
    for acct, (_, amount, _) in per_account.items():
        moved_ok = int(archived_rows.get(acct, 0)) == amount
        if left or not moved_ok or after[acct] - before.get(acct, 0) != amount:
            raise ArchiveError("a ledger total would have changed; this batch was not moved")
    return int(moved.rowcount or 0)


async def _archived(conn: AsyncConnection, accounts: list[str]) -> dict[str, int]:
    """Per account: the archived total so far."""
    rows = await conn.execute(
        select(TOTALS.c.account, TOTALS.c.amount).where(TOTALS.c.account.in_(accounts))
    )
    return {a: int(n) for a, n in rows.all()}


async def _totals(conn: AsyncConnection, accounts: list[str]) -> dict[str, int]:
    """Per account: live amounts plus the archived total (its balance, if SQL is current)."""
    live = dict(
        (
            await conn.execute(
                select(TXNS.c.account, func.coalesce(func.sum(TXNS.c.amount), 0))
                .where(TXNS.c.account.in_(accounts))
                .group_by(TXNS.c.account)
            )
        ).all()
    )
    archived = dict(
        (
            await conn.execute(
                select(TOTALS.c.account, TOTALS.c.amount).where(TOTALS.c.account.in_(accounts))
            )
        ).all()
    )
    return {a: int(live.get(a, 0)) + int(archived.get(a, 0)) for a in accounts}


async def ledger_totals(engine: AsyncEngine) -> dict[str, int]:
    """Every account's live plus archived amounts (what ``archive`` keeps unchanged)."""
    async with engine.connect() as conn:
        accounts = [r[0] for r in await conn.execute(select(TXNS.c.account).distinct())]
        accounts += [r[0] for r in await conn.execute(select(TOTALS.c.account))]
        return await _totals(conn, sorted(set(accounts)))
