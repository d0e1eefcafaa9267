"""A call answered "unavailable" never took effect: every mutating script refuses (LATE, nothing
written) once its caller's deadline has passed on Redis' clock, while a retry of a call that did
run is still answered with its result. Redis paused past the deadline: every check gets 503 and,
when Redis resumes, none of the queued checks is charged."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from sidecar.errors import StoreUnavailable
from sidecar.ledger.arguments import (
    wall_clock_ms,
)
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.redis.client import RedisClient
from sidecar.redis.embedded import RedisServer
from tests.conftest import FakeClock, outbox_entries, snapshot


async def deduct_late(ledger: Ledger, key: str, *, deadline: int) -> Any:
    """deduct.lua as the ledger calls it, with the given deadline (ARGV[5])."""
    k = ledger.keys
    keys = [
        *k.for_account("acme").common(),
        k.idempotency("acme", key),
        k.usage("acme", "tx_late"),
        k.events_for("acme"),
    ]
    args: list[str | int] = ["acme", ledger.clock(), "tx_late", ledger.retention_ms, deadline]
    args += [5, key, "", "", "", "", "", "", "", ""]
    return await ledger.scripts.deduct(keys=keys, args=args)


async def test_a_script_run_after_its_deadline_changes_nothing(
    ledger: Ledger, redis: RedisClient
) -> None:
    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 100)
    before = await snapshot(redis)
    with pytest.raises(Exception, match="CS LATE"):
        await deduct_late(ledger, "k1", deadline=wall_clock_ms() - 1)
    assert await snapshot(redis) == before


async def test_late_is_answered_as_store_unavailable(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 100)
    late = Ledger(ledger.redis, KeySpace(), clock=clock, deadline_s=0.2, deadline_margin_ms=0)
    try:
        late._script_deadline_ms = -1_000  # as if the call had waited a second in a queue
        with pytest.raises(StoreUnavailable):
            await late.deduct("acme", 5, "k1")
        with pytest.raises(StoreUnavailable):
            await late.grant("acme", "g2", 5)
        with pytest.raises(StoreUnavailable):
            await late.hold("acme", "h1", 5, 60_000)
    finally:
        late.close()
    assert (await ledger.balance("acme")).balance == 100


async def test_a_retry_that_arrives_late_still_gets_the_result_of_the_call_that_ran(
    ledger: Ledger,
) -> None:
    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 100)
    first = await ledger.deduct("acme", 5, "k1")
    assert isinstance(first, Allowed)
    reply = await deduct_late(ledger, "k1", deadline=wall_clock_ms() - 60_000)
    assert reply[0] == b"ok" and reply[1].decode() == first.transaction_id and reply[4] == 1
    assert (await ledger.balance("acme")).balance == 95


@pytest.mark.slow
async def test_checks_queued_behind_a_paused_redis_are_answered_503_and_never_charged(
    paused: tuple[RedisServer, RedisClient],
) -> None:
    server, client = paused
    ledger = Ledger(client, KeySpace(), deadline_s=1.0, deadline_margin_ms=200)
    try:
        await ledger.configure_account("acme")
        await ledger.grant("acme", "g", 1000)
        for i in range(20):  # connections up and scripts loaded: the calls below only queue
            await ledger.deduct("acme", 1, f"warm{i}")
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        results = await asyncio.gather(
            *(ledger.deduct("acme", 1, f"k{i}") for i in range(200)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results[:3]
        assert time.monotonic() - started < 10  # the 1 s deadline, generously
        await asyncio.sleep(1.0)  # well past the deadline
        os.kill(server.process.pid, signal.SIGCONT)
        for _ in range(100):
            if await client.ping():
                break
        await asyncio.sleep(0.5)  # the queued scripts have run by now
        assert (await ledger.balance("acme")).balance == 980
        usage = [e for e in await outbox_entries(client) if e.get("type") == "usage"]
        assert len(usage) == 20
        assert isinstance(await ledger.deduct("acme", 1, "after"), Allowed)
    finally:
        ledger.close()
