"""The billing worker: processes stored Stripe events, reacts to the ledger's own events
(low balance: notify; auto top-up threshold crossed: charge) and sends notifications.

Runs inside `serve` (SIDECAR_BILLING_WORKER=inline, the default) or as `credit-sidecar
worker`; several may run at once: events are claimed with a lease in SQL, the ledger's events
are read through a consumer group, deliveries are claimed by attempt number.

Stripe events: processed by type, idempotently; a transient failure (Stripe unreachable, a
refund whose purchase is not recorded yet) is retried with backoff; after
``event_max_attempts`` failures the event is ``dead`` (the CLI and the admin API list them,
and retry them once the cause is fixed). Unknown types are acknowledged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError, ResponseError

from sidecar.billing import apiversion, clawback, netguard, notify, purchases, topup
from sidecar.billing.context import Billing, NotYet, Permanent, Refused
from sidecar.billing.gateway import StripeRefused, StripeTransient
from sidecar.errors import LedgerUnavailable, StoreUnavailable
from sidecar.persistence.writer import pause
from sidecar.redis.client import text as _s

log = logging.getLogger(__name__)

GROUP = "billing"
CONSUMER = "worker"
# Longer than the slowest processing (Stripe calls with their own retries).
EVENT_LEASE_MS = 300_000
# An event waiting for another (a refund before its purchase) is kept trying this long.
NOT_YET_HORIZON_MS = 3 * 86_400_000
SESSION_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
)
CHARGE_EVENTS = clawback.EVENTS
PAYMENT_EVENTS = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
)
# How often (on the billing clock) a worker looks for auto top-up charges left pending.
STUCK_SWEEP_MS = 60_000
# The ledger's auto_topup events are queued with the Stripe events, for the same retries.
TOPUP_TRIGGER = "credit_sidecar.auto_topup"
# Finished deliveries and trigger events older than the retention go in batches this size
# (each one short transaction), looked for this often.
PRUNE_BATCH = 500
PRUNE_INTERVAL_MS = 600_000
# Stripe event types billing acts on (the others are stored and ignored).
HANDLED = frozenset((*SESSION_EVENTS, *CHARGE_EVENTS, *PAYMENT_EVENTS))


def retry_delay_ms(attempt: int) -> int:
    """2 s, 4 s, 8 s ... capped at 10 minutes."""
    return int(min(2000 * 2 ** max(attempt - 1, 0), 600_000))


async def dispatch(
    b: Billing, event_id: str, etype: str, obj: dict[str, Any], created_s: int = 0
) -> str | None:
    """Processes one event; returns what it did, or None for a type we ignore."""
    if etype in SESSION_EVENTS:
        return await purchases.session_event(b, event_id, etype, obj, created_s)
    if etype in CHARGE_EVENTS:
        return await clawback.charge_event(b, etype, obj)
    if etype in PAYMENT_EVENTS:
        return await topup.payment_event(b, etype, obj)
    if etype == TOPUP_TRIGGER:
        return await topup.trigger(b, str(obj.get("account", "")))
    return None


class BillingWorker:
    def __init__(self, billing: Billing, *, poll_s: float = 0.5) -> None:
        self.b = billing
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self.processed = 0
        self._next_prune_ms = 0
        self._swept_at: int | None = None

    def wake(self) -> None:
        """A new event was stored: process it now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.b.settings
        async with netguard.webhook_session(
            allow_private=settings.notify_allow_private, limit=settings.notify_concurrency
        ) as session:
            deliverer = notify.Deliverer(self.b, session, on_done=self.wake)
            loops = [
                self._loop(stop, self.stripe_events_once, "stripe events"),
                self._loop(stop, self.ledger_events_once, "ledger events"),
                self._loop(stop, deliverer.start_due, "notifications"),
                self._loop(stop, self.prune_once, "pruning"),
                self._loop(stop, self.stuck_once, "stuck auto top-ups"),
            ]
            try:
                await asyncio.gather(*loops)
            finally:
                await deliverer.close()

    async def prune_once(self) -> int:
        """Deletes one batch of each kind of finished row older than the retention, when a
        pruning is due (every PRUNE_INTERVAL_MS, and at start); returns how many rows went
        (more than 0: call again at once for the next batch)."""
        b = self.b
        now = b.clock()
        if now < self._next_prune_ms:
            return 0
        before = now - b.settings.billing_retention_s * 1000
        deliveries = await b.notifications.prune(before, PRUNE_BATCH)
        events = await b.events.prune((TOPUP_TRIGGER,), before, PRUNE_BATCH)
        if deliveries < PRUNE_BATCH and events < PRUNE_BATCH:
            self._next_prune_ms = now + PRUNE_INTERVAL_MS
        if deliveries or events:
            log.info("pruned %d webhook deliveries and %d trigger events", deliveries, events)
        return deliveries + events

    async def _loop(self, stop: asyncio.Event, once: Any, what: str) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                busy = await once()
                backoff = 0.1
            except Exception as e:
                log.warning("billing worker (%s): %s; retrying in %.1fs", what, e, backoff)
                await pause(stop, backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if not busy:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(stop, self._wake), self.poll_s)

    # -- Stripe events ----------------------------------------------------------------------

    async def stripe_events_once(self) -> int:
        b = self.b
        n = 0
        for event_id in await b.events.due(b.clock()):
            claimed = await b.events.claim(event_id, b.clock(), EVENT_LEASE_MS)
            if claimed is None:
                continue
            n += 1
            await self.process(event_id, *claimed)
        return n

    async def process(
        self, event_id: str, etype: str, payload: dict[str, Any], attempt: int
    ) -> None:
        b = self.b
        obj = (payload.get("data") or {}).get("object") or {}
        created = payload.get("created")
        created_s = created if isinstance(created, int) else 0
        try:
            if etype in HANDLED:
                apiversion.check_event(payload)
            outcome = await dispatch(b, event_id, etype, obj, created_s)
        except NotYet as e:
            # Not a failure of this event: wait (with backoff) for the one it depends on.
            waited = b.clock() - created_s * 1000 if created_s else 0
            await self._failed(
                event_id, attempt, f"waiting: {e}", give_up=waited > NOT_YET_HORIZON_MS
            )
            return
        except (
            StripeTransient,
            StoreUnavailable,
            LedgerUnavailable,
            RedisError,
            OSError,
        ) as e:
            await self._failed(event_id, attempt, f"{type(e).__name__}: {e}")
            return
        except Refused as e:
            await self._failed(event_id, attempt, f"refused: {e}", give_up=True)
            return
        except (Permanent, StripeRefused) as e:
            await self._failed(event_id, attempt, f"{type(e).__name__}: {e}")
            return
        except Exception as e:  # a bug: keep the event, say why
            log.exception("Stripe event %s (%s) failed", event_id, etype)
            await self._failed(event_id, attempt, f"{type(e).__name__}: {e}")
            return
        self.processed += 1
        status = "ignored" if outcome is None else "processed"
        await b.events.finish(
            event_id,
            status,
            b.clock(),
            attempt=attempt,
            outcome=outcome or f"ignored: {etype} is not acted on",
        )
        log.info("Stripe event %s (%s): %s", event_id, etype, outcome or "ignored")

    async def _failed(
        self, event_id: str, attempt: int, error: str, *, give_up: bool | None = None
    ) -> None:
        b = self.b
        now = b.clock()
        if give_up is None:
            give_up = attempt >= b.settings.event_max_attempts
        if give_up:
            log.error(
                "Stripe event %s is a dead letter after %d attempts: %s", event_id, attempt, error
            )
            await b.events.finish(event_id, "dead", now, attempt=attempt, error=error)
        else:
            log.warning("Stripe event %s failed (attempt %d): %s", event_id, attempt, error)
            delay = retry_delay_ms(min(attempt, 10))
            await b.events.finish(
                event_id, "retry", now, attempt=attempt, error=error, next_attempt_ms=now + delay
            )

    async def stuck_once(self) -> int:
        """Every STUCK_SWEEP_MS: auto top-up charges pending too long (topup.sweep_stuck)."""
        now = self.b.clock()
        if self.b.gateway is None or (
            self._swept_at is not None and now - self._swept_at < STUCK_SWEEP_MS
        ):
            return 0
        self._swept_at = now
        await topup.sweep_stuck(self.b)
        return 0

    # -- the ledger's events (low balance, auto top-up) ---------------------------------------

    async def ledger_events_once(self) -> int:
        b = self.b
        redis, keys = b.ledger.redis, b.ledger.keys
        n = 0
        for shard in range(keys.shards):
            stream = keys.events(shard)
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            # Our own pending entries first (a crash mid-way), then new ones.
            for start in ("0", ">"):
                reply: Any = await redis.xreadgroup(GROUP, CONSUMER, {stream: start}, count=100)
                entries = reply[0][1] if reply else []
                for entry_id, raw in entries:
                    fields = {_s(k): _s(v) for k, v in (raw or {}).items()}
                    await self.ledger_event(_s(entry_id), fields)
                    await redis.xack(stream, GROUP, entry_id)
                    n += 1
                if entries:
                    break
        return n

    async def ledger_event(self, entry_id: str, fields: dict[str, str]) -> None:
        kind, account = fields.get("type"), fields.get("account", "")
        if kind == "low_balance":
            result = await notify.low_balance(self.b, fields, entry_id)
            self.wake()  # send it now rather than at the next poll
        elif kind == "auto_topup":
            # Unique across shards (stream entry ids are not): the debit that crossed.
            trigger_id = f"auto_topup:{account}:{fields.get('transaction_id', entry_id)}"
            payload = {"id": trigger_id, "data": {"object": {"account": account}}}
            await self.b.events.store(trigger_id, TOPUP_TRIGGER, payload, self.b.clock())
            self.wake()
            result = "queued"
        else:
            result = "ignored"
        log.info("ledger event %s (%s, %s): %s", entry_id, kind, account, result)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
