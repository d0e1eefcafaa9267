"""SQLAlchemy 2 models of the SQL ledger. Money columns are BigInteger credits, never floats.

Rows that mirror Redis state (accounts, buckets, holds, keys) carry a ``version``: the account
sequence number of the last transaction applied to them. The writer only moves a row forward
(``version < incoming seq``), so a replayed older outbox entry can never overwrite newer state,
including a correction an admin made in SQL (see README, "Correcting a balance").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def table_of(model: Any) -> Table:
    """A model's Core table, typed."""
    t: Table = model.__table__
    return t


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones: stored naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Credits = BigInteger
Id = String(128)

# Stable constraint names, so migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class CreditPackage(Base):
    """What customers can buy: credits for a Stripe price."""

    __tablename__ = "credit_packages"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    credits: Mapped[int] = mapped_column(Credits)
    stripe_price_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    price: Mapped[int] = mapped_column(BigInteger)  # minor units (cents)
    currency: Mapped[str] = mapped_column(String(3))
    credit_expiry_s: Mapped[int | None] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    created_at: Mapped[datetime | None]
    overdraft_limit: Mapped[int] = mapped_column(Credits, default=0)
    low_balance_threshold: Mapped[int | None] = mapped_column(Credits)
    rate_limit_requests: Mapped[int | None] = mapped_column(BigInteger)
    rate_limit_period_ms: Mapped[int | None] = mapped_column(BigInteger)
    rate_limit_burst: Mapped[int | None] = mapped_column(BigInteger)
    # The spending limit (sidecar/ledger/results.py SpendLimit): credits per window of
    # interval_count intervals (day, week, month, year; NULL with credits set: lifetime).
    spend_limit_credits: Mapped[int | None] = mapped_column(Credits)
    spend_limit_interval: Mapped[str | None] = mapped_column(String(8))
    spend_limit_interval_count: Mapped[int | None] = mapped_column(Integer)
    # What was spent in its window ("from ms:spent", sidecar/lua/_lib.lua ss) and the
    # outbox entry id that last set it (a transaction, or a settings change that reset it).
    spend_state: Mapped[str | None] = mapped_column(String(40))
    spend_version: Mapped[str] = mapped_column(String(32), default="", server_default="")
    # Its plan (docs/plans.md), the anchor its periods count from, and since when it is on it
    # (its allowance buckets created since are the plan's: rollover cuts apply to them).
    plan: Mapped[str | None] = mapped_column(String(64))
    plan_anchor_ms: Mapped[int | None] = mapped_column(BigInteger)
    plan_since_ms: Mapped[int | None] = mapped_column(BigInteger)
    # its next renewal (pn), carried by its transactions and settings changes, and the outbox
    # entry id that last set it
    plan_next_ms: Mapped[int | None] = mapped_column(BigInteger)
    plan_version: Mapped[str] = mapped_column(String(32), default="", server_default="")
    stripe_customer_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    billing_email: Mapped[str | None] = mapped_column(String(320))  # receipts (Stripe customer)
    # Settings version: the outbox entry id ("%015d-%010d") of the last settings change applied.
    settings_version: Mapped[str] = mapped_column(String(32), default="")
    # Its time (the account's clock when the settings were written; `rebuild` restores the
    # clock from this and clock_ms).
    settings_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    balance: Mapped[int] = mapped_column(Credits, default=0)  # after the last transaction
    debt: Mapped[int] = mapped_column(Credits, default=0)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)  # of the last transaction applied
    clock_ms: Mapped[int] = mapped_column(BigInteger, default=0)  # its time


