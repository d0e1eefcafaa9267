"""Answered 200 ⇔ charged, with Redis SIGSTOPped while busy: checks whose scripts ran just before
the pause lose their replies and are answered 503 (the deadline passes), and the voids sent once
Redis answers again refund them; checks queued behind the pause run too late and change nothing.
Concurrent checks through the ledger (as POST /v1/check calls it) and through the proxy gate
(fail_closed); afterwards, for every check, answered 200 ⇔ charged (net of voids), the balance
is the grant minus the 200s, and the SQL ledger reconciles clean. Under fail_open the gate
answers 200 on a lost reply and queues no void."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.errors import StoreUnavailable
from sidecar.gate.decision import Gate
from sidecar.gate.pricing import load_pricing
from sidecar.http.app import create_app
from sidecar.http.state import LEDGER
from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.persistence.db import create_engine, migrate, resolve_url
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.embedded import RedisServer
from tests.conftest import admin, outbox_entries, service
from tests.persistence.test_writer import drain, make_writer
from tests.ports import free_port
from tests.test_redis_down import app_settings, onboard

pytestmark = pytest.mark.slow

DEADLINE_S = 1.0
GRANT = 1_000_000


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, RedisClient]]:
    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    client = connect(server.url)
    yield server, client
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)
    await client.aclose()
    server.stop()


# Keeps Redis busy for ARGV[1] ms: the replies of the checks it ran just before (in the same
# event loop turn) wait until it is done, and a SIGSTOP meanwhile holds them for the pause.
SPIN = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) * 1000
return 1
"""


async def storm(
    server: RedisServer,
    ledger: Ledger,
    gate: Gate,
    api_key: str,
    *,
    rounds: int = 3,
    max_rounds: int = 3,
    lost: Callable[[], bool] = lambda: True,
) -> dict[str, int]:
    """Checks from 48 concurrent clients (half through the gate) while Redis, busy with a slow
    script, is SIGSTOPped (past the deadline) and resumed, ``rounds`` times (more, up to
    ``max_rounds``, until ``lost()`` says a round lost a reply); each check's answer by its
    key."""
    answers: dict[str, int] = {}
    stop = asyncio.Event()
    pid = server.process.pid if server.process else 0
    busy = connect(server.url)

    async def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"c{n}-{i}"
            i += 1
            if n % 2:
                o = await gate.decide(
                    "GET", "/v1/x", {"Authorization": f"Bearer {api_key}", "X-Request-Id": key}
                )
                answers[key] = o.status
                continue
            try:
                r = await ledger.deduct("acme", 1, key, description="check", metadata={"n": n})
                answers[key] = 200 if isinstance(r, Allowed) else 402
            except StoreUnavailable:
                answers[key] = 503

    tasks = [asyncio.create_task(client(n)) for n in range(48)]
    try:
        await busy.ping()
        for n in range(max_rounds):
            if n >= rounds and lost():
                break
            await asyncio.sleep(0.2 + random.random() * 0.3)  # checks in flight
            spin: asyncio.Future[Any] = asyncio.ensure_future(busy.eval(SPIN, 0, 100))
            await asyncio.sleep(0.03)  # mid-spin: the checks it follows ran, unanswered
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(DEADLINE_S * 1.6)
            os.kill(pid, signal.SIGCONT)
            await spin
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await busy.aclose()
    return answers


async def charges(redis: RedisClient) -> dict[str, int]:
    """Credits charged per idempotency key, net of voids, as the outbox says."""
    entries = await outbox_entries(redis)
    key_of: dict[str, str] = {}
    net: dict[str, int] = {}
    for e in entries:
        if e.get("type") == "usage":
            key_of[e["id"]] = e["idempotency_key"]
            net[e["idempotency_key"]] = net.get(e["idempotency_key"], 0) - e["amount"]
    for e in entries:
        if e.get("type") == "refund" and e.get("void"):
            key = key_of[e["source_transaction_id"]]
            net[key] -= e["amount"] + e["forfeited"]
    return net


async def run_storm(
    server: RedisServer, client: RedisClient, *, voids: bool, rounds: int = 3, max_rounds: int = 3
) -> tuple[dict[str, int], dict[str, int], Ledger]:
    ledger = Ledger(client, KeySpace(), deadline_s=DEADLINE_S, deadline_margin_ms=200)
    if not voids:  # the behaviour before voids, for comparison
        ledger.voids.put = lambda v: None  # type: ignore[method-assign]
    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", GRANT)
    api = ApiKeys(ledger)
    _, api_key = await api.create("acme")
    gate = Gate(ledger, api, load_pricing(None), failure_policy="fail_closed")
    for i in range(20):  # connections up, scripts loaded, the key cached
        await ledger.deduct("acme", 1, f"warm{i}")
        await gate.decide("GET", "/v1/x", {"Authorization": f"Bearer {api_key}"})
    answers = await storm(
        server,
        ledger,
        gate,
        api_key,
        rounds=rounds,
        max_rounds=max_rounds,
        # a round lost a reply: a void found its attempt had run (sent once Redis answers)
        lost=lambda: bool(
            ledger.voids.outcomes.get("voided") or ledger.voids.outcomes.get("marked")
        ),
    )
    assert await ledger.voids.drain(60) == 0
    return answers, await charges(client), ledger


def charged_without_200(answers: dict[str, int], net: dict[str, int]) -> list[str]:
    return [k for k, status in answers.items() if status != 200 and net.get(k, 0) != 0]


