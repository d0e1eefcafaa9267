"""Redis down against Redis slow: a Redis that refuses connections (stopped: ECONNREFUSED, or
its unix socket file gone) fails every check within a moment (the breaker's grace for a
restart), whatever the call deadline, so the failure policy's answer (503, or 200 under
fail_open) reaches the proxy before its timeout; a Redis that is up but slow (SIGSTOPped,
loading its AOF after a restart) still gets the full deadline, and a restarted one serves the
calls that waited for it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from sidecar.errors import StoreUnavailable
from sidecar.http.app import create_app
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.redis import breaker
from sidecar.redis.client import connect
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.conftest import ADMIN, SERVICE, admin
from tests.ports import free_port

pytestmark = pytest.mark.slow

Client = TestClient[web.Request, web.Application]

# "Fails fast" against a 30 s deadline: answered within a third of it. Waiting for the deadline
# would take 30 s; the bound is generous because CI runs on a busy two-core machine.
FAST_S = 10.0


def app_settings(server: RedisServer, tmp_path: Path, **update: object) -> Settings:
    return Settings(
        redis_url=server.url,
        admin_token=SecretStr(ADMIN),
        service_token=SecretStr(SERVICE),
        data_dir=tmp_path / "sidecar",
        writer="off",
        billing_worker="off",
        background=False,
        **update,  # type: ignore[arg-type]
    )


async def onboard(c: Client, keys: int = 1) -> list[str]:
    """Account acme with 1000 credits and ``keys`` API keys of it."""
    await c.put("/v1/accounts/acme", json={}, headers=admin())
    await c.post(
        "/v1/accounts/acme/grants",
        json={"grant_id": "g", "credits": 1000, "reason": "test"},
        headers=admin(),
    )
    out = []
    for _ in range(keys):
        r = await c.post("/v1/accounts/acme/keys", json={}, headers=admin())
        out.append((await r.json())["key"])
    return out


async def check(c: Client, key: str, request_id: str) -> tuple[int, str, float]:
    """One forward-auth check: status, X-Credits-Reason, seconds it took."""
    t0 = time.monotonic()
    r = await c.get(
        "/auth/forward",
        headers={
            "Authorization": f"Bearer {key}",
            "X-Forwarded-Uri": "/v1/x",
            "X-Request-Id": request_id,
        },
    )
    return r.status, r.headers.get("X-Credits-Reason", ""), time.monotonic() - t0


@pytest.fixture(params=["tcp", "unix"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> RedisServer:
    port = free_port() if request.param == "tcp" else None
    s = RedisServer(tmp_path / "redis", port=port)
    s.start()
    return s


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_a_stopped_redis_fails_checks_at_once_whatever_the_deadline(
    server: RedisServer, tmp_path: Path, policy: str
) -> None:
    """Stopped: connections are refused (TCP) or the socket file is gone (unix). With a 30 s
    deadline every check is still answered within a third of it (generous for a busy CI
    machine; the deadline alone would be 30 s): a key already resolved (the ledger's
    own connections) and one never seen (redis-py's pool), one at a time and 200 at once."""
    settings = app_settings(server, tmp_path, redis_deadline_s=30.0, failure_policy=policy)
    try:
        async with TestClient(TestServer(create_app(settings))) as c:
            known, unseen = await onboard(c, keys=2)
            assert (await check(c, known, "warm"))[0] == 200
            server.stop()
            expected = (503, "store_unavailable") if policy == "fail_closed" else (200, "fail_open")
            for i, key in enumerate([known, unseen, known]):
                status, reason, took = await check(c, key, f"down-{i}")
                assert (status, reason) == expected
                assert took < FAST_S, f"answered after {took:.1f}s"
            t0 = time.monotonic()
            results = await asyncio.gather(
                *(check(c, known if i % 2 else unseen, f"many-{i}") for i in range(200))
            )
            assert {(s, r) for s, r, _ in results} == {expected}
            assert time.monotonic() - t0 < FAST_S
    finally:
        server.stop()


async def test_thousands_of_calls_on_a_stopped_redis_do_not_each_try_to_connect(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    client = connect(server.url)
    ledger = Ledger(client, KeySpace(), deadline_s=30.0)
    try:
        await ledger.configure_account("a")
        server.stop()
        b = breaker.breaker_for(("127.0.0.1", server.port))
        before = b.connects
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(ledger.deduct("a", 1, f"k{i}") for i in range(3000)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) for r in results)
        took = time.monotonic() - t0
        assert took < FAST_S
        # One connect per cooldown at most (plus the ones already under way when the first
        # was refused: one per channel), however many calls.
        assert b.connects - before <= 8 + 2 * took / breaker.COOLDOWN_S
    finally:
        ledger.close()
        await client.aclose()
        server.stop()


async def test_a_redis_restarted_within_a_moment_fails_no_call(tmp_path: Path) -> None:
    """A restart refuses connections for a moment: calls made then wait for it (within the
    breaker's grace) rather than fail, and each is charged once."""
    server = RedisServer(tmp_path / "redis", port=free_port(), appendfsync="always")
    server.start()
    client = connect(server.url)
    ledger = Ledger(client, KeySpace(), deadline_s=30.0)
    try:
        await ledger.configure_account("a")
        await ledger.grant("a", "g", 100_000)

        async def worker(w: int) -> None:
            for i in range(150):
                assert isinstance(await ledger.deduct("a", 1, f"w{w}-{i}"), Allowed)

        async def restart() -> None:
            await asyncio.sleep(0.2)
            server.kill()
            await asyncio.sleep(0.1)  # refusing, with calls arriving
            await asyncio.to_thread(server.start)

        await asyncio.gather(restart(), *(worker(w) for w in range(8)))
        assert (await ledger.balance("a")).balance == 100_000 - 8 * 150
    finally:
        ledger.close()
        await client.aclose()
        server.stop()


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_a_paused_redis_still_gets_the_full_deadline(tmp_path: Path, policy: str) -> None:
    """SIGSTOPped: the kernel still accepts connections, nothing answers. That is a slow
    Redis, not a dead one: a check waits for its whole deadline before the policy applies."""
    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    assert server.process is not None
    settings = app_settings(server, tmp_path, redis_deadline_s=2.0, failure_policy=policy)
    try:
        async with TestClient(TestServer(create_app(settings))) as c:
            (key,) = await onboard(c)
            assert (await check(c, key, "warm"))[0] == 200
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                status, reason, took = await check(c, key, "paused")
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            expected = (503, "store_unavailable") if policy == "fail_closed" else (200, "fail_open")
            assert (status, reason) == expected
            assert took >= 2.0
            # Resumed: served again, and the paused call ran at most once.
            assert (await check(c, key, "after"))[0] == 200
    finally:
        server.stop()


async def test_calls_wait_for_a_restarted_redis_loading_its_data(tmp_path: Path) -> None:
    """A restarted Redis answers LOADING until its data is in memory: a call made then is
    not refused, it waits (within its deadline) and is served once loading is done."""
    port = free_port()
    slow_load = ("--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024")
    server = RedisServer(tmp_path / "redis", port=port, extra_args=slow_load)
    server.start()
    client = connect(server.url)
    ledger = Ledger(client, KeySpace(), deadline_s=30.0)
    try:
        await ledger.configure_account("a")
        await ledger.grant("a", "g", 100)
        pipe = client.pipeline(transaction=False)
        for i in range(20_000):  # about 2 s of loading at 100 µs per key
            pipe.set(f"filler:{i}", "x")
        await pipe.execute()
        await client.bgrewriteaof()  # the data goes to the AOF's RDB base, loaded key by key
        for _ in range(200):
            if not (await client.info("persistence"))["aof_rewrite_in_progress"]:
                break
            await asyncio.sleep(0.05)
        server.kill()
        # Started without waiting for it to answer (RedisServer.start waits for PING).
        server.process = await asyncio.to_thread(
            subprocess.Popen, server._args(), stdout=subprocess.DEVNULL
        )
        while True:  # until it listens; it then loads for a while
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.01)
        assert not await asyncio.to_thread(server.ping)  # LOADING
        t0 = time.monotonic()
        results = await asyncio.gather(*(ledger.deduct("a", 1, f"k{i}") for i in range(20)))
        assert all(isinstance(r, Allowed) for r in results)
        assert time.monotonic() - t0 > 0.5  # it did wait for the loading
        assert (await ledger.balance("a")).balance == 80
    finally:
        ledger.close()
        await client.aclose()
        server.stop()
