"""The aiohttp app factory: ``create_app(settings)`` wires Redis (embedded or external), the
ledger, the expiry sweeper and the routes; background work lives in ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from sidecar.billing import apiversion
from sidecar.billing.context import Billing
from sidecar.billing.gateway import StripeGateway
from sidecar.billing.stores import Sql
from sidecar.billing.worker import BillingWorker
from sidecar.errors import SidecarError
from sidecar.gate.decision import Gate
from sidecar.gate.pricing import PricingError, load_pricing
from sidecar.http import api
from sidecar.http.errors import error_middleware
from sidecar.http.health import drain_outbox, metrics_ctx, outbox_alert_ctx
from sidecar.http.server import body_first
from sidecar.http.state import (
    API_KEYS,
    AUDIT,
    BILLING,
    BILLING_WORKER,
    EMBEDDED_REDIS,
    GATE,
    LEDGER,
    PLANS,
    PORTAL_SESSIONS,
    REDIS_URL,
    SETTINGS,
    TOKEN_CACHE,
    TOKENS,
    WRITER,
    WRITER_PROCESS,
)
from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.arguments import (
    wall_clock_ms,
)
from sidecar.ledger.audit import AuditLog
from sidecar.ledger.calls import (
    Clock,
    ledger_for,
)
from sidecar.ledger.plans import Plans
from sidecar.ledger.portal import PortalSessions
from sidecar.ledger.redis_calls import (
    CALL_DEADLINE_S,
)
from sidecar.ledger.token_cache import TokenCache
from sidecar.ledger.tokens import Tokens
from sidecar.persistence.db import engine_for, migrate_while_unreachable
from sidecar.persistence.writer import pause
from sidecar.redis.client import connect
from sidecar.redis.embedded import RedisServer, redis_for
from sidecar.runtime.logs import request_id_middleware
from sidecar.runtime.reload import on_reload
from sidecar.runtime.supervisor import SupervisedServer
from sidecar.runtime.writer_runner import WriterProcess, make_writer, run_inline
from sidecar.settings import Settings

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


def create_app(
    settings: Settings, *, clock: Clock = wall_clock_ms, embedded: RedisServer | None = None
) -> web.Application:
    """The app; ``embedded``: the server `serve` claimed the data dir for, started here (else
    one is made here when SIDECAR_REDIS_URL is unset)."""
    app = web.Application(
        # body_first: the request body is read under SIDECAR_HTTP_BODY_TIMEOUT_S (see
        # sidecar/http/server.py), inside error_middleware (a 413 is rendered as JSON)
        middlewares=[
            request_id_middleware(settings.request_id_header),
            error_middleware,
            body_first,
        ],
        client_max_size=MAX_BODY,
    )
    app[SETTINGS] = settings

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        server, url = redis_for(settings, embedded)
        keeper = SupervisedServer(server) if server is not None else None
        if keeper is not None:
            keeper.start()  # restarts it in place if it dies, until shutdown begins

            async def stop_keeper(_: web.Application) -> None:
                await keeper.stop()

            app.on_shutdown.append(stop_keeper)
        app[REDIS_URL] = url
        embedded_client = None
        if server is not None or settings.embedded_redis:
            app[EMBEDDED_REDIS] = embedded_client = connect(url, retries=0, max_connections=2)
        client = connect(url)
        app[LEDGER] = ledger = ledger_for(client, settings, clock)
        app[API_KEYS] = api_keys = ApiKeys(ledger)
        app[PLANS] = Plans(ledger)
        app[TOKENS] = tokens = Tokens(ledger)
        app[AUDIT] = AuditLog(client, ledger.keys, ledger.deadline_s)
        app[PORTAL_SESSIONS] = PortalSessions(
            ledger,
            link_ttl_ms=settings.portal_link_ttl_s * 1000,
            session_ttl_ms=settings.portal_session_ttl_s * 1000,
        )
        app[TOKEN_CACHE] = token_cache = TokenCache(tokens, ledger.clock)
        stop_tokens = asyncio.Event()
        with contextlib.suppress(SidecarError):
            await token_cache.refresh()  # Redis away: the poll loads them once it answers
        follow_tokens = asyncio.create_task(token_cache.run(stop_tokens), name="tokens")
        app[GATE] = Gate(
            ledger,
            api_keys,
            load_pricing(settings.pricing_file),
            request_id_header=settings.request_id_header,
            trust_cost_header=settings.trust_cost_header,
            trust_dry_run_header=settings.trust_dry_run_header,
            failure_policy=settings.failure_policy,
            shadow=settings.shadow,
            replay_window_ms=settings.proxy_replay_window_s * 1000,
        )
        try:
            yield
        finally:
            await stop_task(follow_tokens, stop_tokens)
            with contextlib.suppress(SidecarError):
                await token_cache.leave()
            await ledger.voids.drain(2.0)  # pending voids: sent if Redis answers by then
            ledger.close()
            await client.aclose()
            if embedded_client is not None:
                await embedded_client.aclose()
            if keeper is not None:
                await keeper.stop()
            if server is not None:
                await asyncio.to_thread(server.stop)

    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(billing_ctx)
    app.cleanup_ctx.append(metrics_ctx)
    if settings.background:
        app.cleanup_ctx.append(sweeper_ctx)
        app.cleanup_ctx.append(outbox_alert_ctx)
    app.cleanup_ctx.append(reload_ctx)
    if settings.writer != "off":
        app.cleanup_ctx.append(writer_ctx)
    api.install(app)
    return app


async def billing_ctx(app: web.Application) -> AsyncIterator[None]:
    """The SQL store and Stripe client of billing, and the billing worker (inline).

    The schema is brought up to date first, but SQL being down does not stop the sidecar:
    checks never need SQL; billing calls answer 503 and the migration is retried."""
    settings, ledger = app[SETTINGS], app[LEDGER]
    engine = engine_for(settings)
    key = settings.stripe_api_key
    gateway = (
        StripeGateway(key.get_secret_value(), api_base=settings.stripe_api_base) if key else None
    )
    app[BILLING] = billing = Billing(ledger, Sql(engine), gateway, settings, ledger.clock)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(migrate_while_unreachable(engine, stop), name="billing-migrate")]
    if gateway is not None and settings.background:
        tasks.append(
            asyncio.create_task(apiversion.check_endpoints(billing), name="billing-versions")
        )
    if settings.billing_worker == "inline" and settings.background:
        app[BILLING_WORKER] = worker = BillingWorker(billing)

        async def work() -> None:
            await tasks[0]
            await worker.run(stop)

        tasks.append(asyncio.create_task(work(), name="billing-worker"))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(tasks[0]), 10)
        yield
    finally:
        for task in reversed(tasks):
            await stop_task(task, stop)
        if gateway is not None:
            await gateway.close()
        await engine.dispose()


async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Expires buckets and lapsed holds of accounts nobody touches, every sweep interval.

    Stopped by an event rather than by cancellation: a sweep in flight finishes (a
    cancelled Redis call can surface as an ordinary error, which the loop must survive).
    """
    ledger, interval = app[LEDGER], app[SETTINGS].sweep_interval_s
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            try:
                written = await ledger.sweep()
                if written:
                    log.info("expiry sweep wrote %d transactions", written)
            except Exception:
                # Keep sweeping whatever went wrong; the next pass retries.
                log.exception("expiry sweep failed")
            await pause(stop, interval)

    task = asyncio.create_task(loop(), name="expiry-sweeper")
    try:
        yield
    finally:
        await stop_task(task, stop)


