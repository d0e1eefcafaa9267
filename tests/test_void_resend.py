"""A call attempt sent again by the transport is the same attempt: answered 200 ⇔ charged.

The auto-pipeline (and redis-py's retries) send a call again when its connection is lost, as
every script call is idempotent by its ids. A check's attempt whose first send ran and charged,
and whose resend reaches Redis past the attempt's deadline, must be answered as what it did (a
replay of its charge), not LATE: LATE answers 503 without a void (Redis answered), and the charge
would stay. Found end to end (credit-sidecar serve behind nginx, Redis SIGSTOPped while busy:
4 of 3,000 checks charged and answered 503, none voided)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
from sidecar.ledger.voids import send_void
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.embedded import RedisServer
from tests.conftest import outbox_entries, snapshot
from tests.ports import free_port
from tests.test_void import ACCOUNT, attempt, balance, record, void_of


@pytest.fixture
async def acme(ledger: Ledger) -> Ledger:
    await ledger.configure_account(ACCOUNT)
    await ledger.grant(ACCOUNT, "g", 100)
    return ledger


async def test_an_attempt_sent_again_past_its_deadline_is_answered_as_the_charge_it_made(
    acme: Ledger, redis: RedisClient
) -> None:
    first = await attempt(acme, "r1", "t1")  # ran and charged; the connection was lost
    before = await snapshot(redis)
    again = await attempt(acme, "r1", "t1", deadline=wall_clock_ms() - 1)  # the resend, late
    assert again[0] == b"ok" and again[1] == first[1] and again[4] == 1
    assert await snapshot(redis) == before  # nothing written
    assert await balance(acme) == 95


async def test_a_voided_attempt_sent_again_past_its_deadline_is_still_refused(
    acme: Ledger,
) -> None:
    await attempt(acme, "r1", "t1")  # lost
    await attempt(acme, "r1", "t2")  # a retry, lost too
    assert await send_void(acme, void_of("r1", "t1")) == "marked"
    with pytest.raises(Exception, match="CS LATE"):
        await attempt(acme, "r1", "t1", deadline=wall_clock_ms() - 1)
    assert await send_void(acme, void_of("r1", "t2")) == "voided"
    assert await record(acme, "r1") is None
    with pytest.raises(Exception, match="CS LATE"):  # no record: a new request, too late
        await attempt(acme, "r1", "t1", deadline=wall_clock_ms() - 1)
    assert await balance(acme) == 100


class LossyProxy:
    """A TCP proxy to Redis that, once armed, forwards the next script call, swallows its reply
    and drops that connection ``hold_s`` later: the call ran, its reply was lost, and the
    client's resend (on a new connection) reaches Redis that much later."""

    def __init__(self, upstream_port: int, hold_s: float) -> None:
        self.upstream_port = upstream_port
        self.hold_s = hold_s
        self.armed = False
        self.dropped = 0
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in self._tasks:
            t.cancel()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        mute = asyncio.Event()

        async def up() -> None:
            while data := await cr.read(65536):
                if self.armed and b"EVAL" in data:
                    self.armed = False
                    mute.set()
                    uw.write(data)
                    await asyncio.sleep(self.hold_s)
                    self.dropped += 1
                    cw.transport.abort()
                    uw.close()
                    return
                uw.write(data)

        async def down() -> None:
            while data := await ur.read(65536):
                if not mute.is_set():
                    cw.write(data)

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        self._tasks.update(tasks)
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        cw.transport.abort()
        uw.close()


@pytest.fixture
async def tcp_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
async def test_a_check_whose_lost_first_send_charged_and_whose_resend_was_late_is_answered_200(
    tcp_redis: RedisServer,
) -> None:
    """Through the real auto-pipeline: the first send runs and charges, its connection is
    dropped past the script's deadline (but within the caller's), the pipeline sends the call
    again on a new connection. The check is answered 200 and charged once (before: 503 LATE,
    charged, and no void queued)."""
    deadline_s, margin_ms = 2.0, 1000
    assert tcp_redis.port is not None
    proxy = LossyProxy(tcp_redis.port, hold_s=1.3)  # past the script's 1 s, within the 2 s
    await proxy.start()
    client = connect(f"redis://127.0.0.1:{proxy.port}")
    ledger = Ledger(client, KeySpace(), deadline_s=deadline_s, deadline_margin_ms=margin_ms)
    try:
        await ledger.configure_account(ACCOUNT)
        await ledger.grant(ACCOUNT, "g", 105)
        await ledger.deduct(ACCOUNT, 5, "warm-up")  # the script is in Redis' cache now
        proxy.armed = True
        try:
            r = await ledger.deduct(ACCOUNT, 5, "r1")
            answered = isinstance(r, Allowed)
        except Exception:
            answered = False
        assert proxy.dropped == 1
        await asyncio.sleep(0.2)
        assert await ledger.voids.drain(5.0) == 0
        usages = [
            e
            for e in await outbox_entries(client)
            if e.get("type") == "usage" and e.get("idempotency_key") == "r1"
        ]
        refunds = [e for e in await outbox_entries(client) if e.get("type") == "refund"]
        charged = len(usages) - len(refunds)
        assert len(usages) == 1  # the first send ran
        assert answered == (charged == 1)
        assert answered and (await ledger.balance(ACCOUNT)).balance == 95
    finally:
        ledger.close()
        await client.aclose()
        await proxy.close()
