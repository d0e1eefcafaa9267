"""The outbox entry format, in one place for the scripts' readers (the SQL writer, ``rebuild``,
``reconcile``, the admin API's dead-letter listing, the tests' reference model).

The Lua scripts (``outbox_add`` and ``emit`` in sidecar/lua/_lib.lua) append each entry with one
field, ``d``: a JSON object with exact integers. Its ``kind`` says what it records: ``txn`` (a
ledger transaction), ``account`` (settings), ``key`` (an API key), ``token`` (the sidecar's
API token: token_entry.py) or ``plan`` (:class:`PlanEntry`, decoded by :func:`plan`). One
field instead of one per value: the writer decodes an entry in one C call instead of
converting a dozen strings, and Redis stores and sends fewer, larger values.

A ``txn`` entry has one model, :class:`TxnEntry`, and one decoder, :func:`txn`, which checks
everything before anything uses it: an entry it refuses (:class:`PoisonEntry`) goes to the
dead-letter stream. The SQL ledger stores a transaction as columns plus ``details`` (the
entry's other fields); :meth:`TxnEntry.from_sql` reads such a row back into the same model.

A dead letter moved back into the outbox also carries ``orig_id``, its first entry id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.ledger.results import Plan
from sidecar.ledger.units import MAX_CREDITS, MAX_TIMESTAMP_MS
from sidecar.redis.client import text as _text

FIELD = "d"
ORIG_ID = "orig_id"

# The fields of a txn entry that have SQL columns of their own; every other field is kept in
# the transaction's ``details``.
TXN_COLUMNS = frozenset(
    {
        "kind",
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
    }
)
# Optional integer fields: checked whenever present.
INT_DETAILS = (
    "sw",  # a usage or hold: the start of the spending limit's window it counted in
    "kw",  # a usage: the start of its API key's spending limit window
    "xw",  # a settle above its hold: the start of the count its extra counted in
    "repaid",
    "overdraft",
    "forfeited",
    "charged",
    "uncovered",
    "expires",
    "target",
    "unrecovered",
    "version",
    "pending",
    "debt_added",
    "pn",  # a transaction of an account on a plan: its next renewal after it
    "period",  # an allowance: the start of its period
    "periods",  # an allowance: how many periods it covers (more than 1: periods nobody saw)
)
SPEND_STATE = re.compile(r"\A\d{1,16}:\d{1,16}\Z")
TXN_TYPES = frozenset(
    {
        "usage",
        "purchase",
        "grant",
        "allowance",  # a plan's allowance for a period (docs/plans.md)
        "expiry",
        "refund",
        "hold",
        "settle",
        "release",
        "revoke",
    }
)
# The types whose entry may define a new bucket (``bucket``).
BUCKET_TYPES = frozenset({"purchase", "grant", "allowance", "refund", "revoke"})


class PoisonEntry(ValueError):
    """An outbox entry that cannot be understood; it goes to the dead-letter stream."""


def decode(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> dict[str, Any]:
    """The entry's JSON object; ValueError if the entry has none."""
    raw: Any = fields.get(FIELD)  # type: ignore[call-overload]
    if raw is None:
        raw = fields.get(FIELD.encode())  # type: ignore[call-overload]
    if raw is None:
        raise ValueError(f"entry has no field {FIELD!r}")
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError(f"field {FIELD!r} is not JSON") from None
    if not isinstance(entry, dict):
        raise ValueError(f"field {FIELD!r} is not a JSON object")
    return entry


