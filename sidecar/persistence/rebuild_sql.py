"""Reads one account's Redis state from the SQL ledger, for ``credit-sidecar rebuild``.

Per account, one consistent read of SQL (:func:`snapshot`: REPEATABLE READ on PostgreSQL, one
read transaction on SQLite's WAL) becomes one :class:`AccountState`: the JSON document
``restore.lua`` takes, and what goes with it (the records' keys, the global API-key index
entries). Writing it into Redis is rebuild_redis.py's job; rebuild.py runs the command.

What SQL does not record is read as follows:

- rate-limiter state (the GCRA TATs of the account, its keys and routes) starts fresh;
- the account clock (a floor: time never runs backwards for an account) is the latest time SQL
  knows the account saw, from its last transaction or settings change. Calls that write neither
  may have moved the Redis clock further: free (cost 0) checks, and deadlines that only
  expired an empty bucket or purged a closed hold. A bucket with nothing left whose expiry
  is at or before that clock is restored as expired (no transaction differs either way);
- idempotency and usage records expire at their usage's time + ``retention_ms``, counted on
  ``now_ms``. Redis had counted their TTL on its own clock;
- a bucket gets its ``h:`` field if a hold ever drew on it (a held allocation in SQL), as the
  scripts leave it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import RowMapping, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sidecar.errors import RebuildError
from sidecar.ledger.apikeys import key_record, rate_spec
from sidecar.ledger.results import (
    RateLimit,
    SpendLimit,
)
from sidecar.ledger.units import to_ms
from sidecar.persistence.models import (
    ARCHIVED_TRANSACTIONS,
    Account,
    ApiKey,
    AutoTopUp,
    CreditAllocation,
    CreditBalance,
    CreditHold,
    CreditTransaction,
    table_of,
)
from sidecar.persistence.rebuild_records import ENTRY_COLUMNS, CallRevokes, records, txn_entry

__all__ = ["AccountState", "KeyIndexEntry", "RebuildError", "read_account", "snapshot"]


@dataclass(frozen=True, slots=True)
class KeyIndexEntry:
    """An API key as the global index needs it."""

    key_id: str
    digest: str
    active: bool


@dataclass(frozen=True, slots=True)
class AccountState:
    """One account's Redis state as read from SQL: restore.lua's document and its companions."""

    account: str
    document: dict[str, Any]  # ARGV[6] of restore.lua, without "purge"
    idempotency_keys: list[str]  # the idempotency records' keys, in document order
    usage_ids: list[str]  # the usage records' transaction ids, in document order
    api_keys: list[KeyIndexEntry]
    sql_balance: int  # accounts.balance in SQL (after its last transaction)

    @property
    def balance(self) -> int:
        """The balance the restored state has: remaining over live buckets, minus debt."""
        live = sum(int(b.get("remaining", 0)) for b in self.document["buckets"])
        return live - int(self.document["debt"])


ACCOUNTS = table_of(Account)
BUCKETS = table_of(CreditBalance)
ALLOCATIONS = table_of(CreditAllocation)
HOLDS = table_of(CreditHold)
TXNS = table_of(CreditTransaction)
API_KEYS = table_of(ApiKey)
AUTO_TOPUPS = table_of(AutoTopUp)


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose reads all see one snapshot of the database (nothing is written)."""
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        else:
            # pysqlite opens no transaction for reads; an explicit one pins WAL's snapshot.
            await conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            await conn.rollback()


def _need(row: RowMapping, what: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if row[c] is None]
    if missing:
        raise RebuildError(
            f"{what} is incomplete in SQL ({', '.join(missing)} missing): an outbox entry "
            "that defines it was never written (see the dead-letter stream)"
        )


