"""Outbox entries → SQL rows, applied idempotently.

A batch of entries becomes a handful of multi-row upserts in one SQL transaction:

- transactions and allocations: insert, ignore if present (a redelivered entry is a no-op);
- accounts, buckets, holds: set absolute values taken from the entry, only if the entry's
  sequence number is newer than the row's ``version`` (order-independent, and an admin's
  correction is never overwritten by an older entry replayed later);
- account settings and API keys: last write wins by outbox entry id / revocation time;
- plans: last write wins by outbox entry id (a deleted plan keeps its row, ``deleted``);
- the sidecar's API tokens: last write wins by outbox entry id (one row per token).

Entries are validated while they are parsed, a transaction by its model's decoder
(sidecar/ledger/outbox.py ``txn``); a malformed one raises :class:`PoisonEntry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import orjson

from sidecar.ledger import audit, outbox, token_entry
from sidecar.ledger.outbox import TXN_TYPES, PoisonEntry
from sidecar.ledger.outbox import int_field as _int
from sidecar.ledger.outbox import opt_int_field as _opt_int
from sidecar.ledger.outbox import text_field as _text
from sidecar.ledger.units import MAX_CREDITS, from_ms
from sidecar.ledger.units import MAX_TIMESTAMP_MS as MAX_TIME

# Re-exported: the writer and the admin API import them from here.
__all__ = ["TXN_TYPES", "Batch", "PoisonEntry", "sqlite_time", "stream_version"]

# Row layouts: every row below is a tuple of already-bound values in this column order.
SETTINGS_COLS = (
    "id",
    "created_at",
    "overdraft_limit",
    "low_balance_threshold",
    "rate_limit_requests",
    "rate_limit_period_ms",
    "rate_limit_burst",
    "settings_version",
    "settings_ms",
    "spend_limit_credits",
    "spend_limit_interval",
    "spend_limit_interval_count",
    "plan",
    "plan_anchor_ms",
    "plan_since_ms",
)
STATE_COLS = ("id", "balance", "debt", "seq", "clock_ms")
# The spending limit's state (sidecar/lua/_lib.lua ss), set by transactions and by settings
# changes alike: the latest by outbox entry id wins.
SPEND_COLS = ("id", "spend_state", "spend_version")
# An account's next plan renewal, likewise set by transactions and settings changes.
PLAN_NEXT_COLS = ("id", "plan_next_ms", "plan_version")
TXN_COLS = (
    "id",
    "account",
    "seq",
    "type",
    "amount",
    "balance_after",
    "debt_after",
    "description",
    "metadata",
    "idempotency_key",
    "hold_id",
    "source_transaction_id",
    "key_id",
    "route",
    "created_ms",
    "created_at",
    "details",
)
ALLOC_COLS = ("transaction_id", "bucket_id", "account", "remaining_delta", "held_delta")
BUCKET_DEF_COLS = (
    "account",
    "bucket_id",
    "credits",
    "source",
    "priority",
    "created_ms",
    "created_at",
    "expires_ms",
    "expires_at",
    "metadata",
    "fingerprint",
    "transaction_id",
    "balance_after",
)
BUCKET_STATE_COLS = ("account", "bucket_id", "remaining", "held", "expired", "version")
HOLD_DEF_COLS = (
    "account",
    "hold_id",
    "amount",
    "ttl_ms",
    "alloc",
    "created_ms",
    "expires_ms",
    "transaction_id",
    "balance_after",
)
HOLD_STATE_COLS = (
    "account",
    "hold_id",
    "state",
    "charged",
    "forfeited",
    "uncovered",
    "close_transaction_id",
    "close_balance",
    "closed_ms",
    "version",
)
KEY_COLS = (
    "key_id",
    "account",
    "hash",
    "name",
    "prefix",
    "rate_limit_requests",
    "rate_limit_period_ms",
    "rate_limit_burst",
    "created_at",
    "revoked_at",
    "spend_limit_credits",
    "spend_limit_interval",
    "spend_limit_interval_count",
    "settings_version",
)
PLAN_COLS = ("id", "name", "definition", "is_default", "deleted", "version", "updated_ms")
TOKEN_COLS = (
    "id",
    "name",
    "scopes",
    "account_prefix",
    "token_hash",
    "previous",
    "created_ms",
    "rotated_ms",
    "revoked_ms",
    "version",
)
Row = tuple[Any, ...]


def stream_version(entry_id: str) -> str:
    """A stream id as a string that sorts like the id: "%015d-%010d"."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(ms):015d}-{int(seq or 0):010d}"