async def test_with_redis_paused_while_busy_every_check_is_answered_200_iff_charged(
    server: tuple[RedisServer, RedisClient], tmp_path: Path
) -> None:
    redis_server, client = server
    # Whether a pause catches replies unsent is chance (about half the rounds do): up to 10
    answers, net, ledger = await run_storm(redis_server, client, voids=True, max_rounds=10)
    try:
        refused = [k for k, s in answers.items() if s == 503]
        allowed = [k for k, s in answers.items() if s == 200]
        assert refused and allowed, (len(refused), len(allowed))
        assert ledger.voids.outcomes.get("voided"), ledger.voids.outcomes  # replies were lost
        assert set(answers.values()) <= {200, 503}
        assert charged_without_200(answers, net) == []
        assert [k for k in allowed if net.get(k) != 1] == []
        warm = 40
        balance = (await ledger.balance("acme")).balance
        assert balance == GRANT - warm - len(allowed)
        print(
            f"\n{len(answers)} checks, {len(refused)} answered 503; voids: "
            f"{dict(sorted(ledger.voids.outcomes.items()))}"
        )
        engine = create_engine(resolve_url(None, tmp_path))
        try:
            await migrate(engine)
            await drain(make_writer(ledger, engine))
            assert await reconcile(client, ledger.keys, engine) == []
        finally:
            await engine.dispose()
    finally:
        ledger.close()


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_the_gate_queues_a_void_for_a_503_and_none_when_it_fails_open(
    server: tuple[RedisServer, RedisClient], policy: Any
) -> None:
    redis_server, client = server
    ledger = Ledger(client, KeySpace(), deadline_s=DEADLINE_S, deadline_margin_ms=200)
    try:
        await ledger.configure_account("acme")
        await ledger.grant("acme", "g", 10)
        api = ApiKeys(ledger)
        _, api_key = await api.create("acme")
        gate = Gate(ledger, api, load_pricing(None), failure_policy=policy)
        headers = {"Authorization": f"Bearer {api_key}", "X-Request-Id": "r1"}
        assert (await gate.decide("GET", "/v1/x", {**headers, "X-Request-Id": "r0"})).allowed
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        o = await gate.decide("GET", "/v1/x", headers)
        os.kill(redis_server.process.pid, signal.SIGCONT)
        if policy == "fail_closed":
            assert o.status == 503 and ledger.voids.outcomes.get("queued") == 1
            assert await ledger.voids.drain(30) == 0
        else:
            assert o.status == 200 and ledger.voids.outcomes == {}
        # the call never ran (it reached Redis past its deadline): nothing charged either way
        assert (await ledger.balance("acme")).balance == 9
    finally:
        ledger.close()


async def test_a_check_that_never_reached_a_stopped_redis_queues_no_void(
    server: tuple[RedisServer, RedisClient],
) -> None:
    """Connections refused: the auto-pipeline never wrote the call (NotSent), so it did not run
    and there is nothing to void (an outage must not fill the queue with no-ops)."""
    redis_server, client = server
    ledger = Ledger(client, KeySpace(), deadline_s=DEADLINE_S, deadline_margin_ms=200)
    try:
        await ledger.configure_account("acme")
        await ledger.grant("acme", "g", 10)
        redis_server.stop()
        await asyncio.sleep(0.2)  # the open connections are seen closed (else: maybe written)
        results = await asyncio.gather(
            *(ledger.deduct("acme", 1, f"r{i}") for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert ledger.voids.outcomes == {}
    finally:
        ledger.close()
        redis_server.start()


async def test_check_and_the_proxy_modes_answer_503_and_void_through_the_app(
    server: tuple[RedisServer, RedisClient], tmp_path: Path
) -> None:
    """POST /v1/check, /auth/nginx and /auth/forward with Redis paused past the deadline: each
    answers 503 and queues a void, sent once Redis is back (their calls ran too late: nothing
    to refund); the metric counts them."""
    redis_server, _ = server
    assert redis_server.process is not None
    settings = app_settings(
        redis_server, tmp_path, redis_deadline_s=DEADLINE_S, redis_deadline_margin_ms=200
    )
    app = create_app(settings)
    async with TestClient(TestServer(app)) as c:
        (key,) = await onboard(c)
        auth = {"Authorization": f"Bearer {key}"}
        nginx = {**auth, "X-Original-Method": "GET", "X-Original-URI": "/v1/x"}
        forward = {**auth, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/x"}
        body = {"account": "acme", "cost": 1, "idempotency_key": "warm"}
        assert (await c.post("/v1/check", json=body, headers=service())).status == 200
        assert (await c.get("/auth/nginx", headers={**nginx, "X-Request-Id": "w1"})).status == 200
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            answers = await asyncio.gather(
                c.post("/v1/check", json={**body, "idempotency_key": "k1"}, headers=service()),
                c.get("/auth/nginx", headers={**nginx, "X-Request-Id": "k2"}),
                c.get("/auth/forward", headers={**forward, "X-Request-Id": "k3"}),
            )
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        # (nginx honours only 401/403: the real status is in a header, mapped by our config)
        assert [r.status for r in answers] == [503, 403, 503]
        assert answers[1].headers["X-Credits-Deny-Status"] == "503"
        ledger = app[LEDGER]
        assert ledger.voids.outcomes.get("queued") == 3
        assert await ledger.voids.drain(30) == 0
        assert ledger.voids.outcomes.get("absent") == 3
        metrics = await (await c.get("/metrics", headers=admin())).text()
        assert 'credit_sidecar_voids_total{outcome="queued"}' in metrics
        balance = await (await c.get("/v1/accounts/acme/balance", headers=admin())).json()
        assert balance["balance"] == 998