async def read_account(
    conn: AsyncConnection, account: str, *, now_ms: int, retention_ms: int
) -> AccountState | None:
    """The Redis state of ``account`` from SQL (None if SQL does not know the account).

    ``conn`` should be a :func:`snapshot` so that every table is read at one point in time.
    """
    acct = (await conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == account))).mappings().first()
    if acct is None:
        return None
    if acct["created_at"] is None:
        raise RebuildError(
            f"account {account} has no settings in SQL: its creation was never written"
        )
    created = to_ms(acct["created_at"])
    clock = max(created, int(acct["clock_ms"]), int(acct["settings_ms"]))
    doc: dict[str, Any] = {
        "created": created,
        "clock": clock,
        "debt": int(acct["debt"]),
        "seq": int(acct["seq"]),
        "overdraft_limit": int(acct["overdraft_limit"]),
    }
    if acct["low_balance_threshold"] is not None:
        doc["low_balance_threshold"] = int(acct["low_balance_threshold"])
    rate = (acct["rate_limit_requests"], acct["rate_limit_period_ms"], acct["rate_limit_burst"])
    if None not in rate:
        doc["rate_limit"] = [int(x) for x in rate]
    if acct["spend_limit_credits"] is not None:
        limit = SpendLimit(
            int(acct["spend_limit_credits"]),
            acct["spend_limit_interval"],
            int(acct["spend_limit_interval_count"] or 1),
        )
        doc["spend_limit"] = limit.spec()
    if acct["spend_state"] and (acct["spend_limit_credits"] is not None or acct["plan"]):
        doc["spend_state"] = acct["spend_state"]  # (an account on a plan may use the plan's)

    topup = (
        await conn.execute(
            select(AUTO_TOPUPS.c.threshold).where(
                AUTO_TOPUPS.c.account == account,
                AUTO_TOPUPS.c.enabled.is_(True),
                AUTO_TOPUPS.c.paused.is_(False),
            )
        )
    ).scalar()
    if topup is not None:
        doc["auto_topup_threshold"] = int(topup)
    doc["clawbacks"], claws = await _clawbacks(conn, account)
    doc["buckets"] = await _buckets(conn, account, clock)
    if acct["plan"]:
        doc |= _plan(acct, doc["buckets"])
    doc["holds"] = await _holds(conn, account, clock - retention_ms, claws)
    doc["keys"], index = await _keys(conn, account)
    idempotency, usage = await records(conn, account, now_ms, retention_ms, claws)
    doc["idempotency"], doc["usage"] = idempotency, usage
    return AccountState(
        account=account,
        document=doc,
        idempotency_keys=[r["key"] for r in idempotency],
        usage_ids=[u["tx"] for u in usage],
        api_keys=index,
        sql_balance=int(acct["balance"]),
    )


async def _clawbacks(conn: AsyncConnection, account: str) -> tuple[dict[str, Any], CallRevokes]:
    """Per refunded or disputed purchase, its clawback (revoke.lua): the state carried by its
    latest 'revoke' transaction (live or archived), or, for transactions of a release that
    kept none, the highest target reached (its targets only grew). And the revokes that
    followed another transaction of their call (see :class:`CallRevokes`)."""
    # Archived ones too: an archived clawback still binds later refunds and disputes.
    live, old = (
        select(*(t.c[c] for c in ENTRY_COLUMNS)).where(t.c.account == account, t.c.type == "revoke")
        for t in (TXNS, ARCHIVED_TRANSACTIONS)
    )
    rows = (await conn.execute(union_all(live, old))).mappings()
    out: dict[str, Any] = {}
    claws = CallRevokes()
    for t in sorted(map(txn_entry, rows), key=lambda t: t.seq):
        claws.add(t.seq, t.id, t.balance)
        purchase, target, state = t.purchase, t.target, t.clawback_state
        if purchase is None or target is None:
            continue
        if state is not None:
            out[purchase] = {"target": target, "state": state}
        else:
            prev = out.get(purchase, 0)
            out[purchase] = max(prev if isinstance(prev, int) else 0, target)
    return out, claws


