"""``credit-sidecar serve``: the HTTP API, on an embedded Redis unless one is configured."""

from __future__ import annotations

import asyncio
import logging
import sys

import click
import uvloop
from aiohttp import web

from sidecar import __version__
from sidecar.cli.common import load_settings
from sidecar.http.app import create_app
from sidecar.pricing import PricingError, load_pricing


@click.command()
@click.option("--listen", help="host:port to bind (SIDECAR_LISTEN)")
def serve(listen: str | None) -> None:
    """Serve the HTTP API (starts an embedded Redis when SIDECAR_REDIS_URL is unset)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings(listen=listen)
    try:
        load_pricing(settings.pricing_file)
    except PricingError as e:
        click.echo(f"config error: SIDECAR_PRICING_FILE: {e}", err=True)
        sys.exit(2)
    host, port = settings.host_port
    app = create_app(settings)
    click.echo(
        f"credit-sidecar {__version__} on http://{host}:{port} "
        f"(tokens: {settings.data_dir}/admin_token, {settings.data_dir}/service_token "
        "unless set in the environment)",
        err=True,
    )
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        loop=uvloop.new_event_loop(),
    )
    asyncio.set_event_loop(None)
