"""Restores the Redis ledger from the SQL ledger: the engine of ``credit-sidecar rebuild``.

Used when Redis lost state that SQL has (a FLUSHALL, a lost volume, acknowledged writes lost in
a crash), or to push an admin's correction made in SQL into Redis (README, "Correcting a
balance"). Afterwards the ledger behaves as before: the same balances and buckets in the same
burn order, bucket expiries and hold TTLs still scheduled, the same settings and API keys, and
the idempotency, usage (refund) and closed-hold records that were still inside the retention
window. A retried check, grant, hold, settle or refund is therefore answered as the first time
and never charged or credited twice.

Per account, one consistent read of SQL (one snapshot: REPEATABLE READ on PostgreSQL, one read
transaction on SQLite's WAL) becomes one JSON document. ``restore.lua`` validates the whole
document and writes it in one atomic script; unless ``replace`` is given it refuses an account
that exists in Redis. The global API-key index lives in another slot, so it is written from here,
after the script. Nothing is appended to the outbox: the state is already in SQL.

What SQL does not record is restored as follows:

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

Only transactions the writer has put into SQL can come back, so drain the outbox first
(``unwritten`` 0 in the outbox status). Accounts that exist only in Redis are left alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError
from sqlalchemy import RowMapping, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sidecar.ledger import replies
from sidecar.ledger.apikeys import key_record, rate_spec
from sidecar.ledger.calls import RateLimit
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.outbox import PoisonEntry, TxnEntry
from sidecar.ledger.results import RestoreCounts
from sidecar.ledger.units import from_ms, to_ms
from sidecar.lua import Scripts
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
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _s

log = logging.getLogger(__name__)

REBUILD_TXID = "rebuild"  # ARGV[3] of restore.lua (no transaction is written)
_SCRIPT_ERROR = re.compile(
    r"^CS (?P<code>[A-Z_]+) (?P<detail>.*?)(?: script: \S+, on @\S+\.)?$", re.S
)


class RebuildError(Exception):
    """An account cannot be restored; the message names it and says why."""


class AccountExists(RebuildError):
    """The account exists in Redis and ``replace`` was not given."""


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
    doc["clawbacks"] = await _clawbacks(conn, account)
    doc["buckets"] = await _buckets(conn, account, clock)
    doc["holds"] = await _holds(conn, account, clock - retention_ms)
    doc["keys"], index = await _keys(conn, account)
    idempotency, usage = await _records(conn, account, now_ms, retention_ms)
    doc["idempotency"], doc["usage"] = idempotency, usage
    return AccountState(
        account=account,
        document=doc,
        idempotency_keys=[r["key"] for r in idempotency],
        usage_ids=[u["tx"] for u in usage],
        api_keys=index,
        sql_balance=int(acct["balance"]),
    )


async def _clawbacks(conn: AsyncConnection, account: str) -> dict[str, Any]:
    """Per refunded or disputed purchase, its clawback (revoke.lua): the state carried by its
    latest 'revoke' transaction (live or archived), or, for transactions of a release that
    kept none, the highest target reached (its targets only grew)."""
    # Archived ones too: an archived clawback still binds later refunds and disputes.
    live, old = (
        select(*(t.c[c] for c in ENTRY_COLUMNS)).where(t.c.account == account, t.c.type == "revoke")
        for t in (TXNS, ARCHIVED_TRANSACTIONS)
    )
    rows = (await conn.execute(union_all(live, old))).mappings()
    out: dict[str, Any] = {}
    for t in sorted(map(_entry, rows), key=lambda t: t.seq):
        purchase, target, state = t.purchase, t.target, t.clawback_state
        if purchase is None or target is None:
            continue
        if state is not None:
            out[purchase] = {"target": target, "state": state}
        else:
            prev = out.get(purchase, 0)
            out[purchase] = max(prev if isinstance(prev, int) else 0, target)
    return out


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


async def _holds(conn: AsyncConnection, account: str, closed_after: int) -> list[dict[str, Any]]:
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
        if h["state"] != "active":
            _need(
                h,
                what,
                ("charged", "forfeited", "close_transaction_id", "close_balance", "closed_ms"),
            )
            entry |= {
                "charged": int(h["charged"]),
                "close_tx": h["close_transaction_id"],
                "close_balance": int(h["close_balance"]),
                "forfeited": int(h["forfeited"]),
                "closed": int(h["closed_ms"]),
            }
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
        record = key_record(
            k["key_id"],
            account,
            name=k["name"],
            prefix=k["prefix"],
            created_at=to_ms(k["created_at"]),
            rate_limit=rl,
            digest=k["hash"],
        )
        active = k["revoked_at"] is None
        if active:
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


async def _records(
    conn: AsyncConnection, account: str, now: int, retention: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Idempotency and usage records of the usages within the retention at ``now`` (ms), with
    their refunds; idempotency records only while their replay window lasts."""
    cutoff = now - retention

    def recent(ttype: str) -> Any:
        return (
            select(TXNS)
            .where(
                TXNS.c.account == account,
                TXNS.c.type == ttype,
                TXNS.c.created_at >= from_ms(cutoff),  # the index's column ...
                TXNS.c.created_ms > cutoff,  # ... and the exact bound
            )
            .order_by(TXNS.c.seq)
        )

    usages = [_entry(r) for r in (await conn.execute(recent("usage"))).mappings()]
    # A settle that charged is refundable like a usage (close_hold.lua keeps a usage record
    # for it): what it charged per bucket follows from the hold's parts, drawn in order.
    settles = [
        t
        for t in map(_entry, (await conn.execute(recent("settle"))).mappings())
        if t.charged > 0 and t.hold_id
    ]
    parts: dict[str, list[list[Any]]] = {}
    if settles:
        rows = await conn.execute(
            select(HOLDS.c.hold_id, HOLDS.c.alloc).where(
                HOLDS.c.account == account, HOLDS.c.hold_id.in_({t.hold_id for t in settles})
            )
        )
        parts = {str(h): (alloc or {}).get("parts", []) for h, alloc in rows}
    usages = sorted([*usages, *settles], key=lambda t: t.seq)
    refunds: dict[str, list[TxnEntry]] = {u.id: [] for u in usages}
    # A refund comes after its usage, so the refunds of these usages are all after the cutoff.
    for r in map(_entry, (await conn.execute(recent("refund"))).mappings()):
        if r.source_transaction_id in refunds:
            refunds[r.source_transaction_id].append(r)

    latest: dict[str, dict[str, Any]] = {}  # idempotency key -> its latest usage
    usage: list[dict[str, Any]] = []
    for u in usages:
        if u.type == "settle":
            cost = u.charged
            alloc = _charged(parts.get(str(u.hold_id), []), cost)
            overdraft = 0
        else:
            cost = -u.amount
            alloc = [[b, n] for b, n in u.alloc]
            overdraft = u.overdraft
        left = cost
        done: list[dict[str, Any]] = []
        for r in refunds[u.id]:
            refunded = r.amount + r.forfeited  # what it asked for: given back + forfeited
            arg = r.requested_amount
            if arg is None:  # entries written before the field existed: the likelier argument
                arg = "" if refunded == left else str(refunded)
            left -= refunded
            done.append(
                {
                    "id": r.refund_id,
                    "arg": arg,
                    "tx": r.id,
                    "bal": r.balance,
                    "refunded": refunded,
                    "forfeited": r.forfeited,
                }
            )
        usage.append(
            {
                "tx": u.id,
                "cost": cost,
                "alloc": alloc,
                "overdraft": overdraft,
                "at": u.ts,
                "refunds": done,
            }
        )
        if u.idempotency_key and any(r.voided_attempt for r in refunds[u.id]):
            # voided (sidecar/lua/void.lua): its record was deleted, a retry is a new request
            latest.pop(u.idempotency_key, None)
        elif u.idempotency_key:
            record: dict[str, Any] = {
                "key": u.idempotency_key,
                "tx": u.id,
                "cost": cost,
                "bal": u.balance,
                "at": u.ts,
            }
            # The request digest and the replay window (deduct.lua); usages written before
            # they existed have neither: their records bind the cost only, for the retention.
            if u.request_fp is not None:
                record["fp"] = u.request_fp
            if u.replay_ms is not None:
                record["window"] = u.replay_ms
            latest[u.idempotency_key] = record
    return [r for r in latest.values() if r["at"] + r.get("window", retention) > now], usage