def _plan(acct: RowMapping, buckets: list[dict[str, Any]]) -> dict[str, Any]:
    """The account's plan as restore.lua takes it: its next renewal as its last entry carried
    it; for an account whose entries never did, the latest period its current stay on the
    plan issued (the allowance buckets created since it was set: allowance:<plan>:<period
    start>, see "Plans" in sidecar/lua/_lib.lua)."""
    plan, since = str(acct["plan"]), int(acct["plan_since_ms"] or 0)
    _need(acct, f"account {acct['id']}: plan {plan}", ("plan_anchor_ms", "plan_since_ms"))
    if acct["plan_next_ms"] is not None:
        return {
            "plan": plan,
            "plan_anchor": int(acct["plan_anchor_ms"]),
            "plan_since": since,
            "plan_next": int(acct["plan_next_ms"]),
        }
    prefix = f"allowance:{plan}:"
    ours = sorted(
        (b for b in buckets if b["id"].startswith(prefix) and b["created"] >= since),
        key=lambda b: (b["created"], b["id"]),
    )
    doc: dict[str, Any] = {
        "plan": plan,
        "plan_anchor": int(acct["plan_anchor_ms"]),
        "plan_since": since,
    }
    starts = [int(b["id"][len(prefix) :]) for b in ours if b["id"][len(prefix) :].isdigit()]
    if starts:
        doc["plan_last"] = max(starts)
    return doc


async def _buckets(conn: AsyncConnection, account: str, clock: int) -> list[dict[str, Any]]:
    rows = (
        await conn.execute(
            select(BUCKETS).where(BUCKETS.c.account == account).order_by(BUCKETS.c.bucket_id)
        )
    ).mappings()
    ever_held = set(
        (
            await conn.execute(
                select(ALLOCATIONS.c.bucket_id)
                .where(ALLOCATIONS.c.account == account, ALLOCATIONS.c.held_delta != 0)
                .distinct()
            )
        ).scalars()
    )
    out: list[dict[str, Any]] = []
    for b in rows:
        bid = b["bucket_id"]
        _need(
            b,
            f"account {account}: bucket {bid}",
            ("credits", "source", "priority", "created_ms", "transaction_id", "balance_after"),
        )
        expires = b["expires_ms"]
        fp = b["fingerprint"] or ""
        entry: dict[str, Any] = {
            "id": bid,
            "credits": int(b["credits"]),
            "created": int(b["created_ms"]),
            "priority": int(b["priority"]),
            "source": b["source"],
            # A refund's new bucket (no fingerprint) keeps no metadata in Redis; SQL files the
            # refund's own metadata with it.
            "metadata": (b["metadata"] or "") if fp else "",
            "fp": fp,
            "tx": b["transaction_id"],
            "bal": int(b["balance_after"]),
            "held": int(b["held"]),
            "held_field": bid in ever_held,
        }
        if expires is not None:
            entry["expires"] = int(expires)
        # An empty bucket past its expiry expires without a transaction, so SQL may still call
        # it live; it is the same state either way.
        empty_and_due = b["remaining"] == 0 and expires is not None and expires <= clock
        if not (b["expired"] or empty_and_due):
            entry["remaining"] = int(b["remaining"])
        out.append(entry)
    return out


