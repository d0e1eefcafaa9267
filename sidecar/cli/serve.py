"""``credit-sidecar serve``: the HTTP API, on an embedded Redis unless one is configured.

With ``--workers N`` (N > 1) this process supervises: it starts the embedded Redis and the
outbox writer once, then N HTTP worker processes that share the port (SO_REUSEPORT: the kernel
spreads connections over them), each with its own event loop and Redis connections; one of
them also runs the expiry sweeper and the billing worker. A worker that dies is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click
import uvloop
from aiohttp import web

from sidecar import __version__
from sidecar.cli.common import load_settings
from sidecar.embedded import redis_for
from sidecar.http.app import create_app
from sidecar.pricing import PricingError, load_pricing
from sidecar.settings import Settings
from sidecar.supervisor import Supervised
from sidecar.writer_runner import WriterProcess, tune_gc

log = logging.getLogger(__name__)


@click.command()
@click.option("--listen", help="host:port to bind (SIDECAR_LISTEN)")
@click.option(
    "--workers", type=click.IntRange(1, 64), help="HTTP worker processes (SIDECAR_WORKERS)"
)
def serve(listen: str | None, workers: int | None) -> None:
    """Serve the HTTP API (starts an embedded Redis when SIDECAR_REDIS_URL is unset)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings(listen=listen)
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    try:
        load_pricing(settings.pricing_file)
    except PricingError as e:
        click.echo(f"config error: SIDECAR_PRICING_FILE: {e}", err=True)
        sys.exit(2)
    host, port = settings.host_port
    click.echo(
        f"credit-sidecar {__version__} on http://{host}:{port} "
        f"({settings.workers} worker(s); tokens: {settings.data_dir}/admin_token, "
        f"{settings.data_dir}/service_token unless set in the environment)",
        err=True,
    )
    if settings.workers > 1:
        uvloop.run(supervise(settings))
        return
    tune_gc()  # per request, aiohttp and the ledger allocate many short-lived objects
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        print=None,
        reuse_port=settings.reuse_port or None,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        loop=uvloop.new_event_loop(),
    )
    asyncio.set_event_loop(None)


def worker_env(settings: Settings, redis_url: str, index: int) -> dict[str, str]:
    """A worker is a one-process `serve` on the shared Redis; only worker 0 runs the sweeper,
    the billing worker, and an inline writer if one was asked for."""
    writer = "inline" if settings.writer == "inline" and index == 0 else "off"
    return os.environ | {
        "SIDECAR_REDIS_URL": redis_url,
        "SIDECAR_LISTEN": settings.listen,
        "SIDECAR_DATA_DIR": str(settings.data_dir),
        "SIDECAR_WORKERS": "1",
        "SIDECAR_REUSE_PORT": "true",
        "SIDECAR_WRITER": writer,
        "SIDECAR_BACKGROUND": "true" if index == 0 else "false",
    }


async def supervise(settings: Settings) -> None:
    server, url = redis_for(settings)
    for role in ("admin", "service"):
        settings.token(role)  # generated once, here, before the workers read it
    children: list[Supervised] = []
    if settings.writer == "process":
        children.append(WriterProcess(settings, url))
    stop = asyncio.Event()
    workers = [
        Supervised(f"http worker {i}", ["serve"], worker_env(settings, url, i), stop.set)
        for i in range(settings.workers)
    ]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:  # SIGHUP reloads the pricing file: in every worker
        for w in workers:
            w.signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload)
    for child in [*children, *workers]:
        child.start()
    try:
        await stop.wait()
    finally:
        # The HTTP workers first, together (they finish their requests), then the writer, then
        # Redis.
        await asyncio.gather(*(w.stop() for w in workers))
        for child in children:
            await child.stop()
        if server is not None:
            await asyncio.to_thread(server.stop)
    if any(w.gave_up for w in workers):
        raise SystemExit("an HTTP worker cannot start (is the port taken?); see the log above")
