"""Outbox entries → SQL rows, applied idempotently.

A batch of entries becomes a handful of multi-row upserts in one SQL transaction:

- transactions and allocations: insert, ignore if present (a redelivered entry is a no-op);
- accounts, buckets, holds: set absolute values taken from the entry, only if the entry's
  sequence number is newer than the row's ``version`` (order-independent, and an admin's
  correction is never overwritten by an older entry replayed later);
- account settings and API keys: last write wins by outbox entry id / revocation time.

Entries are validated while they are parsed; a malformed one raises :class:`PoisonEntry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from sidecar.persistence.models import (
    Account,
    ApiKey,
    CreditAllocation,
    CreditBalance,
    CreditHold,
    CreditTransaction,
    from_ms,
)

MAXINT = 2**53 - 1
TXN_COLUMNS = {
    "id",
    "account",
    "seq",
    "type",
    "amount",
    "balance",
    "debt",
    "ts",
    "desc",
    "meta",
    "idempotency_key",
    "hold_id",
    "source_transaction_id",
    "key_id",
    "route",
    "kind",
}
INT_DETAILS = {"repaid", "overdraft", "forfeited", "charged", "expires"}
JSON_DETAILS = {"alloc", "held", "buckets", "bucket"}
TXN_TYPES = {"usage", "purchase", "grant", "expiry", "refund", "hold", "settle", "release"}


class PoisonEntry(ValueError):
    """An outbox entry that cannot be understood; it goes to the dead-letter stream."""


def _int(fields: Mapping[str, str], name: str, lo: int = -MAXINT, hi: int = MAXINT) -> int:
    raw = fields.get(name)
    if raw is None:
        raise PoisonEntry(f"missing field {name}")
    try:
        v = int(raw)
    except ValueError:
        raise PoisonEntry(f"field {name} is not an integer: {raw[:40]!r}") from None
    if not lo <= v <= hi:
        raise PoisonEntry(f"field {name} out of range: {v}")
    return v


def _json(fields: Mapping[str, str], name: str) -> Any:
    try:
        return orjson.loads(fields[name])
    except (KeyError, orjson.JSONDecodeError):
        raise PoisonEntry(f"field {name} is missing or not JSON") from None


def _text(fields: Mapping[str, str], name: str, maxlen: int = 256) -> str:
    v = fields.get(name)
    if not v or len(v) > maxlen:
        raise PoisonEntry(f"field {name} is missing or too long")
    return v


def _pairs(value: Any, name: str) -> list[tuple[str, int]]:
    if not isinstance(value, list):
        raise PoisonEntry(f"{name} is not a list")
    out: list[tuple[str, int]] = []
    for p in value:
        if not (
            isinstance(p, list)
            and len(p) == 2
            and isinstance(p[0], str)
            and isinstance(p[1], int)
            and not isinstance(p[1], bool)
        ):
            raise PoisonEntry(f"{name} has a malformed element")
        out.append((p[0], p[1]))
    return out


def stream_version(entry_id: str) -> str:
    """A stream id as a string that sorts like the id: "%015d-%010d"."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(ms):015d}-{int(seq or 0):010d}"


@dataclass
class Batch:
    """The rows one batch of entries turns into, collapsed per primary key."""

    touched_accounts: set[str] = field(default_factory=set)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    account_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    txns: dict[str, dict[str, Any]] = field(default_factory=dict)
    allocs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    bucket_defs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    bucket_state: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    hold_defs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    hold_state: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.txns) + len(self.settings) + len(self.keys)

    def add(self, entry_id: str, fields: Mapping[str, str]) -> None:
        """Parses one entry into the batch (raises PoisonEntry, leaving the batch unchanged)."""
        kind = fields.get("kind")
        try:
            if kind == "txn":
                rows = _txn_rows(fields)
            elif kind == "account":
                # A dead letter moved back keeps its first id: settings order by it.
                rows = _settings_rows(fields.get("orig_id") or entry_id, fields)
            elif kind == "key":
                rows = _key_rows(fields)
            else:
                raise PoisonEntry(f"unknown entry kind {kind!r}")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            # Everything is converted before any merge, so a bad entry leaves the batch as is.
            raise PoisonEntry(f"malformed {kind} entry: {type(e).__name__}: {e}") from None
        for merge in rows:
            merge(self)


