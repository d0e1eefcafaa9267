"""Notifications (``notification_endpoints``, ``notification_deliveries``): each account's
webhook endpoint and the queue of deliveries to it, with leases, retries and pruning."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update

from sidecar.billing.stores.sql import SqlStore, insert_for
from sidecar.ledger.units import from_ms
from sidecar.persistence.models import NotificationDelivery, NotificationEndpoint, table_of

ENDPOINTS = table_of(NotificationEndpoint)
DELIVERIES = table_of(NotificationDelivery)


class NotificationStore(SqlStore):
    """An account's notification endpoint and the deliveries queued for it."""

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

    async def enqueue(
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

    async def due(
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

    async def claim(self, delivery_id: str, attempts: int, now_ms: int, lease_ms: int) -> bool:
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

    async def finish(
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

    async def deliveries(self, account: str | None, limit: int) -> Sequence[dict[str, Any]]:
        q = select(DELIVERIES).order_by(DELIVERIES.c.created_at.desc()).limit(limit)
        if account:
            q = q.where(DELIVERIES.c.account == account)
        async with self.tx() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def prune(self, before_ms: int, batch: int) -> int:
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

    async def by_status(self) -> dict[str, int]:
        """How many deliveries are in each status (``dead`` ones were given up)."""
        async with self.tx() as conn:
            rows = await conn.execute(
                select(DELIVERIES.c.status, func.count()).group_by(DELIVERIES.c.status)
            )
            return {str(status): int(n) for status, n in rows}

    async def count(self, status: str) -> int:
        query = select(func.count()).select_from(DELIVERIES).where(DELIVERIES.c.status == status)
        async with self.tx() as conn:
            return int((await conn.execute(query)).scalar() or 0)
