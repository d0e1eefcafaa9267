"""Billing customers (``accounts``' billing columns): each account's Stripe customer and
billing email."""

from __future__ import annotations

from sqlalchemy import Insert, func, select, update

from sidecar.billing.stores.sql import SqlStore, insert_for
from sidecar.persistence.models import Account, table_of

ACCOUNTS = table_of(Account)


class CustomerStore(SqlStore):
    """An account's Stripe customer and billing email, each set once where that matters
    (conditional writes: concurrent callers keep one)."""

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