Merge = Callable[[Batch], None]


def _newer(table: dict[Any, dict[str, Any]], key: Any, row: dict[str, Any], by: str) -> None:
    old = table.get(key)
    if old is None or old[by] < row[by]:
        table[key] = row


def _txn_rows(f: Mapping[str, str]) -> list[Merge]:
    account = _text(f, "account", 128)
    txid = _text(f, "id", 64)
    seq = _int(f, "seq", 1)
    ttype = _text(f, "type", 16)
    if ttype not in TXN_TYPES:
        raise PoisonEntry(f"unknown transaction type {ttype!r}")
    amount, balance, debt = _int(f, "amount"), _int(f, "balance"), _int(f, "debt", 0)
    ts = _int(f, "ts", 0, 253402300799999)
    alloc = _pairs(_json(f, "alloc"), "alloc")
    held = _pairs(_json(f, "held"), "held") if "held" in f else []
    after = _json(f, "buckets") if "buckets" in f else []
    if not isinstance(after, list) or not all(
        isinstance(b, list) and len(b) == 3 and isinstance(b[0], str) for b in after
    ):
        raise PoisonEntry("buckets is malformed")
    details: dict[str, Any] = {}
    for k, v in f.items():
        if k in TXN_COLUMNS:
            continue
        if k in INT_DETAILS:
            details[k] = _int(f, k)
        elif k in JSON_DETAILS and not (k == "bucket" and ttype == "expiry"):
            details[k] = _json(f, k)
        else:
            details[k] = v
    bucket = details.get("bucket") if ttype in ("purchase", "grant", "refund") else None
    if bucket is not None and not (isinstance(bucket, dict) and isinstance(bucket.get("id"), str)):
        raise PoisonEntry("bucket is malformed")

    txn = {
        "id": txid,
        "account": account,
        "seq": seq,
        "type": ttype,
        "amount": amount,
        "balance_after": balance,
        "debt_after": debt,
        "description": f.get("desc", ""),
        "metadata": f.get("meta") or None,
        "idempotency_key": f.get("idempotency_key") or None,
        "hold_id": f.get("hold_id") or None,
        "source_transaction_id": f.get("source_transaction_id") or None,
        "key_id": f.get("key_id") or None,
        "route": f.get("route") or None,
        "created_ms": ts,
        "created_at": from_ms(ts),
        "details": details,
    }
    deltas: dict[str, list[int]] = {}
    for b, n in alloc:
        if b:
            deltas.setdefault(b, [0, 0])[0] += n
    for b, n in held:
        if b:
            deltas.setdefault(b, [0, 0])[1] += n

    bucket_def: dict[str, Any] | None = None
    if bucket is not None:
        created = int(bucket.get("created", ts))
        expires = bucket.get("expires")
        bucket_def = {
            "account": account,
            "bucket_id": bucket["id"],
            "credits": int(bucket["credits"]),
            "source": str(bucket.get("source", "")),
            "priority": int(bucket.get("priority", 0)),
            "created_ms": created,
            "created_at": from_ms(created),
            "expires_ms": None if expires is None else int(expires),
            "expires_at": from_ms(int(expires)) if expires is not None else None,
            "metadata": f.get("meta") or None,
            "fingerprint": str(bucket.get("fp", "")),
            "transaction_id": txid,
            "balance_after": balance,
        }
    for _bucket, remaining, held_after in after:
        if not (remaining is None or isinstance(remaining, int)) or not isinstance(held_after, int):
            raise PoisonEntry("buckets has a non-integer amount")
    hid = f.get("hold_id")
    hold_expires = int(details.get("expires", ts)) if ttype == "hold" else ts

    def merge(batch: Batch) -> None:
        batch.touched_accounts.add(account)
        batch.txns[txid] = txn
        for b, (dr, dh) in deltas.items():
            batch.allocs[(txid, b)] = {
                "transaction_id": txid,
                "bucket_id": b,
                "account": account,
                "remaining_delta": dr,
                "held_delta": dh,
            }
        _newer(
            batch.account_state,
            account,
            {"id": account, "balance": balance, "debt": debt, "seq": seq, "clock_ms": ts},
            "seq",
        )
        if bucket_def is not None:
            batch.bucket_defs[(account, bucket_def["bucket_id"])] = bucket_def
        for b, remaining, held_after in after:
            _newer(
                batch.bucket_state,
                (account, b),
                {
                    "account": account,
                    "bucket_id": b,
                    "remaining": remaining if remaining is not None else 0,
                    "held": held_after,
                    "expired": remaining is None,
                    "version": seq,
                },
                "version",
            )
        if ttype == "hold" and hid:
            expires = hold_expires
            batch.hold_defs[(account, hid)] = {
                "account": account,
                "hold_id": hid,
                "amount": -amount,
                "ttl_ms": expires - ts,
                "alloc": {"parts": [[b, n] for b, n in held]},
                "created_ms": ts,
                "expires_ms": expires,
                "transaction_id": txid,
                "balance_after": balance,
            }
            _newer(
                batch.hold_state,
                (account, hid),
                {"account": account, "hold_id": hid, "state": "active", "version": seq}
                | dict.fromkeys(
                    ("charged", "forfeited", "close_transaction_id", "close_balance", "closed_ms")
                ),
                "version",
            )
        elif ttype in ("settle", "release") and hid:
            _newer(
                batch.hold_state,
                (account, hid),
                {
                    "account": account,
                    "hold_id": hid,
                    "state": str(details.get("state", ttype)),
                    "charged": details.get("charged"),
                    "forfeited": details.get("forfeited"),
                    "close_transaction_id": txid,
                    "close_balance": balance,
                    "closed_ms": ts,
                    "version": seq,
                },
                "version",
            )

    return [merge]