class Plan(Base):
    """A plan (docs/plans.md): its definition as the API took it, mirrored from the outbox's
    kind=plan entries; a deleted plan keeps its row (``deleted``) for the accounts' history."""

    __tablename__ = "plans"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # the outbox entry id ("%015d-%010d") of the last change applied: changes move forward only
    version: Mapped[str] = mapped_column(String(32))
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class ApiToken(Base):
    """One of the sidecar's own API tokens (docs/tokens.md), mirrored from the outbox's
    kind=token entries: its SHA-256 and the ones it replaced, never a token. ``rebuild`` puts
    the record back in Redis as token.lua wrote it (sidecar/persistence/rebuild_tokens.py)."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[str] = mapped_column(Text)  # JSON array, in the record's order
    account_prefix: Mapped[str | None] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64))
    # the replaced hashes still valid in their grace: JSON [{"hash", "expires"}], the record's
    previous: Mapped[str] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    rotated_ms: Mapped[int | None] = mapped_column(BigInteger)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger)
    # the outbox entry id ("%015d-%010d") of the last change applied: changes move forward only
    version: Mapped[str] = mapped_column(String(32))


class AuditLogEntry(Base):
    """One change made through the admin API (docs/audit.md), appended by the writer from the
    outbox's kind=audit entries in their order, never updated: each row keeps the hash of the
    one before it (sidecar/ledger/audit.py), so an edited or deleted row is found."""

    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry_id: Mapped[str] = mapped_column(String(40), unique=True)  # the kind=audit entry's id
    at_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    token_id: Mapped[str] = mapped_column(String(64), index=True)
    token_name: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    account: Mapped[str | None] = mapped_column(String(128), index=True)
    target: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    before: Mapped[str] = mapped_column(Text)  # JSON (null when there was nothing)
    after: Mapped[str] = mapped_column(Text)  # JSON, secrets masked
    replayed: Mapped[bool] = mapped_column(Boolean)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class ApiKey(Base):
    """An API key's record: its SHA-256 only, never the key."""

    __tablename__ = "api_keys"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(Id, ForeignKey("accounts.id"), index=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    rate_limit_requests: Mapped[int | None] = mapped_column(BigInteger)
    rate_limit_period_ms: Mapped[int | None] = mapped_column(BigInteger)
    rate_limit_burst: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # Its spending limit (as accounts' spend_limit_*) and what it spent in the limit's window.
    spend_limit_credits: Mapped[int | None] = mapped_column(Credits)
    spend_limit_interval: Mapped[str | None] = mapped_column(String(8))
    spend_limit_interval_count: Mapped[int | None] = mapped_column(Integer)
    spend_state: Mapped[str | None] = mapped_column(String(40))
    spend_version: Mapped[str] = mapped_column(String(32), default="", server_default="")
    # The outbox entry id of the last key entry applied (its limit changes by later ones).
    settings_version: Mapped[str] = mapped_column(String(32), default="", server_default="")


class CreditBalance(Base):
    """A bucket: one purchase, grant or refund, drawn from in burn order."""

    __tablename__ = "credit_balances"
    account: Mapped[str] = mapped_column(Id, ForeignKey("accounts.id"), primary_key=True)
    bucket_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    # Static: from the transaction that created the bucket (null until it is applied).
    credits: Mapped[int | None] = mapped_column(Credits)
    source: Mapped[str | None] = mapped_column(String(32))
    priority: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime | None]
    created_ms: Mapped[int | None] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None]
    metadata_: Mapped[str | None] = mapped_column("metadata", Text)  # JSON text, as given
    fingerprint: Mapped[str | None] = mapped_column(Text)  # grant replay check
    transaction_id: Mapped[str | None] = mapped_column(String(64))
    balance_after: Mapped[int | None] = mapped_column(Credits)
    # Current: kept up to date by every transaction that touches the bucket.
    remaining: Mapped[int] = mapped_column(Credits, default=0)
    held: Mapped[int] = mapped_column(Credits, default=0)
    expired: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_credit_balances_live", "account", "expired"),)


