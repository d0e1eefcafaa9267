"""The response bodies of the reads and operations routes (sidecar/http/admin.py, ops.py,
audit.py): accounts, transactions, usage, holds, the outbox and its dead letters, the audit
trail. Conventions as in sidecar/http/responses.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from sidecar.http.responses import AnyObject, Model, Time
from sidecar.persistence.projection import TXN_TYPES

# -- reads -----------------------------------------------------------------------------------

TxnType = Annotated[str, Meta(extra_json_schema={"enum": sorted(TXN_TYPES)})]


class AccountSummary(Model):
    account: str
    balance: int
    debt: int
    created_at: Time | None
    seq: int


class AccountList(Model):
    accounts: list[AccountSummary]
    next: str | None


class Transaction(Model):
    id: str
    seq: int
    type: TxnType
    amount: int
    balance: int
    debt: int
    created_at: Time | None
    description: str
    idempotency_key: str | None
    hold_id: str | None
    source_transaction_id: str | None
    key_id: str | None
    route: str | None
    metadata: AnyObject | None


class TransactionList(Model):
    account: str
    transactions: list[Transaction]
    next: int | None


class UsageGroup(Model):
    key: Annotated[str | None, Meta(description="the key id or the route (null: none)")]
    credits: int
    checks: int


class UsagePoint(Model):
    start: Time
    credits: int
    checks: int
    groups: Annotated[list[UsageGroup], Meta(description="with `by`: the split")] | UnsetType = (
        UNSET
    )


class Usage(Model, kw_only=True):
    account: str
    interval: Literal["hour", "day"]
    by: Literal["key", "route"] | UnsetType = UNSET
    points: list[UsagePoint]


class HoldBucket(Model):
    bucket: str
    amount: int


class HoldRecord(Model):
    hold_id: str
    amount: int
    state: str
    created_at: Time | None
    expires_at: Time | None
    ttl_ms: int | None
    transaction_id: str | None
    balance_after: int | None
    charged: int | None
    forfeited: int | None
    close_transaction_id: str | None
    buckets: list[HoldBucket]


class HoldList(Model):
    account: str
    holds: list[HoldRecord]


# -- operations ------------------------------------------------------------------------------


class OutboxShard(Model):
    shard: int
    writer_lease: str | None
    length: int
    pending: int
    undelivered: int
    unwritten: int
    lag_s: float
    dead_letters: int
    writer_group: bool


class Outbox(Model):
    shards: list[OutboxShard]
    unwritten: int
    lag_s: float
    dead_letters: int
    writer: Annotated[
        dict[str, Any],
        Meta(
            description="this process's writer: `mode` (inline, process, off) and `running`: "
            "a writer holds every shard's lease, renewed within the lease period (and, in mode "
            "process, this process's writer is alive); false for a hung or stopped writer once "
            "its lease lapsed. Mode inline adds its counters; mode process pid, alive, "
            "restarts, hung_kills",
            extra_json_schema={"required": ["mode", "running"]},
        ),
    ]


class DeadLetter(Model):
    id: str
    entry: AnyObject | None
    fields: Annotated[dict[str, str], Meta(description="the raw stream fields, with dl_error")]


class DeadLetters(Model):
    shard: int
    entries: list[DeadLetter]


class DeadLettersRetried(Model):
    shard: int
    retried: list[str]


class AuditEntryView(Model):
    seq: int
    at: Time
    token_id: str
    token_name: str
    request_id: str
    action: str
    account: str | None
    target: str | None
    reason: str | None
    before: Any
    after: Any
    replayed: bool
    hash: str


class AuditList(Model):
    entries: Annotated[list[AuditEntryView], Meta(description="newest first")]
    next: Annotated[int | None, Meta(description="`before` of the next page, or null")]
