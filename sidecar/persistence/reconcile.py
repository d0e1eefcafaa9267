"""Compares the Redis ledger with the SQL ledger, per account and bucket, the plans'
definitions (rebuild_plans.py; a plan's difference names "plan <id>" as its account) and the
sidecar's API tokens (rebuild_tokens.py; "token <id>").

Differences are reported, never fixed: `credit-sidecar rebuild` restores Redis from SQL, and
the writer brings SQL up to Redis. Only transactions already written to SQL can match, so
reconcile the quiet ledger (outbox drained: ``unwritten`` is 0 in the outbox status).

A dead-lettered outbox entry is a difference too, whatever the totals say: SQL lacks something
Redis did. A sequence collision (two transactions of one account with one seq, as a rebuild
that undid acknowledged checks leaves) is named as such.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger import outbox
from sidecar.ledger.keyspace import KeySpace
from sidecar.persistence.models import Account, ArchiveTotal, CreditBalance, CreditTransaction
from sidecar.persistence.rebuild_plans import plan_differences
from sidecar.persistence.rebuild_tokens import token_differences
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _s


@dataclass(frozen=True)
class Difference:
    account: str
    what: str  # "balance", "debt", "seq", "bucket <id> remaining", "missing in sql", ...
    redis: Any
    sql: Any

    def __str__(self) -> str:
        return f"{self.account}: {self.what}: redis={self.redis!r} sql={self.sql!r}"


async def redis_accounts(redis: RedisClient, keys: KeySpace) -> AsyncIterator[str]:
    """Every account in Redis (scans the account hashes of each shard)."""
    for shard in range(keys.shards):
        prefix = keys.account_prefix(shard)
        async for k in redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
            yield _s(k)[len(prefix) :]


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


async def redis_state(redis: RedisClient, keys: KeySpace, account: str) -> dict[str, Any] | None:
    """The balance-relevant Redis state of one account (None if it does not exist)."""
    raw = await redis.hgetall(keys.for_account(account).account)
    h = {_s(k): _s(v) for k, v in raw.items()}
    if "created" not in h:
        return None
    buckets: dict[str, tuple[int, int, bool]] = {}
    for f in h:
        if f.startswith("m:"):
            b = f[2:]
            r = h.get("r:" + b)
            buckets[b] = (int(r) if r is not None else 0, int(h.get("h:" + b, "0")), r is None)
    avail, debt = int(h.get("avail", "0")), int(h.get("debt", "0"))
    return {
        "balance": avail - debt,
        "debt": debt,
        "seq": int(h.get("seq", "0")),
        "buckets": buckets,
    }


async def sql_state(engine: AsyncEngine, account: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(Account).where(Account.id == account))).first()
        if row is None:
            return None
        bs = (
            await conn.execute(select(CreditBalance).where(CreditBalance.account == account))
        ).all()
        agg = (
            await conn.execute(
                select(
                    func.count(CreditTransaction.id),
                    func.coalesce(func.sum(CreditTransaction.amount), 0),
                    func.coalesce(func.max(CreditTransaction.seq), 0),
                ).where(CreditTransaction.account == account)
            )
        ).one()
        # What `credit-sidecar archive` moved out of the live table counts too.
        arch = (
            await conn.execute(
                select(
                    ArchiveTotal.transactions, ArchiveTotal.amount, ArchiveTotal.through_seq
                ).where(ArchiveTotal.account == account)
            )
        ).first() or (0, 0, 0)
    return {
        "balance": row.balance,
        "debt": row.debt,
        "seq": row.seq,
        "buckets": {b.bucket_id: (b.remaining, b.held, b.expired) for b in bs},
        "txn_count": int(agg[0]) + int(arch[0]),
        "txn_sum": int(agg[1]) + int(arch[1]),
        "txn_max_seq": max(int(agg[2]), int(arch[2])),
    }


async def reconcile_account(
    redis: RedisClient, keys: KeySpace, engine: AsyncEngine, account: str
) -> list[Difference]:
    r = await redis_state(redis, keys, account)
    s = await sql_state(engine, account)
    if r is None and s is None:
        return [Difference(account, "unknown account", None, None)]
    if r is None:
        return [Difference(account, "missing in redis", None, "present")]
    if s is None:
        return [Difference(account, "missing in sql", "present", None)]
    out = [
        Difference(account, name, r[name], s[name])
        for name in ("balance", "debt", "seq")
        if r[name] != s[name]
    ]
    # The ledger's own laws on the SQL side: gap-free sequence, amounts sum to the balance.
    if s["txn_count"] != s["txn_max_seq"] or s["txn_max_seq"] != s["seq"]:
        out.append(Difference(account, "sql transaction count / seq", s["seq"], s["txn_count"]))
    if s["txn_sum"] != s["balance"]:
        out.append(Difference(account, "sql sum of amounts", s["balance"], s["txn_sum"]))
    # A bucket that expired empty leaves no transaction, so SQL may still call it live:
    # with nothing remaining that is the same state; compare what can be spent or is held.
    for b in sorted(set(r["buckets"]) | set(s["buckets"])):
        rb, sb = r["buckets"].get(b), s["buckets"].get(b)
        if (rb and rb[:2]) != (sb and sb[:2]):
            out.append(Difference(account, f"bucket {b} (remaining, held)", rb, sb))
    return out


# How SQLite and PostgreSQL word a violation of credit_transactions' (account, seq) key.
_SEQ_COLLISION = (
    "uq_credit_transactions_account_seq",
    "credit_transactions.account, credit_transactions.seq",
)


def _described(fields: dict[str, str]) -> tuple[str, str, str, Any]:
    """A dead letter's account, kind, id and seq: a transaction's from its model, what can
    be read of any other entry (a dead letter may not decode at all)."""
    try:
        t = outbox.read_txn(fields)
    except outbox.PoisonEntry:
        t = None
    if t is not None:
        return t.account, "txn", t.id, t.seq
    try:
        entry = outbox.decode(fields)
    except ValueError:
        entry = {}
    who, kind, txid = (str(entry.get(k, "?")) for k in ("account", "kind", "id"))
    if kind == "token" and isinstance(entry.get("token_id"), str):
        who = f"token {entry['token_id']}"  # as its differences name it
    return who, kind, txid, entry.get("seq")


async def dead_letters(
    redis: RedisClient, keys: KeySpace, account: str | None = None
) -> list[Difference]:
    """One difference per dead-lettered outbox entry (of ``account``, or of any)."""
    out: list[Difference] = []
    for shard in range(keys.shards):
        entries: Any = await redis.xrange(keys.dead_letters(shard))
        for entry_id, fields in entries:
            f = {_s(k): _s(v) for k, v in fields.items()}
            who, kind, txid, seq = _described(f)
            if account is not None and who != account:
                continue
            error = f.get("dl_error", "")
            what = (
                "sequence collision" if any(c in error for c in _SEQ_COLLISION) else "dead letter"
            )
            detail = f"{what} (dead letter {_s(entry_id)}: {kind} {txid}"
            if seq is not None:
                detail += f", seq {seq}"
            out.append(Difference(who, detail + ")", "written", error or "not written"))
    return out


async def reconcile(
    redis: RedisClient, keys: KeySpace, engine: AsyncEngine, account: str | None = None
) -> list[Difference]:
    """Differences for one account, or for every account on either side, every plan and every
    token, then dead letters."""
    if account is not None:
        return await reconcile_account(redis, keys, engine, account) + await dead_letters(
            redis, keys, account
        )
    accounts = {a async for a in redis_accounts(redis, keys)}
    async with engine.connect() as conn:
        accounts |= set((await conn.execute(select(Account.id))).scalars())
    out: list[Difference] = []
    for a in sorted(accounts):
        out += await reconcile_account(redis, keys, engine, a)
    for plan, what, in_redis, in_sql in await plan_differences(redis, keys, engine):
        out.append(Difference(f"plan {plan}", what, in_redis, in_sql))
    for token, what, in_redis, in_sql in await token_differences(redis, keys, engine):
        out.append(Difference(f"token {token}", what, in_redis, in_sql))
    return out + await dead_letters(redis, keys)