async def reload_ctx(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP reloads the pricing file; in-flight requests keep the rules they started with,
    and a broken file is logged and ignored (the old rules stay)."""
    settings, gate = app[SETTINGS], app[GATE]

    def reload() -> None:
        try:
            gate.pricing = load_pricing(settings.pricing_file)
            log.info("pricing reloaded from %s", settings.pricing_file)
        except PricingError as e:
            log.error("pricing not reloaded: %s", e)

    loop = asyncio.get_running_loop()
    # `serve` holds SIGHUP back from its first line (hold_reloads): one sent during start-up
    # is delivered now, to the handler, instead of killing the process.
    undo = on_reload(loop, reload)
    try:
        yield
    finally:
        if undo is not None:
            undo()


async def writer_ctx(app: web.Application) -> AsyncIterator[None]:
    """Streams the outbox into SQL in the background. Never blocks start-up: while SQL is
    unreachable (or its migration fails) the writer retries, and the sidecar serves on."""
    settings = app[SETTINGS]
    if settings.writer == "process":
        app[WRITER_PROCESS] = child = WriterProcess(settings, app[REDIS_URL])
        child.start()
        try:
            yield
        finally:
            await drain_outbox(app)  # what the requests just served appended reaches SQL
            await child.stop()
        return
    # Inline: its own connections; with a shared pool, request handlers under load starve it.
    redis = connect(app[REDIS_URL], max_connections=4, decode_responses=True)
    app[WRITER] = writer = make_writer(redis, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run_inline(writer, stop), name="outbox-writer")
    try:
        yield
    finally:
        await drain_outbox(app)
        await stop_task(task, stop)
        await redis.aclose()


async def stop_task(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Sets ``stop`` and waits for ``task`` to finish what it is doing, within a deadline."""
    stop.set()
    try:
        await asyncio.wait_for(task, CALL_DEADLINE_S * 2)
    except TimeoutError:
        log.error("%s did not stop in time", task.get_name())
