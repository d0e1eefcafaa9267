"""Auto top-ups (``auto_topups``): each account's configuration and its one charge slot
(taken, released, waiting for the customer, done), each step one conditional statement."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, case, delete, or_, select, update

from sidecar.billing.stores.sql import SqlStore, insert_for
from sidecar.ledger.units import from_ms
from sidecar.persistence.models import AutoTopUp, table_of

TOPUPS = table_of(AutoTopUp)


class TopUpStore(SqlStore):
    """An account's auto top-up and its charge slot."""

    async def put(
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

    async def get(self, account: str) -> dict[str, Any] | None:
        async with self.tx() as conn:
            row = (
                (await conn.execute(select(TOPUPS).where(TOPUPS.c.account == account)))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    async def delete(self, account: str) -> bool:
        async with self.tx() as conn:
            result = await conn.execute(delete(TOPUPS).where(TOPUPS.c.account == account))
        return bool(result.rowcount)

    async def claim(
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

    async def release(self, account: str, slot: str, *, new_key: bool) -> None:
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

    async def needs_customer(
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

    async def customer_acted(self, account: str, payment_method: str | None, now_ms: int) -> bool:
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

    async def stuck(self, before_ms: int, limit: int = 100) -> list[tuple[str, str]]:
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

    async def pending(self, account: str, slot: str, pi: str) -> None:
        async with self.tx() as conn:
            await conn.execute(
                update(TOPUPS)
                .where(TOPUPS.c.account == account, TOPUPS.c.pending_payment_intent == slot)
                .values(pending_payment_intent=pi)
            )

    async def done(
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
