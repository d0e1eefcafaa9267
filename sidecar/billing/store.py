"""The billing tables in SQL: credit packages, Stripe customers, stored webhook events,
purchases, auto top-ups and notification endpoints/deliveries. Every write that can race is
one conditional statement (an upsert, or an UPDATE … WHERE that states what must still hold),
so several workers and sidecars can share the tables."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, Table, and_, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sidecar.billing import currency
from sidecar.errors import LedgerUnavailable
from sidecar.persistence.db import sqlstate, unavailable
from sidecar.persistence.models import (
    Account,
    AutoTopUp,
    CreditPackage,
    NotificationDelivery,
    NotificationEndpoint,
    StripeEvent,
    StripePurchase,
    table_of,
)
from sidecar.units import from_ms

PACKAGES = table_of(CreditPackage)
ACCOUNTS = table_of(Account)
EVENTS = table_of(StripeEvent)
PURCHASES = table_of(StripePurchase)
TOPUPS = table_of(AutoTopUp)
ENDPOINTS = table_of(NotificationEndpoint)
DELIVERIES = table_of(NotificationDelivery)

CLAIMABLE = ("received", "retry", "processing")


def _reason(e: BaseException) -> str:
    """What to tell the caller: the error's kind and SQLSTATE, never its message (which can
    name the database or its user)."""
    state = sqlstate(e)
    return type(e).__name__ + (f" (SQLSTATE {state})" if state else "")


@dataclass(frozen=True, slots=True)
class Package:
    id: str
    name: str
    credits: int
    stripe_price_id: str | None
    price: int
    currency: str
    credit_expiry_s: int | None
    active: bool

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "credits": self.credits,
            "stripe_price_id": self.stripe_price_id,
            "price": self.price,
            "currency": self.currency,
            "credit_expiry_s": self.credit_expiry_s,
            "active": self.active,
        }

    def public(self) -> dict[str, Any]:
        """What the API shows: the stored fields and the price as a person reads it."""
        return self.view() | {"price_display": currency.display(self.price, self.currency)}


def _package(row: Any) -> Package:
    return Package(
        row.id,
        row.name,
        int(row.credits),
        row.stripe_price_id,
        int(row.price),
        row.currency,
        None if row.credit_expiry_s is None else int(row.credit_expiry_s),
        bool(row.active),
    )


def insert_for(conn: AsyncConnection, table: Table) -> Any:
    """The dialect's INSERT (with on_conflict_do_nothing/do_update)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class BillingStore:
    """SQL access for billing; every method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncConnection]:
        """One transaction. Every failure to reach SQL becomes ``LedgerUnavailable`` (503)
        here, for every route and worker: whatever opening a connection raises (refused,
        database gone or not accepting connections, authentication, pool exhausted, each
        driver with its own exception classes), and what a statement raises when the server
        goes away or is overloaded mid-transaction (``db.unavailable``)."""
        conn = self.engine.connect()
        try:
            await conn.start()
        except Exception as e:
            raise LedgerUnavailable(f"the SQL ledger is unavailable: {_reason(e)}") from e
        try:
            try:
                async with conn.begin():
                    yield conn
            finally:
                await conn.close()
        except Exception as e:
            if unavailable(e):
                raise LedgerUnavailable(f"the SQL ledger is unavailable: {_reason(e)}") from e
            raise

    # -- packages -------------------------------------------------------------------------

    async def put_package(self, p: Package, now_ms: int) -> bool:
        """Creates or replaces a package; True if it was created."""
        values = p.view() | {"created_at": from_ms(now_ms)}
        async with self.tx() as conn:
            existed = (
                await conn.execute(select(PACKAGES.c.id).where(PACKAGES.c.id == p.id))
            ).first() is not None
            stmt = insert_for(conn, PACKAGES).values(values)
            changed = {k: v for k, v in values.items() if k not in ("id", "created_at")}
            await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=changed))
        return not existed

    async def package(self, package_id: str) -> Package | None:
        async with self.tx() as conn:
            row = (await conn.execute(select(PACKAGES).where(PACKAGES.c.id == package_id))).first()
        return None if row is None else _package(row)

    async def packages(self, *, active_only: bool = False) -> list[Package]:
        q = select(PACKAGES).order_by(PACKAGES.c.id)
        if active_only:
            q = q.where(PACKAGES.c.active.is_(True))
        async with self.tx() as conn:
            return [_package(r) for r in await conn.execute(q)]

    async def package_by_price(self, price_id: str) -> Package | None:
        async with self.tx() as conn:
            row = (
                await conn.execute(select(PACKAGES).where(PACKAGES.c.stripe_price_id == price_id))
            ).first()
        return None if row is None else _package(row)

    # -- customers ------------------------------------------------------------------------

    async def customer(self, account: str) -> str | None:
        async with self.tx() as conn:
            v = (
                await conn.execute(
                    select(ACCOUNTS.c.stripe_customer_id).where(ACCOUNTS.c.id == account)
                )
            ).scalar()
        return None if v is None else str(v)

    async def billing_email(self, account: str) -> str | None:
        async with self.tx() as conn:
            v = (
                await conn.execute(select(ACCOUNTS.c.billing_email).where(ACCOUNTS.c.id == account))
            ).scalar()
        return None if v is None else str(v)

    async def set_billing_email(self, account: str, email: str | None) -> None:
        async with self.tx() as conn:
            stmt: Insert = insert_for(conn, ACCOUNTS).values(id=account, billing_email=email)
            await conn.execute(
                stmt.on_conflict_do_update(  # type: ignore[attr-defined]
                    index_elements=["id"], set_={"billing_email": email}
                )
            )

    async def claim_billing_email(self, account: str, email: str) -> str:
        """Sets the billing email only if the account has none; returns the one kept."""
        async with self.tx() as conn:
            stmt: Insert = insert_for(conn, ACCOUNTS).values(id=account, billing_email=email)
            keep = func.coalesce(ACCOUNTS.c.billing_email, stmt.excluded.billing_email)  # type: ignore[attr-defined]
            await conn.execute(
                stmt.on_conflict_do_update(  # type: ignore[attr-defined]
                    index_elements=["id"], set_={"billing_email": keep}
                )
            )
            v = (
                await conn.execute(select(ACCOUNTS.c.billing_email).where(ACCOUNTS.c.id == account))
            ).scalar()
        return str(v)

    async def set_customer(self, account: str, customer: str) -> str:
        """Records the account's Stripe customer unless it has one; returns the one kept."""
        async with self.tx() as conn:
            stmt: Insert = insert_for(conn, ACCOUNTS).values(
                id=account, stripe_customer_id=customer
            )
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))  # type: ignore[attr-defined]
            await conn.execute(
                update(ACCOUNTS)
                .where(ACCOUNTS.c.id == account, ACCOUNTS.c.stripe_customer_id.is_(None))
                .values(stripe_customer_id=customer)
            )
            kept = (
                await conn.execute(
                    select(ACCOUNTS.c.stripe_customer_id).where(ACCOUNTS.c.id == account)
                )
            ).scalar()
        return str(kept)

    # -- Stripe events --------------------------------------------------------------------

    async def store_event(
        self, event_id: str, etype: str, payload: dict[str, Any], now_ms: int
    ) -> bool:
        """Stores a verified event once; False if it was already stored (a redelivery)."""
        async with self.tx() as conn:
            stmt = insert_for(conn, EVENTS).values(
                id=event_id,
                type=etype,
                payload=payload,
                received_at=from_ms(now_ms),
                status="received",
                attempts=0,
                next_attempt_ms=0,
            )
            result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
        return bool(result.rowcount)

    async def due_events(self, now_ms: int, limit: int = 50) -> list[str]:
        q = (
            select(EVENTS.c.id)
            .where(EVENTS.c.status.in_(CLAIMABLE), EVENTS.c.next_attempt_ms <= now_ms)
            .order_by(EVENTS.c.next_attempt_ms, EVENTS.c.received_at)
            .limit(limit)
        )
        async with self.tx() as conn:
            return [r[0] for r in await conn.execute(q)]

    async def claim_event(
        self, event_id: str, now_ms: int, lease_ms: int
    ) -> tuple[str, dict[str, Any], int] | None:
        """Takes an event for processing (type, payload, attempt number), unless another
        worker holds it or it is done. A worker that dies loses it when the lease ends."""
        async with self.tx() as conn:
            result = await conn.execute(
                update(EVENTS)
                .where(
                    EVENTS.c.id == event_id,
                    EVENTS.c.status.in_(CLAIMABLE),
                    EVENTS.c.next_attempt_ms <= now_ms,
                )
                .values(
                    status="processing",
                    next_attempt_ms=now_ms + lease_ms,
                    attempts=EVENTS.c.attempts + 1,
                )
            )
            if not result.rowcount:
                return None
            row = (
                await conn.execute(
                    select(EVENTS.c.type, EVENTS.c.payload, EVENTS.c.attempts).where(
                        EVENTS.c.id == event_id
                    )
                )
            ).one()
        return str(row.type), dict(row.payload), int(row.attempts)

    async def finish_event(
        self,
        event_id: str,
        status: str,
        now_ms: int,
        *,
        attempt: int,
        outcome: str | None = None,
        error: str | None = None,
        next_attempt_ms: int = 0,
    ) -> bool:
        """Records the outcome of attempt ``attempt``; False (nothing written) if the event
        was taken over by another worker since (its lease ran out)."""
        values: dict[str, Any] = {"status": status, "outcome": outcome, "error": error}
        values["next_attempt_ms"] = next_attempt_ms
        if status in ("processed", "ignored"):
            values["processed_at"] = from_ms(now_ms)
        async with self.tx() as conn:
            result = await conn.execute(
                update(EVENTS)
                .where(
                    EVENTS.c.id == event_id,
                    EVENTS.c.status == "processing",
                    EVENTS.c.attempts == attempt,
                )
                .values(values)
            )
        return bool(result.rowcount)

    async def events(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        q = select(EVENTS).order_by(EVENTS.c.received_at.desc()).limit(limit)
        if status:
            q = q.where(EVENTS.c.status == status)
        async with self.tx() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [
            {
                "id": r["id"],
                "type": r["type"],
                "status": r["status"],
                "attempts": r["attempts"],
                "outcome": r["outcome"],
                "error": r["error"],
                "received_at": r["received_at"].isoformat(),
            }
            for r in rows
        ]

    async def retry_event(self, event_id: str) -> bool:
        """Puts a dead (or failed) event back in line; False if there is no such event."""
        async with self.tx() as conn:
            result = await conn.execute(
                update(EVENTS)
                .where(EVENTS.c.id == event_id, EVENTS.c.status.in_(("dead", "retry")))
                .values(status="received", next_attempt_ms=0, attempts=0, error=None)
            )
        return bool(result.rowcount)

    async def counts(self) -> dict[str, dict[str, int]]:
        """Stripe events and notification deliveries by status (what an operator watches:
        ``dead`` ones need a look)."""
        out: dict[str, dict[str, int]] = {}
        async with self.tx() as conn:
            for name, table in (("events", EVENTS), ("deliveries", DELIVERIES)):
                rows = await conn.execute(
                    select(table.c.status, func.count()).group_by(table.c.status)
                )
                out[name] = {str(status): int(n) for status, n in rows}
        return out

    async def dead_letters(self) -> dict[str, int]:
        """How many Stripe events (``stripe_event``) and notification deliveries
        (``notification``) were given up (status ``dead``): what the metrics export."""
        out: dict[str, int] = {}
        async with self.tx() as conn:
            for kind, table in (("stripe_event", EVENTS), ("notification", DELIVERIES)):
                query = select(func.count()).select_from(table).where(table.c.status == "dead")
                out[kind] = int((await conn.execute(query)).scalar() or 0)
        return out

    async def count_events(self, status: str) -> int:
        async with self.tx() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count()).select_from(EVENTS).where(EVENTS.c.status == status)
                    )
                ).scalar()
                or 0
            )

    # -- purchases ------------------------------------------------------------------------

    async def purchase(self, purchase_id: str) -> dict[str, Any] | None:
        async with self.tx() as conn:
            row = (
                (await conn.execute(select(PURCHASES).where(PURCHASES.c.id == purchase_id)))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    async def purchase_by_payment_intent(self, pi: str) -> dict[str, Any] | None:
        async with self.tx() as conn:
            row = (
                (await conn.execute(select(PURCHASES).where(PURCHASES.c.payment_intent == pi)))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    async def record_purchase(self, values: dict[str, Any], now_ms: int) -> None:
        """Creates the purchase, or updates the given columns of it."""
        row = values | {"updated_at": from_ms(now_ms)}
        async with self.tx() as conn:
            stmt = insert_for(conn, PURCHASES).values(row | {"created_at": from_ms(now_ms)})
            changed = {k: v for k, v in row.items() if k not in ("id", "kind", "account")}
            if "status" in changed:
                # paid is final, failed only gives way to paid: events arrive in any order.
                new = stmt.excluded.status
                changed["status"] = case(
                    (PURCHASES.c.status == "paid", "paid"),
                    (and_(PURCHASES.c.status == "failed", new != "paid"), "failed"),
                    else_=new,
                )
            await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=changed))

    async def update_purchase(self, purchase_id: str, now_ms: int, **values: Any) -> None:
        async with self.tx() as conn:
            await conn.execute(
                update(PURCHASES)
                .where(PURCHASES.c.id == purchase_id)
                .values(values | {"updated_at": from_ms(now_ms)})
            )

    async def merge_clawback(
        self,
        purchase_id: str,
        merge: Callable[[dict[str, Any]], dict[str, Any] | None],
        now_ms: int,
    ) -> dict[str, Any] | None:
        """Applies ``merge`` to the purchase (it returns the columns to change, or None when
        nothing changes) and bumps ``clawback_version`` with the change, as one compare-and-set
        on the version, retried when another worker changed it first: every stored state is
        derived from the one before it. Returns the purchase after it (None if there is none).
        """
        for _ in range(50):
            async with self.tx() as conn:
                row = (
                    (await conn.execute(select(PURCHASES).where(PURCHASES.c.id == purchase_id)))
                    .mappings()
                    .first()
                )
                if row is None:
                    return None
                current = dict(row)
                changes = merge(current)
                if changes is None:
                    return current
                version = int(current["clawback_version"])
                result = await conn.execute(
                    update(PURCHASES)
                    .where(PURCHASES.c.id == purchase_id, PURCHASES.c.clawback_version == version)
                    .values(
                        changes | {"clawback_version": version + 1, "updated_at": from_ms(now_ms)}
                    )
                )
                if result.rowcount:
                    return current | changes | {"clawback_version": version + 1}
        raise LedgerUnavailable(f"purchase {purchase_id} keeps changing: try again")

    # -- auto top-up ----------------------------------------------------------------------

    async def put_topup(
        self,
        account: str,
        *,
        threshold: int,
        package_id: str,
        payment_method: str,
        enabled: bool,
        now_ms: int,
    ) -> None:
        values = {
            "account": account,
            "threshold": threshold,
            "package_id": package_id,
            "payment_method": payment_method,
            "enabled": enabled,
            "updated_at": from_ms(now_ms),
        }
        async with self.tx() as conn:
            stmt = insert_for(conn, TOPUPS).values(
                values | {"last_attempt_ms": 0, "attempts": 0, "failures": 0, "paused": False}
            )
            # A new configuration (say, a new card) also lifts a pause after failures, ends a
            # wait for the customer and frees a charge slot left stuck (a PaymentIntent that
            # still succeeds grants its credits through its webhook).
            changed = {k: v for k, v in values.items() if k != "account"}
            changed |= {
                "paused": False,
                "failures": 0,
                "last_error": None,
                "pending_payment_intent": None,
                "action_url": None,
                "action_payment_intent": None,
                "key_attempt": 0,
            }
            await conn.execute(stmt.on_conflict_do_update(index_elements=["account"], set_=changed))

    async def topup(self, account: str) -> dict[str, Any] | None:
        async with self.tx() as conn:
            row = (
                (await conn.execute(select(TOPUPS).where(TOPUPS.c.account == account)))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    async def delete_topup(self, account: str) -> bool:
        async with self.tx() as conn:
            result = await conn.execute(delete(TOPUPS).where(TOPUPS.c.account == account))
        return bool(result.rowcount)

    async def claim_topup(
        self, account: str, now_ms: int, cooldown_ms: int, stale_ms: int
    ) -> dict[str, Any] | None:
        """Takes the account's charge slot: a new one (enabled, not paused, nothing pending,
        cooldown passed) gets a fresh idempotency key; a slot left ``starting`` for
        ``stale_ms`` (its worker died, or Stripe was unreachable) is taken over with its key,
        so a charge Stripe did make is replayed, not made twice. One statement: concurrent
        triggers take the slot once."""
        token = "starting:" + uuid.uuid4().hex
        pending = TOPUPS.c.pending_payment_intent
        async with self.tx() as conn:
            result = await conn.execute(
                update(TOPUPS)
                .where(
                    TOPUPS.c.account == account,
                    TOPUPS.c.enabled.is_(True),
                    TOPUPS.c.paused.is_(False),
                    TOPUPS.c.action_url.is_(None),
                    or_(
                        and_(
                            pending.is_(None),
                            or_(
                                TOPUPS.c.last_attempt_ms == 0,
                                TOPUPS.c.last_attempt_ms <= now_ms - cooldown_ms,
                            ),
                        ),
                        and_(
                            pending.like("starting:%"),
                            TOPUPS.c.last_attempt_ms <= now_ms - stale_ms,
                        ),
                    ),
                )
                .values(
                    pending_payment_intent=case((pending.is_(None), token), else_=pending),
                    key_attempt=case((pending.is_(None), 0), else_=TOPUPS.c.key_attempt),
                    last_attempt_ms=now_ms,
                    attempts=TOPUPS.c.attempts + 1,
                )
            )
            if not result.rowcount:
                return None
            row = (
                (await conn.execute(select(TOPUPS).where(TOPUPS.c.account == account)))
                .mappings()
                .one()
            )
        return dict(row)

    async def topup_release(self, account: str, slot: str, *, new_key: bool) -> None:
        """Stripe's answer was lost or an error: the slot stays ``starting``, due for a
        takeover at once (by the retry of the same trigger), with its idempotency key, or,
        after an error Stripe keeps under that key (``new_key``), the next one."""
        async with self.tx() as conn:
            await conn.execute(
                update(TOPUPS)
                .where(TOPUPS.c.account == account, TOPUPS.c.pending_payment_intent == slot)
                .values(
                    last_attempt_ms=0,
                    key_attempt=TOPUPS.c.key_attempt + (1 if new_key else 0),
                )
            )

    async def topup_needs_customer(
        self, account: str, pending: str, pi: str, url: str | None, error: str, now_ms: int
    ) -> bool:
        """The charge ``pending`` needs the customer (authentication): the slot is cleared
        without counting a failure, and no off-session charge is tried while the link waits.
        False if the slot had moved on."""
        async with self.tx() as conn:
            result = await conn.execute(
                update(TOPUPS)
                .where(TOPUPS.c.account == account, TOPUPS.c.pending_payment_intent == pending)
                .values(
                    pending_payment_intent=None,
                    action_url=url or "",
                    action_payment_intent=pi,
                    last_error=error,
                    updated_at=from_ms(now_ms),
                )
            )
        return bool(result.rowcount)

    async def topup_customer_acted(
        self, account: str, payment_method: str | None, now_ms: int
    ) -> bool:
        """The customer paid the link (or saved a card): auto top-up charges again, with the
        card they used if it was saved. False if there was no wait."""
        values: dict[str, Any] = {
            "action_url": None,
            "action_payment_intent": None,
            "failures": 0,
            "last_error": None,
            "paused": False,
            "updated_at": from_ms(now_ms),
        }
        if payment_method:
            values["payment_method"] = payment_method
        async with self.tx() as conn:
            result = await conn.execute(
                update(TOPUPS).where(TOPUPS.c.account == account).values(values)
            )
        return bool(result.rowcount)

    async def stuck_topups(self, before_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        """(account, PaymentIntent) of charges pending since before ``before_ms``."""
        q = (
            select(TOPUPS.c.account, TOPUPS.c.pending_payment_intent)
            .where(
                TOPUPS.c.pending_payment_intent.is_not(None),
                TOPUPS.c.pending_payment_intent.not_like("starting:%"),
                TOPUPS.c.last_attempt_ms <= before_ms,
            )
            .limit(limit)
        )
        async with self.tx() as conn:
            return [(str(a), str(p)) for a, p in await conn.execute(q)]

    async def topup_pending(self, account: str, slot: str, pi: str) -> None:
        async with self.tx() as conn:
            await conn.execute(
                update(TOPUPS)
                .where(TOPUPS.c.account == account, TOPUPS.c.pending_payment_intent == slot)
                .values(pending_payment_intent=pi)
            )

    async def topup_done(
        self,
        account: str,
        pending: str,
        *,
        ok: bool,
        error: str | None,
        max_failures: int,
        now_ms: int,
        count: bool = True,
    ) -> tuple[bool, bool]:
        """Clears the charge slot if it still holds ``pending`` (the charge's PaymentIntent,
        or the ``starting:`` slot when none was made), counting a failure (unless not
        ``count``); an outcome of an older charge, or one seen before (the reply and the
        webhook), leaves the slot alone. Returns (whether this call cleared it, whether the
        auto top-up is now paused)."""
        async with self.tx() as conn:
            where = (TOPUPS.c.account == account, TOPUPS.c.pending_payment_intent == pending)
            if ok:
                result = await conn.execute(
                    update(TOPUPS)
                    .where(*where)
                    .values(
                        pending_payment_intent=None,
                        failures=0,
                        last_error=None,
                        updated_at=from_ms(now_ms),
                    )
                )
                return bool(result.rowcount), False
            result = await conn.execute(
                update(TOPUPS)
                .where(*where)
                .values(
                    pending_payment_intent=None,
                    failures=TOPUPS.c.failures + (1 if count else 0),
                    last_error=error,
                    updated_at=from_ms(now_ms),
                )
            )
            if not result.rowcount:
                return False, False
            paused = await conn.execute(
                update(TOPUPS)
                .where(TOPUPS.c.account == account, TOPUPS.c.failures >= max_failures)
                .values(paused=True)
            )
        return True, bool(paused.rowcount)

    # -- notifications --------------------------------------------------------------------

    async def put_endpoint(self, account: str, url: str, secret: str, now_ms: int) -> None:
        values = {"account": account, "url": url, "secret": secret, "enabled": True}
        async with self.tx() as conn:
            stmt = insert_for(conn, ENDPOINTS).values(values | {"created_at": from_ms(now_ms)})
            changed = {k: v for k, v in values.items() if k != "account"}
            await conn.execute(stmt.on_conflict_do_update(index_elements=["account"], set_=changed))

    async def endpoint(self, account: str) -> dict[str, Any] | None:
        async with self.tx() as conn:
            row = (
                (await conn.execute(select(ENDPOINTS).where(ENDPOINTS.c.account == account)))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    async def delete_endpoint(self, account: str) -> bool:
        async with self.tx() as conn:
            result = await conn.execute(delete(ENDPOINTS).where(ENDPOINTS.c.account == account))
        return bool(result.rowcount)

    async def enqueue_delivery(
        self,
        delivery_id: str,
        account: str,
        url: str,
        host: str,
        payload: dict[str, Any],
        now_ms: int,
    ) -> bool:
        async with self.tx() as conn:
            stmt = insert_for(conn, DELIVERIES).values(
                id=delivery_id,
                account=account,
                url=url,
                host=host,
                payload=payload,
                status="pending",
                attempts=0,
                next_attempt_ms=0,
                created_at=from_ms(now_ms),
            )
            result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
        return bool(result.rowcount)

    async def due_deliveries(
        self,
        now_ms: int,
        limit: int = 50,
        *,
        exclude_urls: Collection[str] = (),
        exclude_hosts: Collection[str] = (),
    ) -> list[dict[str, Any]]:
        """The deliveries due now, longest waiting first, but none to ``exclude_urls`` or
        ``exclude_hosts`` (those the caller has no room for: their backlog must not hide
        everyone else's)."""
        q = (
            select(DELIVERIES)
            .where(DELIVERIES.c.status == "pending", DELIVERIES.c.next_attempt_ms <= now_ms)
            .order_by(DELIVERIES.c.next_attempt_ms, DELIVERIES.c.created_at)
            .limit(limit)
        )
        if exclude_urls:
            q = q.where(DELIVERIES.c.url.not_in(list(exclude_urls)))
        if exclude_hosts:
            q = q.where(DELIVERIES.c.host.not_in(list(exclude_hosts)))
        async with self.tx() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def claim_delivery(
        self, delivery_id: str, attempts: int, now_ms: int, lease_ms: int
    ) -> bool:
        """Takes a delivery for one attempt (the attempt count is the version)."""
        async with self.tx() as conn:
            result = await conn.execute(
                update(DELIVERIES)
                .where(
                    DELIVERIES.c.id == delivery_id,
                    DELIVERIES.c.status == "pending",
                    DELIVERIES.c.attempts == attempts,
                )
                .values(attempts=attempts + 1, next_attempt_ms=now_ms + lease_ms)
            )
        return bool(result.rowcount)

    async def finish_delivery(
        self,
        delivery_id: str,
        status: str,
        *,
        attempt: int,
        error: str | None,
        next_attempt_ms: int,
        now_ms: int,
    ) -> bool:
        """Records the outcome of attempt ``attempt``; False (nothing written) if another
        worker took the delivery over since (the lease ran out) and the outcome is its."""
        values: dict[str, Any] = {"status": status, "last_error": error}
        values["next_attempt_ms"] = next_attempt_ms
        if status == "delivered":
            values["delivered_at"] = from_ms(now_ms)
        async with self.tx() as conn:
            result = await conn.execute(
                update(DELIVERIES)
                .where(
                    DELIVERIES.c.id == delivery_id,
                    DELIVERIES.c.status == "pending",
                    DELIVERIES.c.attempts == attempt,
                )
                .values(values)
            )
        return bool(result.rowcount)

    # -- retention ------------------------------------------------------------------------

    async def prune_deliveries(self, before_ms: int, batch: int) -> int:
        """Deletes up to ``batch`` delivered or given-up deliveries created before
        ``before_ms``, in one short transaction; returns how many."""
        old = (
            select(DELIVERIES.c.id)
            .where(
                DELIVERIES.c.status.in_(("delivered", "dead")),
                DELIVERIES.c.created_at < from_ms(before_ms),
            )
            .limit(batch)
        )
        async with self.tx() as conn:
            result = await conn.execute(
                delete(DELIVERIES).where(DELIVERIES.c.id.in_(old.scalar_subquery()))
            )
        return int(result.rowcount or 0)

    async def prune_events(self, types: Sequence[str], before_ms: int, batch: int) -> int:
        """Deletes up to ``batch`` finished (processed, ignored or dead) stored events of
        ``types`` received before ``before_ms``, in one short transaction; returns how many."""
        old = (
            select(EVENTS.c.id)
            .where(
                EVENTS.c.type.in_(list(types)),
                EVENTS.c.status.in_(("processed", "ignored", "dead")),
                EVENTS.c.received_at < from_ms(before_ms),
            )
            .limit(batch)
        )
        async with self.tx() as conn:
            result = await conn.execute(
                delete(EVENTS).where(EVENTS.c.id.in_(old.scalar_subquery()))
            )
        return int(result.rowcount or 0)

    async def deliveries(self, account: str | None, limit: int) -> Sequence[dict[str, Any]]:
        q = select(DELIVERIES).order_by(DELIVERIES.c.created_at.desc()).limit(limit)
        if account:
            q = q.where(DELIVERIES.c.account == account)
        async with self.tx() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]