def _settings_rows(entry_id: str, f: Mapping[str, str]) -> list[Merge]:
    account = _text(f, "account", 128)
    s = _json(f, "settings")
    if not isinstance(s, dict):
        raise PoisonEntry("settings is not an object")
    created = _int(f, "created", 0) if f.get("created") else _int(f, "ts", 0)
    row = {
        "id": account,
        "created_at": from_ms(created),
        "overdraft_limit": int(s.get("overdraft_limit", 0)),
        "low_balance_threshold": s.get("low_balance_threshold"),
        "rate_limit_requests": s.get("rate_limit_requests"),
        "rate_limit_period_ms": s.get("rate_limit_period_ms"),
        "rate_limit_burst": s.get("rate_limit_burst"),
        "settings_version": stream_version(entry_id),
        "settings_ms": _int(f, "ts", 0, 253402300799999),
    }

    def merge(batch: Batch) -> None:
        batch.touched_accounts.add(account)
        _newer(batch.settings, account, row, "settings_version")

    return [merge]


def _key_rows(f: Mapping[str, str]) -> list[Merge]:
    account = _text(f, "account", 128)
    rec = _json(f, "record")
    if not isinstance(rec, dict) or not isinstance(rec.get("hash"), str):
        raise PoisonEntry("record is not a key record")
    rl = rec.get("rate_limit") or {}
    revoked = rec.get("revoked_at")
    row = {
        "key_id": _text(f, "key_id", 64),
        "account": account,
        "hash": rec["hash"],
        "name": str(rec.get("name", "")),
        "prefix": str(rec.get("prefix", "")),
        "rate_limit_requests": rl.get("requests"),
        "rate_limit_period_ms": rl.get("period_ms"),
        "rate_limit_burst": rl.get("burst"),
        "created_at": from_ms(int(rec["created_at"])),
        "revoked_at": from_ms(int(revoked)) if revoked is not None else None,
    }

    def merge(batch: Batch) -> None:
        batch.touched_accounts.add(account)
        old = batch.keys.get(row["key_id"])
        if old is None or old["revoked_at"] is None:
            batch.keys[row["key_id"]] = row

    return [merge]


def _t(model: Any) -> Table:
    table: Table = model.__table__
    return table


