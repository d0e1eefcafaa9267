"""Stored Stripe events (``stripe_events``): the inbox the billing worker drains (verified
webhook events and auto top-up triggers), with leases, retries, dead letters and pruning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update

from sidecar.billing.stores.sql import SqlStore, insert_for
from sidecar.ledger.units import from_ms
from sidecar.persistence.models import StripeEvent, table_of

EVENTS = table_of(StripeEvent)

CLAIMABLE = ("received", "retry", "processing")


class EventStore(SqlStore):
    """The event inbox: stored once, claimed under a lease, finished by the attempt that
    holds it, put back in line by an operator, pruned once old."""

    async def store(self, event_id: str, etype: str, payload: dict[str, Any], now_ms: int) -> bool:
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

    async def due(self, now_ms: int, limit: int = 50) -> list[str]:
        q = (
            select(EVENTS.c.id)
            .where(EVENTS.c.status.in_(CLAIMABLE), EVENTS.c.next_attempt_ms <= now_ms)
            .order_by(EVENTS.c.next_attempt_ms, EVENTS.c.received_at)
            .limit(limit)
        )
        async with self.tx() as conn:
            return [r[0] for r in await conn.execute(q)]

    async def claim(
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

    async def finish(
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

    async def listing(self, status: str | None, limit: int) -> list[dict[str, Any]]:
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

    async def retry(self, event_id: str) -> bool:
        """Puts a dead (or failed) event back in line; False if there is no such event."""
        async with self.tx() as conn:
            result = await conn.execute(
                update(EVENTS)
                .where(EVENTS.c.id == event_id, EVENTS.c.status.in_(("dead", "retry")))
                .values(status="received", next_attempt_ms=0, attempts=0, error=None)
            )
        return bool(result.rowcount)

    async def count(self, status: str) -> int:
        async with self.tx() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count()).select_from(EVENTS).where(EVENTS.c.status == status)
                    )
                ).scalar()
                or 0
            )

    async def prune(self, types: Sequence[str], before_ms: int, batch: int) -> int:
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

    async def by_status(self) -> dict[str, int]:
        """How many events are in each status (``dead`` ones need a look)."""
        async with self.tx() as conn:
            rows = await conn.execute(
                select(EVENTS.c.status, func.count()).group_by(EVENTS.c.status)
            )
            return {str(status): int(n) for status, n in rows}