class CreditTransaction(Base):
    """One ledger transaction; the sum of an account's amounts is its balance."""

    __tablename__ = "credit_transactions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(Id, ForeignKey("accounts.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Credits)
    balance_after: Mapped[int] = mapped_column(Credits)
    debt_after: Mapped[int] = mapped_column(Credits)
    description: Mapped[str] = mapped_column(Text, default="")
    metadata_: Mapped[str | None] = mapped_column("metadata", Text)  # JSON text, as given
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    hold_id: Mapped[str | None] = mapped_column(String(128))
    source_transaction_id: Mapped[str | None] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(64))
    route: Mapped[str | None] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    details: Mapped[dict[str, Any]]  # the entry's other fields (repaid, overdraft, ...)

    __table_args__ = (
        UniqueConstraint("account", "seq", name="uq_credit_transactions_account_seq"),
        Index("ix_credit_transactions_account_time", "account", "created_at"),
        Index("ix_credit_transactions_account_type_time", "account", "type", "created_at"),
        Index("ix_credit_transactions_source", "source_transaction_id"),
    )


class CreditAllocation(Base):
    """How a transaction moved one bucket: remaining and held deltas.

    No foreign key to the transaction: the writer inserts both in one SQL transaction from
    one outbox entry, and checking the key cost a sixth of its throughput on PostgreSQL."""

    __tablename__ = "credit_allocations"
    transaction_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    account: Mapped[str] = mapped_column(Id)
    remaining_delta: Mapped[int] = mapped_column(Credits, default=0)
    held_delta: Mapped[int] = mapped_column(Credits, default=0)

    __table_args__ = (Index("ix_credit_allocations_bucket", "account", "bucket_id"),)


class CreditHold(Base):
    """A reservation: active until settled, released or lapsed."""

    __tablename__ = "credit_holds"
    account: Mapped[str] = mapped_column(Id, ForeignKey("accounts.id"), primary_key=True)
    hold_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    amount: Mapped[int | None] = mapped_column(Credits)
    ttl_ms: Mapped[int | None] = mapped_column(BigInteger)
    alloc: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {"parts": [[bucket, n], ...]}
    created_ms: Mapped[int | None] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger)
    transaction_id: Mapped[str | None] = mapped_column(String(64))
    balance_after: Mapped[int | None] = mapped_column(Credits)
    state: Mapped[str] = mapped_column(String(16), default="active")
    charged: Mapped[int | None] = mapped_column(Credits)
    forfeited: Mapped[int | None] = mapped_column(Credits)
    # a settle above the hold: what it asked for that nothing covered (not charged)
    uncovered: Mapped[int | None] = mapped_column(Credits)
    close_transaction_id: Mapped[str | None] = mapped_column(String(64))
    close_balance: Mapped[int | None] = mapped_column(Credits)
    closed_ms: Mapped[int | None] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class StripeEvent(Base):
    """A verified Stripe webhook event, stored before it is acknowledged; the billing worker
    processes it (idempotent by event id) and records the outcome.

    status: received (to do), retry (failed, due again at next_attempt_ms), processed,
    ignored (a type we do not act on), dead (failed event_max_attempts times)."""

    __tablename__ = "stripe_events"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(32), default="received")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    outcome: Mapped[str | None] = mapped_column(Text)  # what processing did, for operators

    __table_args__ = (
        Index("ix_stripe_events_due", "status", "next_attempt_ms"),
        Index("ix_stripe_events_type_received", "type", "received_at"),  # pruning
    )