# The columns of credit_transactions (and its archive) an outbox entry is read back from.
ENTRY_COLUMNS = (
    "id",
    "account",
    "seq",
    "type",
    "amount",
    "balance_after",
    "debt_after",
    "created_ms",
    "description",
    "metadata",
    "idempotency_key",
    "hold_id",
    "source_transaction_id",
    "key_id",
    "route",
    "details",
)


def _entry(row: RowMapping) -> TxnEntry:
    """A transaction row of SQL as the outbox entry it was written from."""
    try:
        return TxnEntry.from_sql(row)
    except PoisonEntry as e:
        raise RebuildError(
            f"account {row['account']}: transaction {row['id']} in SQL is not one the "
            f"writer could have written ({e})"
        ) from None


def _charged(parts: list[list[Any]], charge: int) -> list[list[Any]]:
    """What a settle for ``charge`` took per bucket from a hold's parts (in the order they
    were drawn), as a usage's alloc: [[bucket, -credits], ...] (sidecar/lua/_lib.lua close_hold)."""
    out: list[list[Any]] = []
    for bucket, n in parts:
        c = min(int(n), charge)
        charge -= c
        if c > 0:
            out.append([bucket, -c])
    return out


def _script_error(account: str, e: ResponseError) -> Exception:
    m = _SCRIPT_ERROR.match(str(e))
    if m is None:
        return e
    if m["code"] == "EXISTS":
        return AccountExists(m["detail"])
    if m["code"] == "AHEAD":
        return RebuildError(
            f"{m['detail']}: checks were acknowledged while the rebuild read SQL, and "
            "replacing would undo them. Wait for the writer (credit-sidecar outbox status) "
            "and stop traffic to the account, or pass --force to restore anyway"
        )
    return RebuildError(f"account {account}: {m['detail']}")


