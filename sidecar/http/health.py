"""Liveness, readiness, metrics, and the outbox drain of a graceful shutdown.

- ``GET /healthz`` (liveness; no token): 200 ``{"status": "ok", "pid"}`` while the process
  serves and, if its Redis is the embedded one of ``serve``, that Redis answers: 503
  ``{"status": "unhealthy", "failing": ["embedded_redis"]}`` while it is down (``serve``
  restarts it from its AOF; if it cannot, restarting the sidecar is the remedy, which is what
  a failing liveness probe does). An external Redis being down is readiness's business:
  restarting the sidecar would not bring it back.
- ``GET /readyz`` (readiness; for load balancers and orchestrators): 200 ``{"status": "ready",
  "checks": {...}}`` when Redis accepts a write (a probe key per shard slot), the ledger's
  Lua scripts are in its script cache (missing ones, after a Redis restart or SCRIPT FLUSH,
  are loaded here; on a cluster, on every primary), and the writer's lag is within
  ``SIDECAR_READY_MAX_LAG_S``, whatever SQL's state (``sql`` is reported: checks need only
  Redis, so a short SQL outage keeps the sidecar ready, but an outbox falling behind, SQL
  down or the writer hung, does not). Otherwise 503 ``{"status": "not_ready", "failing":
  [...], "checks": {...}}``. Each check is bounded by a short timeout; nothing here answers
  500.
- ``GET /metrics``: the Prometheus text exposition (sidecar/runtime/metrics.py); open unless
  ``SIDECAR_METRICS_TOKEN`` is set, then that bearer token is required.
- :func:`outbox_drained`: on shutdown, the writer is given a few seconds to write what the
  outbox still holds before it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.http.auth import METRICS, NONE
from sidecar.http.contract import Call, Out, Reply, Routes
from sidecar.http.responses import Health, Readiness, ReadinessCheck, Unhealthy
from sidecar.http.state import BILLING, EMBEDDED_REDIS, LEDGER, SETTINGS
from sidecar.ledger import readiness
from sidecar.ledger.calls import (
    Clock,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.persistence import db
from sidecar.persistence.outbox_status import outbox_status
from sidecar.persistence.writer import pause
from sidecar.redis.client import RedisClient, ping
from sidecar.runtime import metrics

log = logging.getLogger(__name__)
health_routes = Routes()
SCRAPE = web.AppKey("metrics_scrape", metrics.Scrape)
CHECK_TIMEOUT_S = 1.0
PROBE_TTL_MS = 60_000
FLUSH_INTERVAL_S = 1.0


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """The scrape state; in a worker of a multi-process ``serve``, the counts flushed to the
    shared files every second, and once more at exit."""
    billing = app.get(BILLING)
    app[SCRAPE] = scrape = metrics.Scrape(app[LEDGER], billing, app[SETTINGS].outbox_alert_entries)
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await pause(stop, FLUSH_INTERVAL_S)
            scrape.flush()

    task = asyncio.create_task(loop(), name="metrics-flush") if metrics.MULTIPROCESS else None
    try:
        yield
    finally:
        stop.set()
        if task is not None:
            await task
        scrape.flush()


OUTBOX_WATCH_S = 10.0
OUTBOX_REWARN_S = 60.0


async def outbox_alert_ctx(app: web.Application) -> AsyncIterator[None]:
    """Warns in the log when the outbox holds ``SIDECAR_OUTBOX_ALERT_ENTRIES`` unwritten
    entries or more (once on crossing, then every minute while it stays there; once more when
    it is back below), whatever scrapes the metrics. Runs in one process of a `serve`."""
    scrape, limit = app[SCRAPE], app[SETTINGS].outbox_alert_entries
    stop = asyncio.Event()

    async def loop() -> None:
        warned_at: float | None = None
        while not stop.is_set():
            await pause(stop, OUTBOX_WATCH_S)
            try:
                shards = await scrape.outbox_status()
            except Exception as e:  # Redis away: /readyz and the metrics say so
                log.debug("outbox alert: outbox not read: %r", e)
                continue
            unwritten = sum(int(s["unwritten"]) for s in shards)
            now = time.monotonic()
            if unwritten >= limit:
                if warned_at is None or now - warned_at >= OUTBOX_REWARN_S:
                    warned_at = now
                    log.warning(
                        "the outbox holds %d entries not yet in SQL (alert at %d, "
                        "SIDECAR_OUTBOX_ALERT_ENTRIES; writer lag %.0fs): the writer is not "
                        "keeping up, is hung, or SQL is unreachable; Redis memory grows "
                        "until it is written",
                        unwritten,
                        limit,
                        max((float(s["lag_s"]) for s in shards), default=0.0),
                    )
            elif warned_at is not None:
                warned_at = None
                log.warning("the outbox is back below its alert size: %d unwritten", unwritten)

    task = asyncio.create_task(loop(), name="outbox-alert")
    try:
        yield
    finally:
        stop.set()
        task.cancel()  # it only reads: no need to wait for a Redis that is gone
        with contextlib.suppress(asyncio.CancelledError):
            await task


@health_routes.route(
    "GET",
    "/metrics",
    "Prometheus metrics (text exposition format)",
    operation_id="metrics",
    tag="service",
    auth=METRICS,
    responses={200: Out(None, "the metrics", content={"text/plain": {"type": "string"}})},
    errors={401: "`unauthorized`: SIDECAR_METRICS_TOKEN is set, not given"},
    description="Open unless SIDECAR_METRICS_TOKEN is set; then that bearer token is required.",
)
async def metrics_endpoint(call: Call[None, None, None]) -> web.Response:
    body = await call.app[SCRAPE].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@health_routes.route(
    "GET",
    "/healthz",
    "Liveness: the process answers, and so does its embedded Redis",
    tag="service",
    auth=NONE,
    responses={
        200: Out(Health, "alive (pid: which worker process answered)"),
        503: Out(
            Unhealthy,
            "the embedded Redis of `serve` does not answer (it is being restarted from its "
            "AOF; if that keeps failing, restart the sidecar)",
        ),
    },
    description="With an external Redis (SIDECAR_REDIS_URL), 200 whenever the process "
    "answers: Redis's state is readiness's business (`/readyz`).",
)
async def healthz(call: Call[None, None, None]) -> Health | Reply:
    pid = os.getpid()
    embedded = call.app.get(EMBEDDED_REDIS)
    if embedded is not None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await ping(embedded)
        except Exception as e:
            log.debug("embedded Redis does not answer: %r", e)
            return Reply(Unhealthy(status="unhealthy", pid=pid, failing=["embedded_redis"]), 503)
    return Health(status="ok", pid=pid)


Check = Callable[[], Awaitable[dict[str, Any]]]


async def _run(name: str, check: Check) -> tuple[str, ReadinessCheck]:
    """A check's result: ``{"ok": bool, ...}``; an exception or a timeout is a failure named
    by its type only (the reply is public; the log has the message)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S * 2):
            result = await check()
    except TimeoutError:
        result = {"ok": False, "error": "timeout"}
    except Exception as e:
        log.debug("readiness check %s failed: %r", name, e)
        result = {"ok": False, "error": type(e).__name__}
    result["ms"] = round((time.perf_counter() - started) * 1000, 2)
    return name, ReadinessCheck(**result)


