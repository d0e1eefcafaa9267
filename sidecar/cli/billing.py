"""``credit-sidecar packages``, ``credit-sidecar billing`` (through the admin API) and
``credit-sidecar worker`` (the billing worker on its own)."""

from __future__ import annotations

import asyncio
import urllib.parse

import click

from sidecar.billing import apiversion
from sidecar.billing.context import Billing
from sidecar.billing.gateway import StripeGateway
from sidecar.billing.stores import Sql
from sidecar.billing.worker import BillingWorker
from sidecar.cli.common import (
    AsciiInt,
    admin_client,
    echo_json,
    load_settings,
    open_store,
    run_admin,
    run_until_signal,
    url_option,
)
from sidecar.ledger.calls import (
    ledger_for,
)
from sidecar.persistence.db import engine_for, migrate


@click.group()
def packages() -> None:
    """Credit packages: what customers buy through Stripe Checkout."""


@packages.command("put")
@click.argument("package_id")
@click.option("--name", required=True)
@click.option("--credits", type=AsciiInt(), required=True, help="credits granted per unit bought")
@click.option(
    "--price",
    type=AsciiInt(),
    required=True,
    help="in the currency's minor unit (cents; yen for JPY); must equal the Stripe Price's",
)
@click.option("--currency", default="usd", show_default=True)
@click.option("--stripe-price", "stripe_price_id", help="the Stripe Price id (price_...)")
@click.option(
    "--expiry-days", type=AsciiInt(), help="the credits expire this many days after purchase"
)
@click.option("--inactive", is_flag=True, help="not for sale (existing purchases unaffected)")
@url_option
def put(
    package_id: str,
    name: str,
    credits: int,
    price: int,
    currency: str,
    stripe_price_id: str | None,
    expiry_days: int | None,
    inactive: bool,
    url: str | None,
) -> None:
    """Create or replace PACKAGE_ID."""
    body = {
        "name": name,
        "credits": credits,
        "price": price,
        "currency": currency,
        "stripe_price_id": stripe_price_id,
        "credit_expiry_s": expiry_days * 86400 if expiry_days else None,
        "active": not inactive,
    }
    path = f"/v1/admin/packages/{urllib.parse.quote(package_id, safe='')}"
    echo_json(run_admin(admin_client(url), lambda c: c.request("PUT", path, body)))


@packages.command("list")
@url_option
def list_cmd(url: str | None) -> None:
    """Every package (JSON)."""
    echo_json(run_admin(admin_client(url), lambda c: c.request("GET", "/v1/admin/packages")))


@click.group()
def billing() -> None:
    """Stored Stripe events: list them, retry dead letters."""


@billing.command("events")
@click.option(
    "--status",
    type=click.Choice(["received", "processing", "retry", "processed", "ignored", "dead"]),
    help="only events in this state (dead: the dead letters)",
)
@click.option("--limit", type=AsciiInt(), default=100, show_default=True)
@url_option
def events(status: str | None, limit: int, url: str | None) -> None:
    """Stripe events, newest first (JSON)."""
    query = urllib.parse.urlencode({"limit": limit} | ({"status": status} if status else {}))
    path = f"/v1/admin/billing/events?{query}"
    echo_json(run_admin(admin_client(url), lambda c: c.request("GET", path)))


@billing.command("status")
@url_option
def status(url: str | None) -> None:
    """Stripe events and low-balance deliveries by status (JSON)."""
    echo_json(run_admin(admin_client(url), lambda c: c.request("GET", "/v1/admin/billing/status")))


@billing.command("retry")
@click.argument("event_id")
@url_option
def retry(event_id: str, url: str | None) -> None:
    """Process a dead (or retrying) event again, now."""
    path = f"/v1/admin/billing/events/{urllib.parse.quote(event_id, safe='')}/retry"
    run_admin(admin_client(url), lambda c: c.request("POST", path))
    click.echo(f"event {event_id} queued again")


@click.command("worker")
def worker() -> None:
    """Run the billing worker until SIGTERM: Stripe events, auto top-ups, low-balance
    webhooks (`serve` runs one unless SIDECAR_BILLING_WORKER=off). Several may run."""
    settings = load_settings()

    async def run(stop: asyncio.Event) -> None:
        engine = engine_for(settings)
        key = settings.stripe_api_key
        gateway = (
            StripeGateway(key.get_secret_value(), api_base=settings.stripe_api_base)
            if key
            else None
        )
        try:
            await migrate(engine)
            async with open_store(settings) as redis:
                ledger = ledger_for(redis, settings)
                b = Billing(ledger, Sql(engine), gateway, settings, ledger.clock)
                await apiversion.check_endpoints(b)
                try:
                    await BillingWorker(b).run(stop)
                finally:
                    ledger.close()
        finally:
            if gateway is not None:
                await gateway.close()
            await engine.dispose()

    run_until_signal(run, settings)