async def restore_account(
    redis: RedisClient,
    keys: KeySpace,
    script: AsyncScript,
    state: AccountState,
    *,
    replace: bool,
    now_ms: int,
    retention_ms: int,
    force: bool = False,
) -> RestoreCounts:
    """Writes one account's state (restore.lua), then its entries in the global key index;
    returns what the script restored.

    With ``replace`` the script refuses (RebuildError) if Redis has moved past the state's
    seq since SQL was read, unless ``force``."""
    account = state.account
    mode = ("force" if force else "replace") if replace else "create"
    old_keys: dict[Any, Any] = {}
    purge: list[str] = []
    if replace:
        # What the account has in Redis and SQL does not: its old per-request records (they
        # could replay transactions SQL never saw) and its old API keys' index entries.
        old_keys = await redis.hgetall(keys.api_keys(account))
        writing = {keys.idempotency(account, k) for k in state.idempotency_keys} | {
            keys.usage(account, t) for t in state.usage_ids
        }
        for pattern in (keys.idempotency_glob(account), keys.usage_glob(account)):
            async for k in redis.scan_iter(match=pattern, count=1000):
                if _s(k) not in writing:
                    purge.append(_s(k))
    script_keys = [
        *keys.for_account(account).common(),
        keys.api_keys(account),
        *(keys.idempotency(account, k) for k in state.idempotency_keys),
        *(keys.usage(account, t) for t in state.usage_ids),
        *sorted(set(purge)),
    ]
    document = state.document | {"purge": len(set(purge))}
    args: list[str | int] = [
        account,
        now_ms,
        REBUILD_TXID,
        retention_ms,
        "",  # no deadline: an operator's command, not a caller that gives up
        orjson.dumps(document).decode(),
        mode,
    ]
    try:
        counts = replies.restore(await script(keys=script_keys, args=args))
    except ResponseError as e:
        raise _script_error(account, e) from None

    by_hash, by_id = keys.api_key_index(), keys.api_key_accounts()
    pipe = redis.pipeline(transaction=False)
    current = {k.key_id for k in state.api_keys}
    for kid, raw in old_keys.items():
        if _s(kid) not in current:
            pipe.hdel(by_id, _s(kid))
            digest = orjson.loads(raw).get("hash")
            if isinstance(digest, str):
                pipe.hdel(by_hash, digest)
    for k in state.api_keys:
        pipe.hset(by_id, k.key_id, account)  # kept after a revocation, as ApiKeys.revoke does
        if k.active:
            pipe.hset(by_hash, k.digest, f"{account}/{k.key_id}")
        else:
            pipe.hdel(by_hash, k.digest)
    await pipe.execute()
    return counts


