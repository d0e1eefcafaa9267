"""Credit packages (``credit_packages``): what a purchase or an auto top-up buys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from sidecar.billing import currency
from sidecar.billing.stores.sql import SqlStore, insert_for
from sidecar.errors import InvalidInput
from sidecar.ledger.units import from_ms
from sidecar.persistence.models import CreditPackage, table_of

PACKAGES = table_of(CreditPackage)


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


class PackageStore(SqlStore):
    """The credit packages, by id or by their Stripe price."""

    async def put(self, p: Package, now_ms: int) -> bool:
        """Creates or replaces a package; True if it was created. InvalidInput if its Stripe
        price is another package's."""
        values = p.view() | {"created_at": from_ms(now_ms)}
        try:
            async with self.tx() as conn:
                existed = (
                    await conn.execute(select(PACKAGES.c.id).where(PACKAGES.c.id == p.id))
                ).first() is not None
                stmt = insert_for(conn, PACKAGES).values(values)
                changed = {k: v for k, v in values.items() if k not in ("id", "created_at")}
                await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=changed))
        except IntegrityError:  # the only unique column besides the id: the Stripe price
            raise InvalidInput(
                f"stripe_price_id {p.stripe_price_id} belongs to another package",
                field="stripe_price_id",
            ) from None
        return not existed

    async def get(self, package_id: str) -> Package | None:
        async with self.tx() as conn:
            row = (await conn.execute(select(PACKAGES).where(PACKAGES.c.id == package_id))).first()
        return None if row is None else _package(row)

    async def listing(self, *, active_only: bool = False) -> list[Package]:
        q = select(PACKAGES).order_by(PACKAGES.c.id)
        if active_only:
            q = q.where(PACKAGES.c.active.is_(True))
        async with self.tx() as conn:
            return [_package(r) for r in await conn.execute(q)]

    async def by_price(self, price_id: str) -> Package | None:
        async with self.tx() as conn:
            row = (
                await conn.execute(select(PACKAGES).where(PACKAGES.c.stripe_price_id == price_id))
            ).first()
        return None if row is None else _package(row)
