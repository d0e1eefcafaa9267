"""The billing tables in SQL: credit packages, Stripe customers, stored webhook events,
purchases, auto top-ups and notification endpoints/deliveries. Every write that can race is
one conditional statement (an upsert, or an UPDATE … WHERE that states what must still hold),
so several workers and sidecars can share the tables."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, Table, and_, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
    from_ms,
    table_of,
)

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

    async def raise_clawback(
        self, purchase_id: str, *, refunded: int | None, disputed: int | None, now_ms: int
    ) -> dict[str, Any] | None:
        """Keeps the largest refunded / disputed amounts seen (Stripe's are cumulative, and
        events may arrive in any order); returns the purchase after the update."""
        async with self.tx() as conn:
            values: dict[str, Any] = {"updated_at": from_ms(now_ms)}
            if refunded is not None:
                await conn.execute(
                    update(PURCHASES)
                    .where(PURCHASES.c.id == purchase_id, PURCHASES.c.amount_refunded < refunded)
                    .values(amount_refunded=refunded, **values)
                )
            if disputed is not None:
                await conn.execute(
                    update(PURCHASES)
                    .where(PURCHASES.c.id == purchase_id, PURCHASES.c.amount_disputed < disputed)
                    .values(amount_disputed=disputed, **values)
                )
            row = (
                (await conn.execute(select(PURCHASES).where(PURCHASES.c.id == purchase_id)))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

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
            # A new configuration (say, a new card) also lifts a pause after failures.
            changed = {k: v for k, v in values.items() if k != "account"}
            changed |= {"paused": False, "failures": 0, "last_error": None}
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

    async def topup_release(self, account: str, slot: str) -> None:
        """Stripe was unreachable: the slot stays ``starting`` with its key, due for a
        takeover at once (by the retry of the same trigger)."""
        async with self.tx() as conn:
            await conn.execute(
                update(TOPUPS)
                .where(TOPUPS.c.account == account, TOPUPS.c.pending_payment_intent == slot)
                .values(last_attempt_ms=0)
            )

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
    ) -> bool:
        """Clears the charge slot if it still holds ``pending`` (the charge's PaymentIntent,
        or the ``starting:`` slot when none was made), counting a failure; an outcome of an
        older charge leaves a newer slot alone. Returns True if the auto top-up is now
        paused."""
        async with self.tx() as conn:
            where = (TOPUPS.c.account == account, TOPUPS.c.pending_payment_intent == pending)
            if ok:
                await conn.execute(
                    update(TOPUPS)
                    .where(*where)
                    .values(
                        pending_payment_intent=None,
                        failures=0,
                        last_error=None,
                        updated_at=from_ms(now_ms),
                    )
                )
                return False
            result = await conn.execute(
                update(TOPUPS)
                .where(*where)
                .values(
                    pending_payment_intent=None,
                    failures=TOPUPS.c.failures + 1,
                    last_error=error,
                    updated_at=from_ms(now_ms),
                )
            )
            if not result.rowcount:
                return False
            paused = await conn.execute(
                update(TOPUPS)
                .where(TOPUPS.c.account == account, TOPUPS.c.failures >= max_failures)
                .values(paused=True)
            )
        return bool(paused.rowcount)

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
        self, delivery_id: str, account: str, url: str, payload: dict[str, Any], now_ms: int
    ) -> bool:
        async with self.tx() as conn:
            stmt = insert_for(conn, DELIVERIES).values(
                id=delivery_id,
                account=account,
                url=url,
                payload=payload,
                status="pending",
                attempts=0,
                next_attempt_ms=0,
                created_at=from_ms(now_ms),
            )
            result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
        return bool(result.rowcount)

    async def due_deliveries(self, now_ms: int, limit: int = 50) -> list[dict[str, Any]]:
        q = (
            select(DELIVERIES)
            .where(DELIVERIES.c.status == "pending", DELIVERIES.c.next_attempt_ms <= now_ms)
            .order_by(DELIVERIES.c.next_attempt_ms)
            .limit(limit)
        )
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
        self, delivery_id: str, status: str, *, error: str | None, next_attempt_ms: int, now_ms: int
    ) -> None:
        values: dict[str, Any] = {"status": status, "last_error": error}
        values["next_attempt_ms"] = next_attempt_ms
        if status == "delivered":
            values["delivered_at"] = from_ms(now_ms)
        async with self.tx() as conn:
            await conn.execute(
                update(DELIVERIES).where(DELIVERIES.c.id == delivery_id).values(values)
            )

    async def deliveries(self, account: str | None, limit: int) -> Sequence[dict[str, Any]]:
        q = select(DELIVERIES).order_by(DELIVERIES.c.created_at.desc()).limit(limit)
        if account:
            q = q.where(DELIVERIES.c.account == account)
        async with self.tx() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]
