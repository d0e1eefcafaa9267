"""GET /readyz: ready when Redis answers, the scripts are in its cache (loaded if a flush or
restart dropped them) and SQL answers or the writer's lag is within bounds; otherwise 503
naming the failing checks, never a 500. GET /healthz only says the process is up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http import health
from sidecar.http.app import create_app
from sidecar.http.state import BILLING, LEDGER
from sidecar.ledger.arguments import (
    wall_clock_ms,
)
from sidecar.persistence.db import engine_for
from sidecar.redis.client import RedisClient
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin
from tests.http.test_admin import to_sql
from tests.ports import free_port

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client_now(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> AsyncIterator[Client]:
    """The app on a clock at the real time (the outbox's entry ids are Redis's clock)."""
    clock.now = wall_clock_ms()
    async with TestClient(TestServer(create_app(settings, clock=clock))) as c:
        yield c


async def ready(c: Client) -> tuple[int, dict[str, Any]]:
    r = await c.get("/readyz")
    body: dict[str, Any] = await r.json()
    return r.status, body


async def test_ready_when_redis_scripts_and_sql_answer(client_now: Client) -> None:
    status, body = await ready(client_now)
    assert status == 200, body
    assert body["status"] == "ready"
    checks = body["checks"]
    assert {"redis", "scripts", "sql", "writer_lag"} <= set(checks)
    assert all(check["ok"] for check in checks.values())
    assert checks["writer_lag"]["max_lag_s"] == 60
    assert (await client_now.get("/healthz")).status == 200


async def test_scripts_flushed_from_the_cache_are_loaded_again(
    client_now: Client, redis: RedisClient
) -> None:
    await ready(client_now)
    await redis.script_flush()
    status, body = await ready(client_now)
    assert status == 200
    scripts = body["checks"]["scripts"]
    assert scripts["loaded"] == scripts["count"] > 10
    ledger = client_now.app[LEDGER]
    shas = [ledger.scripts.deduct.sha, ledger.scripts.grant.sha]
    assert await redis.script_exists(*shas) == [True, True]
    _, body = await ready(client_now)
    assert body["checks"]["scripts"]["loaded"] == 0


async def test_sql_down_is_ready_while_the_writer_lag_is_small(
    client_now: Client, settings: Settings, clock: FakeClock
) -> None:
    await client_now.put("/v1/accounts/acme", json={}, headers=admin())  # one unwritten entry
    store = client_now.app[BILLING].sql
    reachable = store.engine
    # The SQL ledger goes away: a server that is not there.
    store.engine = engine_for(
        settings.model_copy(
            update={"database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/gone"}
        )
    )
    try:
        status, body = await ready(client_now)
        assert status == 200, body
        assert body["checks"]["sql"]["ok"] is False
        assert body["checks"]["writer_lag"]["ok"] is True

        clock.advance(61_000)  # the unwritten entry is now older than 60 s
        # (the outbox status read is cached for a second: asked again until it is read anew;
        # a generous bound for a busy machine)
        deadline = time.monotonic() + 30
        status, body = await ready(client_now)
        while status != 503 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            status, body = await ready(client_now)
        assert status == 503, body
        assert body["status"] == "not_ready"
        assert body["failing"] == ["writer_lag"]
        assert body["checks"]["writer_lag"]["lag_s"] > 60
        assert body["checks"]["sql"]["ok"] is False
    finally:
        await store.engine.dispose()
        store.engine = reachable
    status, _ = await ready(client_now)  # SQL back, but the outbox still behind
    assert status == 503
    await to_sql(client_now)
    await asyncio.sleep(1.05)
    status, body = await ready(client_now)  # written: the lag of an idle outbox is 0
    assert status == 200, body
    assert body["checks"]["writer_lag"]["lag_s"] == 0


async def test_a_writer_falling_behind_is_not_ready_even_with_sql_up(
    client_now: Client, clock: FakeClock
) -> None:
    """SQL answers, but nothing writes the outbox (a hung or stopped writer; here none)."""
    await client_now.put("/v1/accounts/acme", json={}, headers=admin())
    status, body = await ready(client_now)
    assert status == 200, body
    # well past the 60 s lag limit: the entry's time is Redis's real clock, which ran on
    # (seconds, on a loaded machine) since the fake clock was read
    clock.advance(120_000)
    await asyncio.sleep(1.05)
    status, body = await ready(client_now)
    assert status == 503, body
    assert body["failing"] == ["writer_lag"]
    assert body["checks"]["sql"]["ok"] is True


async def test_outbox_past_its_alert_size_warns_in_the_log_and_the_metrics(
    settings: Settings,
    redis: RedisClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "OUTBOX_WATCH_S", 0.05)
    alerting = settings.model_copy(update={"outbox_alert_entries": 3})
    async with TestClient(TestServer(create_app(alerting))) as c:
        text = await (await c.get("/metrics")).text()
        assert "credit_sidecar_outbox_alert 0.0" in text
        assert "credit_sidecar_outbox_alert_entries 3.0" in text
        for name in ("a", "b", "c"):  # nothing writes them (the writer is off)
            await c.put(f"/v1/accounts/{name}", json={}, headers=admin())
        await asyncio.sleep(1.05)  # the metrics' outbox read is cached for a second
        text = await (await c.get("/metrics")).text()
        assert "credit_sidecar_outbox_alert 1.0" in text
        deadline = asyncio.get_running_loop().time() + 10
        while "alert at 3" not in caplog.text:
            assert asyncio.get_running_loop().time() < deadline, caplog.text
            await asyncio.sleep(0.05)
        warning = next(r for r in caplog.records if "alert at 3" in r.getMessage())
        assert warning.levelname == "WARNING"
        # (the three accounts' entries and their audit entries, docs/audit.md)
        assert "holds 6 entries not yet in SQL" in warning.getMessage()


async def test_redis_down_is_503_naming_redis_never_500(settings: Settings) -> None:
    gone = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}", "background": False}
    )
    async with TestClient(TestServer(create_app(gone))) as c:
        status, body = await ready(c)
        assert status == 503
        assert body["status"] == "not_ready"
        assert {"redis", "scripts"} <= set(body["failing"])
        for name in ("redis", "scripts"):
            assert body["checks"][name]["ok"] is False
            assert body["checks"][name]["error"]  # the error's type, no message
        # Liveness is not about an external Redis: restarting the sidecar would not help.
        assert (await c.get("/healthz")).status == 200
        # And the metrics say so, rather than failing.
        r = await c.get("/metrics")
        assert r.status == 200
        assert "credit_sidecar_redis_up 0.0" in await r.text()


@pytest.mark.parametrize(
    "refuse",
    [
        ("CONFIG", "SET", "maxmemory", "1"),  # out of memory, noeviction (the default policy)
        ("CONFIG", "SET", "min-replicas-to-write", "1"),  # no replica to write with
    ],
    ids=["oom", "no_replicas"],
)
async def test_redis_refusing_writes_is_not_ready(
    settings: Settings, tmp_path: Path, refuse: tuple[str, ...]
) -> None:
    server = RedisServer(tmp_path / "redis", port=free_port())  # its own: we break it
    server.start()
    try:
        app = create_app(settings.model_copy(update={"redis_url": server.url}))
        async with TestClient(TestServer(app)) as c:
            status, body = await ready(c)
            assert status == 200, body
            redis = c.app[LEDGER].redis
            await redis.execute_command(*refuse)
            status, body = await ready(c)
            assert status == 503, body
            assert body["failing"] == ["redis"]
            assert body["checks"]["redis"]["ok"] is False
            assert body["checks"]["redis"]["error"]  # its type: OutOfMemoryError, ...
            await redis.execute_command(*refuse[:3], "0")
            status, body = await ready(c)
            assert status == 200, body
    finally:
        server.stop()
