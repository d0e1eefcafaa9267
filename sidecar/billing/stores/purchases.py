"""Purchases (``stripe_purchases``): Checkout sessions and auto top-up charges, their status
and the clawback state of refunds and disputes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, case, select, update

from sidecar.billing.stores.sql import SqlStore, insert_for
from sidecar.errors import LedgerUnavailable
from sidecar.ledger.units import from_ms
from sidecar.persistence.models import StripePurchase, table_of

PURCHASES = table_of(StripePurchase)


class PurchaseStore(SqlStore):
    """Purchases by id or PaymentIntent; status changes that events arriving in any order
    cannot undo; clawbacks merged by compare-and-set."""

    async def get(self, purchase_id: str) -> dict[str, Any] | None:
        async with self.tx() as conn:
            row = (
                (await conn.execute(select(PURCHASES).where(PURCHASES.c.id == purchase_id)))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    async def by_payment_intent(self, pi: str) -> dict[str, Any] | None:
        async with self.tx() as conn:
            row = (
                (await conn.execute(select(PURCHASES).where(PURCHASES.c.payment_intent == pi)))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    async def started(self, purchase_id: str, kind: str, account: str, now_ms: int) -> bool:
        """Records a purchase as started (status ``pending``: a Checkout Session just made),
        unless it is recorded already (a replayed create, or its events came first); whether
        this call recorded it."""
        at = from_ms(now_ms)
        row = {"id": purchase_id, "kind": kind, "account": account, "status": "pending"}
        async with self.tx() as conn:
            stmt = insert_for(conn, PURCHASES).values(row | {"created_at": at, "updated_at": at})
            done = await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
        return bool(done.rowcount)

    async def record(self, values: dict[str, Any], now_ms: int) -> None:
        """Creates the purchase, or updates the given columns of it."""
        row = values | {"updated_at": from_ms(now_ms)}
        async with self.tx() as conn:
            stmt = insert_for(conn, PURCHASES).values(row | {"created_at": from_ms(now_ms)})
            changed = {k: v for k, v in row.items() if k not in ("id", "kind", "account")}
            if "status" in changed:
                # paid is final, failed and expired only give way to paid: events arrive in
                # any order.
                new = stmt.excluded.status
                changed["status"] = case(
                    (PURCHASES.c.status == "paid", "paid"),
                    (and_(PURCHASES.c.status == "failed", new != "paid"), "failed"),
                    (and_(PURCHASES.c.status == "expired", new != "paid"), "expired"),
                    else_=new,
                )
            await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=changed))

    async def update(self, purchase_id: str, now_ms: int, **values: Any) -> None:
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
