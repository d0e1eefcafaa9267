"""``credit-sidecar serve``: the HTTP API, on an embedded Redis unless one is configured.

With ``--workers N`` (N > 1) this process supervises: it starts the embedded Redis and the
outbox writer once, then N HTTP worker processes that share the port (SO_REUSEPORT: the kernel
spreads connections over them), each with its own event loop and Redis connections; one of
them also runs the expiry sweeper and the billing worker. A worker that dies is restarted.
The workers share one fresh directory for their Prometheus metrics (PROMETHEUS_MULTIPROC_DIR,
removed at exit), so that ``GET /metrics``, whichever worker answers it, counts them all.

SIGTERM (or SIGINT) stops gracefully: no new connections, the requests in flight are
answered, the writer gets ``SIDECAR_SHUTDOWN_DRAIN_S`` to write the outbox to SQL, then the
writer stops, and last the embedded Redis (which fsyncs its AOF as it exits).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile

import click
import uvloop

from sidecar import __version__
from sidecar.cli.common import AsciiInt, fail, load_settings
from sidecar.gate.pricing import PricingError, load_pricing
from sidecar.http.app import create_app
from sidecar.http.health import outbox_drained
from sidecar.http.server import Limits, run_app
from sidecar.ledger.arguments import (
    wall_clock_ms,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import connect
from sidecar.redis.embedded import DataDirInUse, RedisServer, embedded_server, redis_for
from sidecar.runtime import logs, metrics
from sidecar.runtime.reload import hold_reloads, on_reload
from sidecar.runtime.supervisor import Supervised, SupervisedServer
from sidecar.runtime.writer_runner import WriterProcess, tune_gc
from sidecar.settings import Settings

log = logging.getLogger(__name__)


@click.command()
@click.option("--listen", help="host:port to bind (SIDECAR_LISTEN)")
@click.option("--workers", type=AsciiInt(1, 64), help="HTTP worker processes (SIDECAR_WORKERS)")
def serve(listen: str | None, workers: int | None) -> None:
    """Serve the HTTP API (starts an embedded Redis when SIDECAR_REDIS_URL is unset)."""
    hold_reloads()  # done already by the entry point, before the imports; again for other callers
    settings = load_settings(listen=listen)
    logs.configure(settings.log_format, settings.log_level)
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    try:
        load_pricing(settings.pricing_file)
    except PricingError as e:
        click.echo(f"config error: SIDECAR_PRICING_FILE: {e}", err=True)
        sys.exit(2)
    server = claim_data_dir(settings)
    host, port = settings.host_port
    log.info(
        "credit-sidecar %s on http://%s:%s (%d worker(s); tokens: %s/admin_token, "
        "%s/service_token unless set in the environment)",
        __version__,
        host,
        port,
        settings.workers,
        settings.data_dir,
        settings.data_dir,
    )
    if settings.workers > 1:
        uvloop.run(supervise(settings, server))
        return
    tune_gc()  # per request, aiohttp and the ledger allocate many short-lived objects
    run_app(  # web.run_app with header/body timeouts and a connection limit
        create_app(settings, embedded=server),
        host=host,
        port=port,
        limits=Limits.of(settings),
        reuse_port=settings.reuse_port,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        access_log_class=logs.AccessLogger,
        loop=uvloop.new_event_loop(),
    )
    asyncio.set_event_loop(None)
    log.info("stopped")


def claim_data_dir(settings: Settings) -> RedisServer | None:
    """Without SIDECAR_REDIS_URL: the embedded server, its data dir locked for this `serve`
    (started later); another sidecar owning the dir ends this one here, in one line, exit 2."""
    if settings.redis_url is not None:
        return None
    server = embedded_server(settings)
    try:
        server.claim()
    except DataDirInUse as e:
        fail(f"{e} (SIDECAR_DATA_DIR={settings.data_dir}); stop it, or use another data dir", 2)
    return server


def worker_env(
    settings: Settings, redis_url: str, index: int, metrics_dir: str, embedded: bool
) -> dict[str, str]:
    """A worker is a one-process `serve` on the shared Redis; only worker 0 runs the sweeper,
    the billing worker, and an inline writer if one was asked for. Their metrics go to
    ``metrics_dir``, shared by all of them."""
    writer = "inline" if settings.writer == "inline" and index == 0 else "off"
    return os.environ | {
        metrics.MULTIPROC_ENV: metrics_dir,
        "SIDECAR_REDIS_URL": redis_url,
        "SIDECAR_EMBEDDED_REDIS": "true" if embedded else "false",
        "SIDECAR_LISTEN": settings.listen,
        "SIDECAR_DATA_DIR": str(settings.data_dir),
        "SIDECAR_WORKERS": "1",
        "SIDECAR_REUSE_PORT": "true",
        "SIDECAR_WRITER": writer,
        "SIDECAR_BACKGROUND": "true" if index == 0 else "false",
    }


async def supervise(settings: Settings, server: RedisServer | None = None) -> None:
    # Fresh for each serve: counts of an earlier run must not be summed into this one's.
    metrics_dir = tempfile.mkdtemp(prefix="credit-sidecar-metrics-")
    try:
        await _supervise(settings, metrics_dir, server)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _supervise(settings: Settings, metrics_dir: str, claimed: RedisServer | None) -> None:
    server, url = redis_for(settings, claimed)
    keeper = SupervisedServer(server) if server is not None else None
    if keeper is not None:
        keeper.start()  # restarts it in place if it dies
    for role in ("admin", "service"):
        settings.token(role)  # generated once, here, before the workers read it
    children: list[Supervised] = []
    if settings.writer == "process":
        children.append(WriterProcess(settings, url))
    stop = asyncio.Event()
    workers = [
        Supervised(
            f"http worker {i}",
            ["serve"],
            worker_env(settings, url, i, metrics_dir, embedded=server is not None),
            stop.set,
        )
        for i in range(settings.workers)
    ]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:  # SIGHUP reloads the pricing file: in every worker
        for w in workers:
            w.signal(signal.SIGHUP)

    undo_reload = on_reload(loop, reload)  # SIGHUPs held since start-up are delivered now
    for child in [*children, *workers]:
        child.start()
    try:
        await stop.wait()
    finally:
        if keeper is not None:  # a Redis that exits from now on stays down
            await keeper.stop()
        # The HTTP workers first, together (they finish their requests), then the writer, then
        # Redis.
        await asyncio.gather(*(w.stop() for w in workers))
        if children:  # the writer: what the workers appended to the outbox reaches SQL first
            await _drain(settings, url)
        for child in children:
            await child.stop()
        if server is not None:
            await asyncio.to_thread(server.stop)
        if undo_reload is not None:
            undo_reload()  # back to ignored (hold_reloads), not to the default action
        log.info("stopped")
    if any(w.gave_up for w in workers):
        raise SystemExit("an HTTP worker cannot start (is the port taken?); see the log above")


async def _drain(settings: Settings, url: str) -> None:
    if settings.shutdown_drain_s <= 0:
        return
    redis = connect(url, retries=1, max_connections=2)
    try:
        left = await outbox_drained(
            redis, KeySpace(settings.shards), wall_clock_ms, settings.shutdown_drain_s
        )
    finally:
        await redis.aclose()
    if left:
        log.warning("stopping with outbox entries not yet in SQL; they are written at next start")