def orig_id(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> str | None:
    """The first id of an entry moved back from the dead letters (None for others)."""
    v: Any = fields.get(ORIG_ID) or fields.get(ORIG_ID.encode())  # type: ignore[call-overload]
    return _text(v) if v else None


# -- field checks (shared with the account and key entries' projection) ------------------


def int_field(
    e: Mapping[str, Any], name: str, lo: int = -MAX_CREDITS, hi: int = MAX_CREDITS
) -> int:
    v = e.get(name)
    if type(v) is not int:  # not bool, not float
        raise PoisonEntry(f"field {name} is missing or not an integer: {str(v)[:40]!r}")
    if not lo <= v <= hi:
        raise PoisonEntry(f"field {name} out of range: {v}")
    return v


def opt_int_field(e: Mapping[str, Any], name: str) -> int | None:
    return None if e.get(name) is None else int_field(e, name)


def text_field(e: Mapping[str, Any], name: str, maxlen: int = 256) -> str:
    v = e.get(name)
    if not isinstance(v, str) or not v or len(v) > maxlen:
        raise PoisonEntry(f"field {name} is missing, not text or too long")
    return v


def opt_text_field(e: Mapping[str, Any], name: str) -> str | None:
    """Optional text; "" reads as absent."""
    v = e.get(name)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise PoisonEntry(f"field {name} is not text")
    return v


def _pairs(value: Any, name: str) -> list[tuple[str, int]]:
    """[[bucket, credits], ...] as pairs."""
    if not isinstance(value, list):
        raise PoisonEntry(f"{name} is not a list")
    out: list[tuple[str, int]] = []
    for p in value:
        if not (
            isinstance(p, list)
            and len(p) == 2
            and isinstance(p[0], str)
            and type(p[1]) is int
            and -MAX_CREDITS <= p[1] <= MAX_CREDITS
        ):
            raise PoisonEntry(f"{name} has a malformed element")
        out.append((p[0], p[1]))
    return out


def _after(value: Any) -> list[tuple[str, int | None, int]]:
    """[[bucket, remaining (null: expired), held], ...] as triples."""
    if not isinstance(value, list):
        raise PoisonEntry("buckets is malformed")
    out: list[tuple[str, int | None, int]] = []
    for b in value:
        if not (
            isinstance(b, list)
            and len(b) == 3
            and isinstance(b[0], str)
            and (b[1] is None or type(b[1]) is int)
            and type(b[2]) is int
        ):
            raise PoisonEntry("buckets is malformed")
        out.append((b[0], b[1], b[2]))
    return out


# -- the transaction entry -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewBucket:
    """The bucket a grant, purchase, refund or revoke created: its static record."""

    id: str
    credits: int
    source: str
    priority: int
    created: int  # unix ms (the transaction's time unless the entry says otherwise)
    expires: int | None  # unix ms; None: never
    fp: str  # the grant's fingerprint ("" for a refund's or a clawback's bucket)


@dataclass(slots=True)
class TxnEntry:
    """One ledger transaction as a script appended it to the outbox (kind ``txn``).

    Amounts are credits (the balance's change); times are unix ms; text fields the scripts
    write as "" read as None, except ``desc``. Read-only by convention, not frozen: the
    writer decodes every entry, and a frozen dataclass's __init__ costs it several times
    as much (each field set through object.__setattr__)."""

    id: str
    account: str
    seq: int  # the account's transaction sequence number, from 1, without gaps
    type: str  # one of TXN_TYPES
    amount: int
    balance: int  # after it
    debt: int  # after it
    ts: int
    alloc: list[tuple[str, int]]  # (bucket, change of its remaining credits)
    held: list[tuple[str, int]]  # (bucket, change of its held credits): holds and closes
    buckets: list[tuple[str, int | None, int]]  # after it: (bucket, remaining or None, held)
    desc: str
    meta: str | None  # the caller's metadata, JSON text
    idempotency_key: str | None
    hold_id: str | None
    source_transaction_id: str | None  # a refund's usage
    key_id: str | None
    route: str | None
    bucket: NewBucket | None
    hold_expires: int | None  # a hold's expiry (ts when the entry has none)
    hold_state: str | None  # a settle or release: the hold's state after it
    details: dict[str, Any]  # every field without a column of its own, as SQL stores it

    # Details that only some types carry, read as ``rebuild`` needs them.

    def _int(self, name: str, default: int) -> int:
        v = self.details.get(name)
        return v if type(v) is int else default

    @property
    def overdraft(self) -> int:
        """A usage: the credits it took beyond the buckets (added to the debt)."""
        return self._int("overdraft", 0)

    @property
    def charged(self) -> int:
        """A settle or release: the credits it charged (a settle above the hold: all of the
        hold, and what its alloc drew beyond it)."""
        return self._int("charged", 0)

    @property
    def uncovered(self) -> int:
        """A settle above the hold: credits it asked for that nothing covered."""
        return self._int("uncovered", 0)

    @property
    def forfeited(self) -> int:
        """Credits that went back to a bucket that had expired meanwhile."""
        return self._int("forfeited", 0)

    @property
    def request_fp(self) -> str | None:
        """A usage: the digest of its request (None in entries written before it existed)."""
        v = self.details.get("fp")
        return None if v is None else str(v)

    @property
    def replay_ms(self) -> int | None:
        """A usage: its idempotency record's replay window (None: the retention)."""
        v = self.details.get("replay_ms")
        return None if v is None else int(v)

    @property
    def spend_window(self) -> int | None:
        """A usage or hold that counted against the account's spending limit: the start of
        the window it counted in (ms)."""
        v = self.details.get("sw")
        return v if type(v) is int else None

    @property
    def spend_state(self) -> str | None:
        """The account's spending-limit state after it (``from:spent``, see "Spending limits"
        in sidecar/lua/_lib.lua), if any."""
        v = self.details.get("spend")
        return v if isinstance(v, str) else None

    @property
    def plan_next(self) -> int | None:
        """An account on a plan: its next renewal after it (ms)."""
        v = self.details.get("pn")
        return v if type(v) is int else None

    @property
    def key_spend(self) -> tuple[str, str] | None:
        """A usage or refund that moved an API key's spending limit: the key and its state
        after it."""
        v = self.details.get("key_spend")
        return (str(v[0]), str(v[1])) if isinstance(v, list) and len(v) == 2 else None

    @property
    def refund_id(self) -> str:
        return str(self.details.get("refund_id", ""))

    @property
    def requested_amount(self) -> str | None:
        """A refund: its amount argument as given ('' = all that was left); None in entries
        written before it existed."""
        v = self.details.get("requested_amount")
        return None if v is None else str(v)

    @property
    def voided_attempt(self) -> str | None:
        """A refund made by a void (sidecar/lua/void.lua): the token of the call attempt it voided;
        its usage's idempotency record was deleted with it."""
        v = self.details.get("void")
        return v if isinstance(v, str) and v else None

    @property
    def purchase(self) -> str | None:
        """A revoke: the purchase whose clawback it changed."""
        v = self.details.get("purchase")
        return v if isinstance(v, str) else None

    @property
    def target(self) -> int | None:
        """A revoke: the clawback's target after it."""
        v = self.details.get("target")
        return v if type(v) is int else None

    @property
    def clawback_state(self) -> dict[str, Any] | None:
        """A revoke: the clawback's state after it (None from a release that kept none)."""
        v = self.details.get("state") if self.type == "revoke" else None
        return v if isinstance(v, dict) else None

    @classmethod
    def from_sql(cls, row: Mapping[Any, Any]) -> TxnEntry:
        """The entry back from its row in credit_transactions (or the archive): its columns
        plus ``details``. PoisonEntry if the row is not one the writer could have made."""
        e: dict[str, Any] = dict(row["details"] or {})
        e |= {
            "kind": "txn",
            "id": row["id"],
            "account": row["account"],
            "seq": row["seq"],
            "type": row["type"],
            "amount": row["amount"],
            "balance": row["balance_after"],
            "debt": row["debt_after"],
            "ts": row["created_ms"],
            "desc": row["description"],
        }
        for column, name in (
            ("metadata", "meta"),
            ("idempotency_key", "idempotency_key"),
            ("hold_id", "hold_id"),
            ("source_transaction_id", "source_transaction_id"),
            ("key_id", "key_id"),
            ("route", "route"),
        ):
            if row[column] is not None:
                e[name] = row[column]
        return txn(e)


def txn(e: Mapping[str, Any]) -> TxnEntry:
    """A decoded ``txn`` entry (see :func:`decode`) as its model; PoisonEntry, naming the
    problem, if any field is missing, of the wrong type or out of range."""
    try:
        return _txn(e)
    except PoisonEntry:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as x:
        raise PoisonEntry(f"malformed txn entry: {type(x).__name__}: {x}") from None


def read_txn(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> TxnEntry | None:
    """A stream entry's transaction (None: an entry of another kind); PoisonEntry if the
    entry is not a valid one."""
    try:
        e = decode(fields)
    except ValueError as x:
        raise PoisonEntry(str(x)) from None
    return txn(e) if e.get("kind") == "txn" else None


def _txn(e: Mapping[str, Any]) -> TxnEntry:
    account = text_field(e, "account", 128)
    txid = text_field(e, "id", 64)
    seq = int_field(e, "seq", 1)
    ttype = e.get("type")
    if ttype not in TXN_TYPES:
        raise PoisonEntry(f"unknown transaction type {str(ttype)[:40]!r}")
    amount, balance, debt = int_field(e, "amount"), int_field(e, "balance"), int_field(e, "debt", 0)
    ts = int_field(e, "ts", 0, MAX_TIMESTAMP_MS)
    alloc = _pairs(e.get("alloc"), "alloc")
    held = _pairs(e.get("held", []), "held")
    after = _after(e.get("buckets", []))
    for name in INT_DETAILS:
        if name in e:
            int_field(e, name)
    desc = e.get("desc", "")
    if not isinstance(desc, str):
        raise PoisonEntry("field desc is not text")
    if "spend" in e and not SPEND_STATE.match(str(e["spend"])):
        raise PoisonEntry("field spend is not 'from:spent'")
    ks = e.get("key_spend")
    if ks is not None and not (
        isinstance(ks, list)
        and len(ks) == 2
        and isinstance(ks[0], str)
        and SPEND_STATE.match(str(ks[1]))
    ):
        raise PoisonEntry("field key_spend is not [key id, 'from:spent']")
    meta = opt_text_field(e, "meta")
    hid = opt_text_field(e, "hold_id")
    bucket: NewBucket | None = None
    if ttype in BUCKET_TYPES and e.get("bucket") is not None:
        b = e["bucket"]
        if not isinstance(b, dict):
            raise PoisonEntry("bucket is malformed")
        bid = text_field(b, "id", 200)
        created = int_field(b, "created", 0, MAX_TIMESTAMP_MS) if "created" in b else ts
        expires = opt_int_field(b, "expires")
        bucket = NewBucket(
            id=bid,
            credits=int_field(b, "credits"),
            source=str(b.get("source", "")),
            priority=int_field(b, "priority") if "priority" in b else 0,
            created=created,
            expires=expires,
            fp=str(b.get("fp", "")),
        )
    details = {k: v for k, v in e.items() if k not in TXN_COLUMNS}
    idempotency_key = opt_text_field(e, "idempotency_key")
    source_txid = opt_text_field(e, "source_transaction_id")
    key_id = opt_text_field(e, "key_id")
    route = opt_text_field(e, "route")
    hold_expires: int | None = None
    hold_state: str | None = None
    if ttype == "hold" and hid:
        hold_expires = int_field(e, "expires", 0, MAX_TIMESTAMP_MS) if "expires" in e else ts
    elif ttype in ("settle", "release") and hid:
        state = e.get("state", ttype)
        if not isinstance(state, str):
            raise PoisonEntry("field state is not text")
        hold_state = state
    return TxnEntry(  # positional, in field order: cheaper than keywords, on every entry
        txid,
        account,
        seq,
        ttype,
        amount,
        balance,
        debt,
        ts,
        alloc,
        held,
        after,
        desc,
        meta,
        idempotency_key,
        hid,
        source_txid,
        key_id,
        route,
        bucket,
        hold_expires,
        hold_state,
        details,
    )


# -- the plan entry ----------------------------------------------------------------------

PLAN_ID = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """A plan defined, changed or deleted (kind ``plan``, sidecar/lua/plan.lua; shard 0's
    entry, one per change and plan)."""

    id: str  # the change's transaction id
    plan: str
    ts: int
    definition: dict[str, Any]  # after the change (deleted: the last), as plan.lua wrote it
    name: str
    default: bool
    deleted: bool


def plan(e: Mapping[str, Any]) -> PlanEntry:
    """A decoded ``plan`` entry as its model; PoisonEntry, naming the problem, if any field
    is missing, of the wrong type or out of range (the definition must read as a plan)."""
    plan_id = text_field(e, "plan", 64)
    if not PLAN_ID.match(plan_id):
        raise PoisonEntry(f"field plan is not a plan id: {plan_id[:40]!r}")
    txid = text_field(e, "id", 64)
    ts = int_field(e, "ts", 0, MAX_TIMESTAMP_MS)
    d = e.get("definition")
    if not isinstance(d, dict):
        raise PoisonEntry("field definition is not an object")
    try:
        p = Plan.from_json(d)
    except (KeyError, TypeError, ValueError, AttributeError) as x:
        raise PoisonEntry(f"definition is not a plan's: {type(x).__name__}: {x}") from None
    if not 1 <= len(p.name) <= 200:
        raise PoisonEntry("definition's name is not 1-200 characters")
    default, deleted = e.get("default"), e.get("deleted")
    if type(default) is not bool or type(deleted) is not bool:
        raise PoisonEntry("fields default and deleted must be true or false")
    return PlanEntry(txid, plan_id, ts, d, p.name, default, deleted)