class StripePurchase(Base):
    """A Checkout Session or an auto top-up PaymentIntent, and what it granted or took back.

    Credits are granted once per line item (bucket ``purchase:<session>:<item>``); refunds and
    disputes take back a share of ``credits``, tracked as a cumulative target in the ledger
    (``revoke.lua``), so duplicates and reordering are harmless."""

    __tablename__ = "stripe_purchases"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # cs_... or pi_...
    kind: Mapped[str] = mapped_column(String(16))  # checkout | auto_topup
    account: Mapped[str] = mapped_column(Id, index=True)
    payment_intent: Mapped[str | None] = mapped_column(String(255), unique=True)
    # pending (a Checkout Session made, or a charge started) | awaiting_payment | paid | failed
    # | expired (a Checkout Session that expired unpaid)
    status: Mapped[str] = mapped_column(String(32))
    amount_total: Mapped[int | None] = mapped_column(BigInteger)  # minor units
    currency: Mapped[str | None] = mapped_column(String(3))
    credits: Mapped[int] = mapped_column(Credits, default=0)  # granted in total
    buckets: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {"ids": [...]}
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)  # last seen, cumulative
    amount_disputed: Mapped[int] = mapped_column(BigInteger, default=0)
    clawback_target: Mapped[int] = mapped_column(Credits, default=0)  # credits to take back
    flagged: Mapped[str | None] = mapped_column(Text)  # refund_policy=flag: what happened
    # The purchase's Charge (the clawback's ratio is of its amount, in its currency).
    charge_id: Mapped[str | None] = mapped_column(String(255))
    charge_amount: Mapped[int | None] = mapped_column(BigInteger)  # minor units
    charge_currency: Mapped[str | None] = mapped_column(String(3))
    # Its refunds and disputes as seen so far ({"refunds": {id: ...}, "disputes": {id: ...}},
    # merged so that no older view undoes a newer one), and the version of that view (grows
    # with each change; revoke.lua ignores a call from an older one).
    clawback_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    clawback_version: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AutoTopUp(Base):
    """An account's auto top-up: when its balance falls below ``threshold``, one off-session
    PaymentIntent for ``package_id`` with the saved ``payment_method``."""

    __tablename__ = "auto_topups"
    account: Mapped[str] = mapped_column(Id, primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    threshold: Mapped[int] = mapped_column(Credits)
    package_id: Mapped[str] = mapped_column(Id)
    payment_method: Mapped[str] = mapped_column(String(255))
    pending_payment_intent: Mapped[str | None] = mapped_column(String(255))
    last_attempt_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # charges started, ever
    failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    # A charge that needs the customer (authentication): the link sent to the business, and
    # the PaymentIntent it replaces; no off-session charge is tried until it is cleared.
    action_url: Mapped[str | None] = mapped_column(Text)
    action_payment_intent: Mapped[str | None] = mapped_column(String(255))
    # The charge slot's idempotency key generation: a new key after Stripe answered an error
    # (Stripe keeps that answer under the key for 24 hours).
    key_attempt: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]


class NotificationEndpoint(Base):
    """Where an account's low-balance webhooks go, and the secret that signs them."""

    __tablename__ = "notification_endpoints"
    account: Mapped[str] = mapped_column(Id, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))  # shared with the customer to verify
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]


class NotificationDelivery(Base):
    """One signed webhook to send, retried with backoff until delivered or given up."""

    __tablename__ = "notification_deliveries"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the event's id
    account: Mapped[str] = mapped_column(Id, index=True)
    url: Mapped[str] = mapped_column(String(2048))
    # The URL's host: deliveries in flight are limited per host.
    host: Mapped[str] = mapped_column(String(255), default="", server_default="")
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_notification_deliveries_due", "status", "next_attempt_ms"),
        Index("ix_notification_deliveries_finished", "status", "created_at"),  # pruning
    )


def _archive_of(source: type[Base], name: str, *extra: Index) -> Table:
    """A table with ``source``'s columns (no foreign keys, no other indexes): where
    `credit-sidecar archive` moves old rows."""
    columns = [
        Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in table_of(source).columns
    ]
    return Table(name, Base.metadata, *columns, *extra)


ARCHIVED_TRANSACTIONS = _archive_of(
    CreditTransaction,
    "credit_transactions_archive",
    Index("ix_credit_transactions_archive_account_seq", "account", "seq"),
)
ARCHIVED_ALLOCATIONS = _archive_of(CreditAllocation, "credit_allocations_archive")


class ArchiveTotal(Base):
    """Per account, what was moved to the archive tables: the live transactions' amounts plus
    ``amount`` is still the balance."""

    __tablename__ = "credit_archive_totals"
    account: Mapped[str] = mapped_column(Id, primary_key=True)
    transactions: Mapped[int] = mapped_column(BigInteger, default=0)
    amount: Mapped[int] = mapped_column(Credits, default=0)
    through_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # the newest one archived
    updated_at: Mapped[datetime]