async def _holds(
    conn: AsyncConnection, account: str, closed_after: int, claws: CallRevokes
) -> list[dict[str, Any]]:
    """Active holds, and closed ones not yet purged (closed after ``closed_after``)."""
    rows = (
        await conn.execute(
            select(HOLDS)
            .where(
                HOLDS.c.account == account,
                or_(HOLDS.c.state == "active", HOLDS.c.closed_ms > closed_after),
            )
            .order_by(HOLDS.c.hold_id)
        )
    ).mappings()
    out: list[dict[str, Any]] = []
    for h in rows:
        what = f"account {account}: hold {h['hold_id']}"
        _need(
            h,
            what,
            (
                "amount",
                "ttl_ms",
                "alloc",
                "created_ms",
                "expires_ms",
                "transaction_id",
                "balance_after",
            ),
        )
        entry: dict[str, Any] = {
            "id": h["hold_id"],
            "amount": int(h["amount"]),
            "ttl": int(h["ttl_ms"]),
            "alloc": h["alloc"].get("parts", []),
            "created": int(h["created_ms"]),
            "expires": int(h["expires_ms"]),
            "state": h["state"],
            "tx": h["transaction_id"],
            "bal": int(h["balance_after"]),
        }
        if h["alloc"].get("sw") is not None:  # the spending limit's window it counted in
            entry["sw"] = int(h["alloc"]["sw"])
        if h["state"] != "active":
            _need(
                h,
                what,
                ("charged", "forfeited", "close_transaction_id", "close_balance", "closed_ms"),
            )
            entry |= {
                "charged": int(h["charged"]),
                "close_tx": h["close_transaction_id"],
                # what a replay answers: the balance once the call's clawbacks took their part
                "close_balance": claws.balance_after(
                    int(h["version"]), h["close_transaction_id"], int(h["close_balance"])
                ),
                "forfeited": int(h["forfeited"]),
                "closed": int(h["closed_ms"]),
            }
            if h["uncovered"]:  # a settle above the hold: what it asked for that nothing covered
                entry["uncovered"] = int(h["uncovered"])
        out.append(entry)
    return out


async def _keys(
    conn: AsyncConnection, account: str
) -> tuple[list[dict[str, Any]], list[KeyIndexEntry]]:
    rows = (
        await conn.execute(
            select(API_KEYS).where(API_KEYS.c.account == account).order_by(API_KEYS.c.key_id)
        )
    ).mappings()
    entries: list[dict[str, Any]] = []
    index: list[KeyIndexEntry] = []
    for k in rows:
        rate = (k["rate_limit_requests"], k["rate_limit_period_ms"], k["rate_limit_burst"])
        rl = RateLimit(*(int(x) for x in rate)) if None not in rate else None
        limit = None
        if k["spend_limit_credits"] is not None:
            limit = SpendLimit(
                int(k["spend_limit_credits"]),
                k["spend_limit_interval"],
                int(k["spend_limit_interval_count"] or 1),
            )
        record = key_record(
            k["key_id"],
            account,
            name=k["name"],
            prefix=k["prefix"],
            created_at=to_ms(k["created_at"]),
            rate_limit=rl,
            digest=k["hash"],
            spend_limit=limit,
        )
        active = k["revoked_at"] is None
        if active and limit is not None:
            # a key with a spending limit: its record as apikey.lua re-encodes it (the same
            # JSON; the bytes of one created with it may differ), its limit and what it spent
            entry: dict[str, Any] = {
                "id": k["key_id"],
                "record": record,
                "rate": rate_spec(rl),
                "limit": limit.spec(),
            }
            if k["spend_state"]:
                entry["spend_state"] = k["spend_state"]
            entries.append(entry)
        elif active:
            # stored as created: ApiKeys.create's JSON text
            entries.append(
                {"id": k["key_id"], "record": orjson.dumps(record).decode(), "rate": rate_spec(rl)}
            )
        else:
            # stored as revoked: re-encoded by apikey.lua's jenc, which restore.lua applies
            entries.append(
                {"id": k["key_id"], "record": record | {"revoked_at": to_ms(k["revoked_at"])}}
            )
        index.append(KeyIndexEntry(k["key_id"], k["hash"], active))
    return entries, index


async def account_ids(engine: AsyncEngine) -> list[str]:
    """Every account of the SQL ledger, sorted."""
    async with engine.connect() as conn:
        return sorted(str(a) for a in (await conn.execute(select(ACCOUNTS.c.id))).scalars())


async def sql_seqs(engine: AsyncEngine) -> dict[str, int]:
    """Per account of the SQL ledger, the sequence number of its last transaction written."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(ACCOUNTS.c.id, ACCOUNTS.c.seq))
        return {str(r[0]): int(r[1]) for r in rows}