async def _existing(redis: RedisClient, keys: KeySpace, accounts: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i in range(0, len(accounts), 1000):
        chunk = accounts[i : i + 1000]
        pipe = redis.pipeline(transaction=False)
        for a in chunk:
            pipe.exists(keys.for_account(a).account)
        found = await pipe.execute()
        out += [a for a, n in zip(chunk, found, strict=True) if n]
    return out


async def rebuild(
    redis: RedisClient,
    keys: KeySpace,
    engine: AsyncEngine,
    *,
    account: str | None = None,
    replace: bool = False,
    force: bool = False,
    now_ms: int,
    retention_ms: int,
) -> int:
    """Restores every account of the SQL ledger (or only ``account``) into Redis; returns how
    many accounts were restored.

    Without ``replace``, nothing is written if any of them exists in Redis (AccountExists).
    With it, their Redis state is replaced by SQL's, but only where Redis holds no transaction
    SQL lacks (its seq is not ahead of SQL's), unless ``force``: checked for all of them first
    (to name every such account at once), and again atomically by restore.lua against the
    snapshot each account is restored from. ``now_ms`` is the current time (it
    decides which idempotency and usage records are still within ``retention_ms``, and how
    long they live on); ``retention_ms`` must be the sidecar's (SIDECAR_RETENTION_S).
    A failure (RebuildError) stops the rebuild at that account; those restored before it stay
    restored, and running it again with ``replace`` is safe.
    """
    if account is not None:
        accounts = [account]
    else:
        async with engine.connect() as conn:
            accounts = [str(a) for a in (await conn.execute(select(ACCOUNTS.c.id))).scalars()]
        accounts.sort()
    if not replace:
        present = await _existing(redis, keys, accounts)
        if present:
            shown = ", ".join(present[:10]) + (" ..." if len(present) > 10 else "")
            raise AccountExists(
                f"{len(present)} account(s) already exist in Redis ({shown}); "
                "rebuild with --replace to overwrite them"
            )
    if replace and not force:
        ahead = await _ahead_of_sql(redis, keys, engine, accounts)
        if ahead:
            shown = ", ".join(ahead[:10]) + (" ..." if len(ahead) > 10 else "")
            raise RebuildError(
                f"Redis has transactions SQL does not have yet for {len(ahead)} account(s) "
                f"({shown}): replacing them now would undo those transactions. Wait for the "
                "writer (credit-sidecar outbox status), or pass --force to restore anyway"
            )
    script = Scripts.register(redis).restore
    for a in accounts:
        async with snapshot(engine) as conn:
            state = await read_account(conn, a, now_ms=now_ms, retention_ms=retention_ms)
        if state is None:
            raise RebuildError(f"account {a} is not in the SQL ledger")
        if state.balance != state.sql_balance:
            log.warning(
                "account %s: its buckets give balance %d, SQL's account row says %d "
                "(a correction in SQL?); restoring the buckets",
                a,
                state.balance,
                state.sql_balance,
            )
        await restore_account(
            redis,
            keys,
            script,
            state,
            replace=replace,
            now_ms=now_ms,
            retention_ms=retention_ms,
            force=force,
        )
    return len(accounts)


async def _ahead_of_sql(
    redis: RedisClient, keys: KeySpace, engine: AsyncEngine, accounts: list[str]
) -> list[str]:
    """Accounts whose Redis sequence number is ahead of SQL's: transactions not written yet."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(ACCOUNTS.c.id, ACCOUNTS.c.seq))
        sql_seq = {str(r[0]): int(r[1]) for r in rows}
    ahead = []
    for a in accounts:
        raw = await redis.hget(keys.for_account(a).account, "seq")
        if raw is not None and int(raw) > sql_seq.get(a, 0):
            ahead.append(a)
    return ahead
