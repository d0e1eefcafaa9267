"""Reads of the ledger for consoles and the CLI: the SQL ledger's accounts, an account's
transactions and its usage over time (from SQL, so they lag Redis by the writer's lag), and its
holds (from Redis, current). The HTTP layer asks here; it builds no SQL and reads no Redis keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sqlalchemy import BigInteger, func, literal_column, select

from sidecar import errors
from sidecar.billing.stores import Sql
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.redis_calls import (
    store_call,
)
from sidecar.ledger.units import from_ms, to_ms
from sidecar.persistence.models import Account, CreditTransaction, table_of
from sidecar.redis.client import text

ACCOUNTS = table_of(Account)
TXNS = table_of(CreditTransaction)


@dataclass(frozen=True, slots=True)
class AccountRow:
    account: str
    balance: int
    debt: int
    created_ms: int | None
    seq: int


@dataclass(frozen=True, slots=True)
class TransactionRow:
    id: str
    seq: int
    type: str
    amount: int
    balance: int
    debt: int
    created_ms: int
    description: str
    idempotency_key: str | None
    hold_id: str | None
    source_transaction_id: str | None
    key_id: str | None
    route: str | None
    metadata: str | None  # JSON text, as stored

    def metadata_value(self) -> Any:
        """The metadata decoded (its text if it is not JSON; None if there is none)."""
        if not self.metadata:
            return None
        try:
            return orjson.loads(self.metadata)
        except orjson.JSONDecodeError:
            return self.metadata


UsageBy = Literal["key", "route"]


@dataclass(frozen=True, slots=True)
class UsageGroup:
    key: str | None  # the API key id or the route; None: usage without one
    credits: int
    checks: int


@dataclass(frozen=True, slots=True)
class UsagePoint:
    start_ms: int
    credits: int
    checks: int
    groups: list[UsageGroup] | None = None  # with ``by``: the point split by key or route


@dataclass(frozen=True, slots=True)
class HoldRecord:
    hold_id: str
    amount: int
    state: str
    created_ms: int | None
    expires_ms: int | None
    ttl_ms: int | None
    transaction_id: str | None
    balance_after: int | None
    charged: int | None
    forfeited: int | None
    close_transaction_id: str | None
    buckets: list[tuple[str, int]]


def _int(rec: dict[str, Any], name: str) -> int | None:
    return int(rec[name]) if name in rec else None


class Reads:
    """The read side of one ledger and its SQL store."""

    def __init__(self, ledger: Ledger, sql: Sql) -> None:
        self.ledger, self.sql = ledger, sql

    async def require_sql_account(self, account: str) -> None:
        async with self.sql.tx() as conn:
            q = select(ACCOUNTS.c.id).where(ACCOUNTS.c.id == account)
            found = (await conn.execute(q)).first()
        if found is None:
            raise errors.UnknownAccount(
                f"account {account} is not in the SQL ledger (unknown, or not written yet)"
            )

    async def accounts(
        self, limit: int, after: str | None, prefix: str | None
    ) -> tuple[list[AccountRow], str | None]:
        """The SQL ledger's accounts ordered by id, ``limit`` of them after ``after``, and the
        ``after`` of the next page (None on the last)."""
        c = ACCOUNTS.c
        q = select(c.id, c.balance, c.debt, c.created_at, c.seq)
        if after is not None:
            q = q.where(c.id > after)
        if prefix is not None:
            # Exact and case-sensitive on both backends (SQLite's LIKE ignores case; "_" is in ids).
            q = q.where(func.substr(c.id, 1, len(prefix)) == prefix)
        q = q.order_by(c.id).limit(limit + 1)
        async with self.sql.tx() as conn:
            rows = (await conn.execute(q)).all()
        page = [
            AccountRow(
                r.id,
                int(r.balance),
                int(r.debt),
                None if r.created_at is None else to_ms(r.created_at),
                int(r.seq),
            )
            for r in rows[:limit]
        ]
        return page, page[-1].account if len(rows) > limit else None

    async def transactions(
        self, account: str, limit: int, before: int | None, type_: str | None
    ) -> tuple[list[TransactionRow], int | None]:
        """An account's transactions from SQL, newest first, and the ``before`` of the next
        page (None on the last). UnknownAccount if SQL has no such account."""
        await self.require_sql_account(account)
        c = TXNS.c
        q = select(
            c.id,
            c.seq,
            c.type,
            c.amount,
            c.balance_after,
            c.debt_after,
            c.created_ms,
            c.description,
            c["metadata"],
            c.idempotency_key,
            c.hold_id,
            c.source_transaction_id,
            c.key_id,
            c.route,
        ).where(c.account == account)
        if type_ is not None:
            q = q.where(c.type == type_)
        if before is not None:
            q = q.where(c.seq < before)
        q = q.order_by(c.seq.desc()).limit(limit + 1)
        async with self.sql.tx() as conn:
            found = (await conn.execute(q)).all()
        rows = [
            TransactionRow(
                r.id,
                int(r.seq),
                r.type,
                int(r.amount),
                int(r.balance_after),
                int(r.debt_after),
                int(r.created_ms),
                r.description or "",
                r.idempotency_key,
                r.hold_id,
                r.source_transaction_id,
                r.key_id,
                r.route,
                r.metadata,
            )
            for r in found[:limit]
        ]
        return rows, rows[-1].seq if len(found) > limit else None

    async def usage(
        self, account: str, step: int, start: int, until: int, by: UsageBy | None = None
    ) -> list[UsagePoint]:
        """Credits used and checks made per ``step`` ms from ``start`` (a multiple of the
        step) to ``until`` (exclusive), zeros included; ``by``: each point also split by API
        key or by route (only the groups with usage in it, most credits first). UnknownAccount
        if SQL has none."""
        await self.require_sql_account(account)
        c = TXNS.c
        # Integer division by the width as a literal (an int we chose): the same expression text
        # in SELECT and GROUP BY, which PostgreSQL needs (two bind parameters are two expressions).
        bucket = (c.created_ms // literal_column(str(step), BigInteger)).label("bucket")
        column = None if by is None else (c.key_id if by == "key" else c.route)
        group_by: list[Any] = [bucket] if column is None else [bucket, column]
        q = (
            select(*group_by, func.count(), func.sum(-c.amount))
            .where(
                c.account == account,
                c.type == "usage",
                c.created_at >= from_ms(start),
                c.created_at < from_ms(until),
            )
            .group_by(*group_by)
        )
        async with self.sql.tx() as conn:
            rows = (await conn.execute(q)).all()
        found: dict[int, tuple[int, int]] = {}
        groups: dict[int, dict[str | None, tuple[int, int]]] = {}
        for row in rows:
            b, n, s = int(row[0]), int(row[-2]), int(row[-1] or 0)
            checks, credits = found.get(b, (0, 0))
            found[b] = (checks + n, credits + s)
            if column is not None:
                # (no key or route: NULL, or '' if ever stored so; one group, key None)
                split = groups.setdefault(b, {})
                checks, credits = split.get(row[1] or None, (0, 0))
                split[row[1] or None] = (checks + n, credits + s)
        points = []
        for t in range(start, until, step):
            checks, credits = found.get(t // step, (0, 0))
            split_list = None
            if column is not None:
                split_list = sorted(
                    (UsageGroup(k, s, n) for k, (n, s) in groups.get(t // step, {}).items()),
                    key=lambda g: (-g.credits, -g.checks, g.key or ""),
                )
            points.append(UsagePoint(t, credits, checks, split_list))
        return points

    async def holds(self, account: str) -> list[HoldRecord]:
        """The account's holds from Redis: active ones and closed ones still remembered (for
        the idempotency retention), newest first. Lapsed holds are released first, as on a
        balance; UnknownAccount for an unknown account."""
        ledger = self.ledger
        await ledger.balance(account)  # 404 for an unknown account; processes due deadlines
        raw: dict[Any, Any] = await store_call(
            ledger.redis.hgetall(ledger.keys.for_account(account).holds), ledger.deadline_s
        )
        found = []
        for k, v in raw.items():
            rec = orjson.loads(v)
            found.append(
                HoldRecord(
                    hold_id=text(k),
                    amount=int(rec["amount"]),
                    state=rec.get("state", "active"),
                    created_ms=_int(rec, "created"),
                    expires_ms=_int(rec, "expires"),
                    ttl_ms=_int(rec, "ttl"),
                    transaction_id=rec.get("tx"),
                    balance_after=_int(rec, "bal"),
                    charged=_int(rec, "charged"),
                    forfeited=_int(rec, "forfeited"),
                    close_transaction_id=rec.get("close_tx"),
                    buckets=[(str(b), int(n)) for b, n in rec.get("alloc") or []],
                )
            )
        found.sort(key=lambda h: (-1 if h.created_ms is None else h.created_ms, h.hold_id))
        found.reverse()
        return found