@lru_cache(maxsize=8192)
def sqlite_time(ms: int) -> str:
    """Unix ms as SQLAlchemy's SQLite DATETIME stores it (naive UTC text), so rows read back
    through the models exactly as if SQLAlchemy had written them."""
    d = from_ms(ms)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d} "
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}.{d.microsecond:06d}"
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class Batch:
    """The rows one batch of entries turns into, collapsed per primary key. Values are
    bound for the dialect as they are parsed (times, JSON), so writing is a plain
    executemany of tuples."""

    def __init__(self, dialect: str = "sqlite") -> None:
        self.when: Callable[[int], Any] = sqlite_time if dialect == "sqlite" else from_ms
        self.touched_accounts: set[str] = set()
        self.settings: dict[str, Row] = {}
        self.spend: dict[str, Row] = {}
        self.plan_next: dict[str, Row] = {}
        self.key_spend: dict[str, Row] = {}  # key id -> (key id, state, version)
        self.account_state: dict[str, Row] = {}
        self.txns: dict[str, Row] = {}
        self.allocs: dict[tuple[str, str], Row] = {}
        self.bucket_defs: dict[tuple[str, str], Row] = {}
        self.bucket_state: dict[tuple[str, str], Row] = {}
        self.hold_defs: dict[tuple[str, str], Row] = {}
        self.hold_state: dict[tuple[str, str], Row] = {}
        self.keys: dict[str, Row] = {}
        self.plans: dict[str, Row] = {}
        self.audits: dict[str, dict[str, Any]] = {}  # outbox entry id -> body, in order
        self.audit_head: tuple[int, str] | None = None  # set by upsert.apply
        self.tokens: dict[str, Row] = {}

    def __len__(self) -> int:
        return (
            len(self.txns)
            + len(self.settings)
            + len(self.keys)
            + len(self.plans)
            + len(self.tokens)
        )

    def add(self, entry_id: str, entry: Mapping[str, Any], orig_id: str | None = None) -> None:
        """Adds one decoded entry (raises PoisonEntry, leaving the batch unchanged).
        ``orig_id``: a dead letter moved back keeps its first id, which orders settings."""
        kind = entry.get("kind")
        try:
            if kind == "txn":
                self._txn(entry, orig_id or entry_id)
            elif kind == "account":
                self._settings(orig_id or entry_id, entry)
            elif kind == "key":
                self._key(entry, orig_id or entry_id)
            elif kind == "plan":
                self._plan(entry, orig_id or entry_id)
            elif kind == "audit":
                self.audits[orig_id or entry_id] = audit.decode(entry)
            elif kind == "token":
                self._token(entry, orig_id or entry_id)
            else:
                raise PoisonEntry(f"unknown entry kind {str(kind)[:40]!r}")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            if isinstance(e, PoisonEntry):
                raise
            # Everything is checked before the first merge, so the batch is as it was.
            raise PoisonEntry(f"malformed {kind} entry: {type(e).__name__}: {e}") from None

    def _spend(self, account: str, state: str | None, entry_id: str) -> None:
        row = (account, state, stream_version(entry_id))
        old = self.spend.get(account)
        if old is None or old[2] < row[2]:
            self.spend[account] = row

    def _plan_next(self, account: str, at: int | None, entry_id: str) -> None:
        row = (account, at, stream_version(entry_id))
        old = self.plan_next.get(account)
        if old is None or old[2] < row[2]:
            self.plan_next[account] = row

    def _key_spend(self, key_id: str, state: Any, entry_id: str) -> None:
        row = (key_id, state, stream_version(entry_id))
        old = self.key_spend.get(key_id)
        if old is None or old[2] < row[2]:
            self.key_spend[key_id] = row

    def _txn(self, e: Mapping[str, Any], entry_id: str) -> None:
        t = outbox.txn(e)  # every check; raises PoisonEntry
        account, txid, seq, balance, ts = t.account, t.id, t.seq, t.balance, t.ts
        bucket_def: Row | None = None
        if t.bucket is not None:
            nb = t.bucket
            bucket_def = (
                account,
                nb.id,
                nb.credits,
                nb.source,
                nb.priority,
                nb.created,
                self.when(nb.created),
                nb.expires,
                None if nb.expires is None else self.when(nb.expires),
                t.meta,
                nb.fp,
                txid,
                balance,
            )
        txn = (
            txid,
            account,
            seq,
            t.type,
            t.amount,
            balance,
            t.debt,
            t.desc,
            t.meta,
            t.idempotency_key,
            t.hold_id,
            t.source_transaction_id,
            t.key_id,
            t.route,
            ts,
            self.when(ts),
            _dumps(t.details),
        )
        hid = t.hold_id
        hold_def: Row | None = None
        hold_state: Row | None = None
        if t.hold_expires is not None and hid:
            expires = t.hold_expires
            sw = t.spend_window
            parts = _dumps({"parts": t.held} if sw is None else {"parts": t.held, "sw": sw})
            hold_def = (account, hid, -t.amount, expires - ts, parts, ts, expires, txid, balance)
            hold_state = (account, hid, "active", None, None, None, None, None, None, seq)
        elif t.hold_state is not None and hid:
            charged, forfeited = t.details.get("charged"), t.details.get("forfeited")
            uncovered = t.details.get("uncovered")
            hold_state = (
                account,
                hid,
                t.hold_state,
                charged,
                forfeited,
                uncovered,
                txid,
                balance,
                ts,
                seq,
            )
        alloc, held, after, debt = t.alloc, t.held, t.buckets, t.debt

        # Merge: nothing below can fail.
        self.touched_accounts.add(account)
        if t.spend_state is not None:
            self._spend(account, t.spend_state, entry_id)
        if t.plan_next is not None:
            self._plan_next(account, t.plan_next, entry_id)
        if t.key_spend is not None:  # (checked by outbox.txn)
            self._key_spend(*t.key_spend, entry_id)
        self.txns[txid] = txn
        deltas: dict[str, list[int]] = {}
        for b, n in alloc:
            if b:
                deltas.setdefault(b, [0, 0])[0] += n
        for b, n in held:
            if b:
                deltas.setdefault(b, [0, 0])[1] += n
        allocs = self.allocs
        for b, (dr, dh) in deltas.items():
            allocs[(txid, b)] = (txid, b, account, dr, dh)
        old = self.account_state.get(account)
        if old is None or old[3] < seq:
            self.account_state[account] = (account, balance, debt, seq, ts)
        if bucket_def is not None:
            self.bucket_defs[(account, bucket_def[1])] = bucket_def
        states = self.bucket_state
        for b, remaining, held_after in after:
            old = states.get((account, b))
            if old is None or old[5] < seq:
                expired = remaining is None
                states[(account, b)] = (account, b, remaining or 0, held_after, expired, seq)
        if hold_def is not None:
            self.hold_defs[(account, hold_def[1])] = hold_def
        if hold_state is not None:
            old = self.hold_state.get((account, hold_state[1]))
            if old is None or old[9] < seq:
                self.hold_state[(account, hold_state[1])] = hold_state

    def _settings(self, entry_id: str, e: Mapping[str, Any]) -> None:
        account = _text(e, "account", 128)
        s = e.get("settings")
        if not isinstance(s, dict):
            raise PoisonEntry("settings is not an object")
        ts = _int(e, "ts", 0, MAX_TIME)
        created = _int(e, "created", 0, MAX_TIME) if e.get("created") is not None else ts
        row = (
            account,
            self.when(created),
            _opt_int(s, "overdraft_limit") or 0,
            _opt_int(s, "low_balance_threshold"),
            _opt_int(s, "rate_limit_requests"),
            _opt_int(s, "rate_limit_period_ms"),
            _opt_int(s, "rate_limit_burst"),
            stream_version(entry_id),
            ts,
            *_spend_limit(s.get("spend_limit")),
            # its plan (entries written before plans existed have none: it had none)
            None if s.get("plan") is None else _text(s, "plan", 64),
            _opt_int(s, "plan_anchor"),
            _opt_int(s, "plan_since"),
        )
        self.touched_accounts.add(account)
        spend: str | None = None
        if "spend_state" in e:  # (entries written before it existed: no change)
            spend = e["spend_state"]
            if spend is not None and not outbox.SPEND_STATE.match(str(spend)):
                raise PoisonEntry("spend_state is not 'from:spent'")
        old = self.settings.get(account)
        if old is None or old[7] < row[7]:
            self.settings[account] = row
        if "spend_state" in e:
            self._spend(account, spend, entry_id)
        if "plan" in s:  # (entries written before plans existed: no change)
            self._plan_next(account, _opt_int(s, "plan_next"), entry_id)

    def _key(self, e: Mapping[str, Any], entry_id: str) -> None:
        account = _text(e, "account", 128)
        rec = e.get("record")
        if not isinstance(rec, dict) or not isinstance(rec.get("hash"), str):
            raise PoisonEntry("record is not a key record")
        rl = rec.get("rate_limit") or {}
        if not isinstance(rl, dict):
            raise PoisonEntry("record has a malformed rate_limit")
        revoked = _opt_int(rec, "revoked_at")
        row = (
            _text(e, "key_id", 64),
            account,
            rec["hash"],
            str(rec.get("name", "")),
            str(rec.get("prefix", "")),
            _opt_int(rl, "requests"),
            _opt_int(rl, "period_ms"),
            _opt_int(rl, "burst"),
            self.when(_int(rec, "created_at", 0, MAX_TIME)),
            None if revoked is None else self.when(revoked),
            *_spend_limit(rec.get("spend_limit")),
            stream_version(entry_id),
        )
        key_state = e.get("spend_state")
        if key_state is not None and not outbox.SPEND_STATE.match(str(key_state)):
            raise PoisonEntry("spend_state is not 'from:spent'")
        # Merge: nothing below can fail.
        if "spend_state" in e:  # (entries written before it existed: no change)
            self._key_spend(row[0], key_state, entry_id)
        self.touched_accounts.add(account)
        old = self.keys.get(row[0])
        if old is None or old[9] is None:
            self.keys[row[0]] = row

    def _plan(self, e: Mapping[str, Any], entry_id: str) -> None:
        p = outbox.plan(e)  # every check; raises PoisonEntry
        row = (
            p.plan,
            p.name,
            _dumps(p.definition),
            p.default,
            p.deleted,
            stream_version(entry_id),
            p.ts,
        )
        old = self.plans.get(p.plan)
        if old is None or old[5] < row[5]:
            self.plans[p.plan] = row

    def _token(self, e: Mapping[str, Any], entry_id: str) -> None:
        t = token_entry.token(e)  # every check; raises PoisonEntry
        r = t.record
        row = (
            t.token_id,
            r["name"],
            _dumps(r["scopes"]),
            r["account_prefix"],
            r["hash"],
            _dumps([{"hash": p["hash"], "expires": p["expires"]} for p in r["previous"]]),
            r["created_at"],
            r["rotated_at"],
            r["revoked_at"],
            stream_version(entry_id),
        )
        old = self.tokens.get(t.token_id)
        if old is None or old[9] < row[9]:
            self.tokens[t.token_id] = row


SPEND_INTERVALS = ("day", "week", "month", "year")


def _spend_limit(v: Any) -> tuple[int | None, str | None, int | None]:
    """An account entry's ``spend_limit`` ({credits, interval?, interval_count}, or absent)
    as its three columns."""
    if v is None:
        return None, None, None
    if not isinstance(v, dict):
        raise PoisonEntry("spend_limit is not an object")
    interval = v.get("interval")
    if interval is not None and interval not in SPEND_INTERVALS:
        raise PoisonEntry(f"spend_limit.interval {interval!r} is not one of {SPEND_INTERVALS}")
    return _int(v, "credits", 1, MAX_CREDITS), interval, _int(v, "interval_count", 1, 1000)