@health_routes.route(
    "GET",
    "/readyz",
    "Readiness: Redis accepts writes (and what else the sidecar needs to serve)",
    tag="service",
    auth=NONE,
    responses={
        200: Out(Readiness, "ready"),
        503: Out(Readiness, "not ready: the failing checks"),
    },
    description="200 when Redis accepts a write, the ledger's scripts are loaded (missing ones "
    "are loaded here) and the writer's lag is within SIDECAR_READY_MAX_LAG_S, whatever SQL's "
    "state (`sql` is reported); otherwise 503. `/healthz` is liveness.",
)
async def readyz(call: Call[None, None, None]) -> Readiness | Reply:
    app = call.app
    ledger, settings = app[LEDGER], app[SETTINGS]

    async def writable() -> dict[str, Any]:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await readiness.accepts_writes(ledger.redis, ledger.keys, os.getpid(), PROBE_TTL_MS)
        return {"ok": True}

    async def scripts() -> dict[str, Any]:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            count, loaded = await readiness.load_missing_scripts(ledger.redis, ledger.scripts)
        return {"ok": True, "count": count, "loaded": loaded}

    async def sql() -> dict[str, Any]:
        billing = app.get(BILLING)
        if billing is None:
            return {"ok": False, "error": "not configured"}
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await db.probe(billing.sql.engine)
        return {"ok": True}

    async def writer_lag() -> dict[str, Any]:
        shards = await app[SCRAPE].outbox_status()
        lag = max((float(s["lag_s"]) for s in shards), default=0.0)
        limit = settings.ready_max_lag_s
        return {"ok": lag <= limit, "lag_s": lag, "max_lag_s": limit}

    results = dict(
        await asyncio.gather(
            _run("redis", writable),
            _run("scripts", scripts),
            _run("sql", sql),
            _run("writer_lag", writer_lag),
        )
    )
    # SQL's state is reported, not required: checks need only Redis. The lag is required
    # whatever SQL's state: with SQL up, a lag means a writer that is hung or gone.
    failing = [n for n in ("redis", "scripts", "writer_lag") if not results[n].ok]
    if failing:
        return Reply(Readiness(status="not_ready", failing=failing, checks=results), 503)
    return Readiness(status="ready", checks=results)


async def outbox_drained(redis: RedisClient, keys: KeySpace, clock: Clock, timeout_s: float) -> int:
    """Waits up to ``timeout_s`` for the writer to have written every outbox entry; returns
    how many were still unwritten: 0 when drained, -1 at once when Redis does not answer
    (stopped already, say by a Ctrl-C sent to the whole process group: nothing to wait for)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with asyncio.timeout(2.0):
                shards = await outbox_status(redis, keys, clock())
        except Exception:
            return -1
        unwritten = sum(int(s["unwritten"]) for s in shards)
        if unwritten == 0 or time.monotonic() >= deadline:
            return unwritten
        await asyncio.sleep(0.05)


async def drain_outbox(app: web.Application) -> None:
    """At shutdown, once the last requests are answered: gives the writer up to
    ``SIDECAR_SHUTDOWN_DRAIN_S`` to write what they appended to the outbox, so a stopped
    sidecar's SQL ledger has every acknowledged check (what is left waits in Redis for the
    next start)."""
    settings, ledger = app[SETTINGS], app[LEDGER]
    if settings.shutdown_drain_s <= 0:
        return
    left = await outbox_drained(ledger.redis, ledger.keys, ledger.clock, settings.shutdown_drain_s)
    if left:
        log.warning(
            "stopping with %s outbox entries not yet in SQL; they are written at the next start",
            left if left > 0 else "an unknown number of",
        )