async def apply(conn: AsyncConnection, batch: Batch) -> None:
    """Writes a batch; the caller owns the SQL transaction (one per batch)."""
    # Rows for accounts that only appear in key entries; the upserts below create the rest.
    bare = batch.touched_accounts - batch.settings.keys() - batch.account_state.keys()
    accounts = _t(Account)
    await _upsert(conn, accounts, [{"id": a} for a in sorted(bare)], ["id"])
    settings = list(batch.settings.values())
    await _upsert(
        conn,
        accounts,
        settings,
        ["id"],
        update=[c for c in (settings[0] if settings else {}) if c not in ("id", "created_at")],
        extra_set={"created_at": 'COALESCE("accounts"."created_at", excluded."created_at")'},
        where='"accounts"."settings_version" < excluded."settings_version"',
    )
    await _upsert(
        conn,
        accounts,
        list(batch.account_state.values()),
        ["id"],
        update=["balance", "debt", "seq", "clock_ms"],
        where='"accounts"."seq" < excluded."seq"',
    )
    for table, pk, defs, state in (
        (_t(CreditBalance), ["account", "bucket_id"], batch.bucket_defs, batch.bucket_state),
        (_t(CreditHold), ["account", "hold_id"], batch.hold_defs, batch.hold_state),
    ):
        # Definitions are immutable: set whenever they arrive. State moves forward only.
        rows = list(defs.values())
        await _upsert(conn, table, rows, pk, update=_non_key(rows, pk))
        rows = list(state.values())
        where = f'"{table.name}"."version" < excluded."version"'
        await _upsert(conn, table, rows, pk, update=_non_key(rows, pk), where=where)
    await _upsert(
        conn,
        _t(ApiKey),
        list(batch.keys.values()),
        ["key_id"],
        extra_set={"revoked_at": 'COALESCE("api_keys"."revoked_at", excluded."revoked_at")'},
    )
    await _upsert(conn, _t(CreditTransaction), list(batch.txns.values()), ["id"])
    await _upsert(
        conn, _t(CreditAllocation), list(batch.allocs.values()), ["transaction_id", "bucket_id"]
    )


def _non_key(rows: list[dict[str, Any]], pk: list[str]) -> list[str]:
    return [c for c in rows[0] if c not in pk] if rows else []


async def _upsert(
    conn: AsyncConnection,
    table: Table,
    rows: list[dict[str, Any]],
    conflict: list[str],
    *,
    update: Sequence[str] = (),
    extra_set: dict[str, str] | None = None,
    where: str | None = None,
) -> None:
    """One multi-row INSERT … ON CONFLICT, sent as an executemany of plain tuples.

    The SQL is built here rather than by SQLAlchemy's insert(): per-row parameter handling
    was a third of the writer's time. Values still go through each column type's own bind
    processor (datetimes, JSON), so the stored form is what SQLAlchemy reads back.
    """
    if not rows:
        return
    dialect = conn.dialect
    given = list(rows[0])
    defaults = {
        c.name: c.default.arg  # type: ignore[attr-defined]
        for c in table.columns
        if c.name not in rows[0] and c.default is not None and c.default.is_scalar
    }
    cols = given + list(defaults)
    sets = [f'"{c}" = excluded."{c}"' for c in update]
    sets += [f'"{c}" = {expr}' for c, expr in (extra_set or {}).items()]
    action = "DO NOTHING"
    if sets:
        action = "DO UPDATE SET " + ", ".join(sets) + (f" WHERE {where}" if where else "")
    names = ", ".join(f'"{c}"' for c in cols)
    keys = ", ".join(f'"{c}"' for c in conflict)
    procs = [table.c[c].type.bind_processor(dialect) for c in cols]
    tail = tuple(defaults.values())
    params = [
        tuple(
            v if p is None or v is None else p(v)
            for p, v in zip(procs, (*(row[c] for c in given), *tail), strict=True)
        )
        for row in rows
    ]
    # Identifiers come from our own table metadata, values are bound: nothing user-supplied.
    if dialect.name == "postgresql":
        # One statement per batch: one array per column, unnested server-side (asyncpg
        # sends arrays natively); far cheaper than one execution per row.
        casts = ", ".join(
            f"${i}::{table.c[c].type.compile(dialect=dialect)}[]" for i, c in enumerate(cols, 1)
        )
        sql = (
            f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({casts}) '  # noqa: S608
            f"ON CONFLICT ({keys}) {action}"
        )
        await conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*params, strict=True)))
        return
    marks = ", ".join("?" for _ in cols)
    sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}) ON CONFLICT ({keys}) {action}'  # noqa: S608
    await conn.exec_driver_sql(sql, params)
