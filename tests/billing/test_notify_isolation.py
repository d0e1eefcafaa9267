"""Low-balance webhooks are sent concurrently, isolated per endpoint and per host: an endpoint
that never answers delays nobody else's webhook; finished deliveries and trigger events are
pruned after the retention."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import insert

from sidecar.billing.stores.events import EVENTS
from sidecar.billing.stores.notifications import DELIVERIES
from sidecar.billing.worker import PRUNE_BATCH, TOPUP_TRIGGER
from sidecar.ledger.units import from_ms
from tests.billing.conftest import MakeRig
from tests.billing.webhooks import Endpoint, cross, deliveries, eventually, with_endpoint

pytestmark = pytest.mark.sql_bystander  # its subject: webhook concurrency

DAY_MS = 86_400_000


@pytest.mark.slow
async def test_a_black_holed_endpoint_does_not_delay_another_tenants_webhook(
    make_rig: MakeRig,
) -> None:
    """Two deliveries hang on an endpoint that accepts and never answers (10 s timeout each);
    another tenant's webhook meanwhile arrives at once. The hanging ones time out, are retried
    after the backoff, and are given up after the last try, as before."""
    rig = await make_rig(notify_allow_private=True, notify_max_attempts=2)
    async with Endpoint(hang=True) as hole, Endpoint() as healthy:
        for account in ("hole-a", "hole-b"):
            await with_endpoint(rig, account, hole.url())
            await cross(rig, account)
        await eventually(lambda: len(hole.received) == 2, 30, "both hanging webhooks sent")
        await with_endpoint(rig, "healthy", healthy.url())
        started = time.monotonic()
        await cross(rig, "healthy")
        await eventually(lambda: healthy.received, 30, "the healthy webhook")
        assert time.monotonic() - started < 8.0  # one hanging delivery alone would be 10 s
        ((d,),) = [await deliveries(rig, "healthy")]
        assert d["status"] == "delivered"

        async def first_attempts_timed_out() -> bool:
            found = [(await deliveries(rig, a))[0] for a in ("hole-a", "hole-b")]
            return all(d["last_error"] == "timeout" for d in found)

        await eventually(first_attempts_timed_out, 60, "the first attempts' timeouts")
        rig.clock.advance(5_000)  # past the backoff (1 s)

        async def given_up() -> bool:
            found = [(await deliveries(rig, a))[0] for a in ("hole-a", "hole-b")]
            return all(d["status"] == "dead" for d in found)

        await eventually(given_up, 60, "the hanging webhooks given up")
        for account in ("hole-a", "hole-b"):
            (d,) = await deliveries(rig, account)
            assert (d["attempts"], d["last_error"]) == (2, "timeout")
        assert len(hole.received) == 4 and hole.max_in_flight == 2


@pytest.mark.parametrize(
    ("limits", "most"),
    [
        ({"notify_per_endpoint": 2, "notify_per_host": 3, "notify_concurrency": 10}, 3),
        ({"notify_per_endpoint": 2, "notify_per_host": 10, "notify_concurrency": 2}, 2),
    ],
    ids=["per host", "overall"],
)
async def test_deliveries_in_flight_are_capped_per_endpoint_per_host_and_overall(
    make_rig: MakeRig, limits: dict[str, int], most: int
) -> None:
    """Six slow webhooks, three to each of two endpoints of one host: they go out
    concurrently, but never more at once than the limits allow."""
    rig = await make_rig(notify_allow_private=True, **limits)
    async with Endpoint(delay_s=1.5) as slow:
        accounts = [f"acct-{i}" for i in range(6)]
        for i, account in enumerate(accounts):
            await with_endpoint(rig, account, slow.url("/a" if i < 3 else "/b"))
        for account in accounts:
            await cross(rig, account)

        async def all_delivered() -> bool:
            found = [await deliveries(rig, a) for a in accounts]
            return all(f and f[0]["status"] == "delivered" for f in found)

        await eventually(all_delivered, 60, "every webhook delivered")
    assert len(slow.received) == 6
    assert slow.max_in_flight == most
    assert max(slow.max_in_flight_per_path.values()) <= 2


async def test_finished_deliveries_and_trigger_events_are_pruned_after_the_retention(
    make_rig: MakeRig,
) -> None:
    """Delivered and given-up deliveries and finished auto top-up trigger events older than
    SIDECAR_BILLING_RETENTION_S go, in batches (more than one here); pending ones, newer ones
    and Stripe's own events stay."""
    rig = await make_rig(billing_retention_s=2 * 86400)
    b = rig.billing
    old, new = rig.clock(), rig.clock() + 3 * DAY_MS
    rows = [
        delivery(f"old-{i}", "delivered" if i % 2 else "dead", old)
        for i in range(2 * PRUNE_BATCH + 3)
    ]
    rows += [delivery("old-pending", "pending", old), delivery("new", "delivered", new)]
    events = [
        event("auto_topup:acme:t1", TOPUP_TRIGGER, "processed", old),
        event("auto_topup:acme:t2", TOPUP_TRIGGER, "dead", old),
        event("auto_topup:acme:t3", TOPUP_TRIGGER, "processed", new),
        event("evt_stripe", "checkout.session.completed", "processed", old),
    ]
    async with b.sql.tx() as conn:
        await conn.execute(insert(DELIVERIES), rows)
        await conn.execute(insert(EVENTS), events)
    rig.clock.advance(3 * DAY_MS + 3_600_000)  # past the pruning interval: the worker prunes

    async def pruned() -> bool:
        return len(await b.notifications.deliveries(None, 10_000)) == 2

    await eventually(pruned, 30, "the old deliveries pruned")
    kept = {d["id"] for d in await b.notifications.deliveries(None, 10_000)}
    assert kept == {"old-pending", "new"}
    left = {e["id"] for e in await b.events.listing(None, 100)}
    assert left == {"auto_topup:acme:t3", "evt_stripe"}


def delivery(delivery_id: str, status: str, created_ms: int) -> dict[str, Any]:
    return {
        "id": delivery_id,
        "account": "acme",
        "url": "https://x.test/h",
        "host": "x.test",
        "payload": {},
        "status": status,
        "attempts": 1,
        "next_attempt_ms": 10**15,  # not due: the worker leaves the pending one alone
        "created_at": from_ms(created_ms),
    }


def event(event_id: str, etype: str, status: str, received_ms: int) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": etype,
        "payload": {},
        "received_at": from_ms(received_ms),
        "status": status,
        "attempts": 1,
        "next_attempt_ms": 0,
    }
