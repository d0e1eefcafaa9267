"""``credit-sidecar dead-letters``: everything that needs a look in one place: outbox entries
the SQL writer gave up on (every shard) and Stripe events the billing worker gave up on; and
retrying either once the cause is fixed. (``outbox`` and ``billing`` have the same calls
one kind at a time.)"""

from __future__ import annotations

from typing import Any

import click

from sidecar.cli.adminclient import AdminClient
from sidecar.cli.common import AsciiInt, admin_client, echo_json, json_option, run_admin, url_option
from sidecar.cli.tables import echo_table, seg


@click.group("dead-letters")
def dead_letters() -> None:
    """Outbox entries and Stripe events that failed for good: list and retry them."""


async def _collect(c: AdminClient) -> dict[str, Any]:
    status = await c.request("GET", "/v1/admin/outbox")
    outbox: list[dict[str, Any]] = []
    for shard in status["shards"]:
        if shard["dead_letters"]:
            path = f"/v1/admin/outbox/dead-letters?shard={shard['shard']}&count=1000"
            found = await c.request("GET", path)
            outbox += [e | {"shard": shard["shard"]} for e in found["entries"]]
    billing = await c.request("GET", "/v1/admin/billing/events?status=dead&limit=1000")
    return {"outbox": outbox, "billing": billing["events"]}


@dead_letters.command("list")
@url_option
@json_option
def list_cmd(url: str | None, as_json: bool) -> None:
    """Every dead letter, with its error; exits 0 either way (see `--json` for details)."""
    body = run_admin(admin_client(url), _collect)
    if as_json:
        echo_json(body)
        return
    if not body["outbox"] and not body["billing"]:
        click.echo("no dead letters")
        return
    rows = [
        ("outbox", e["id"], f"shard {e['shard']}", e["fields"].get("dl_error", ""))
        for e in body["outbox"]
    ]
    rows += [("stripe", e["id"], e["type"], e["error"] or "") for e in body["billing"]]
    echo_table(("KIND", "ID", "WHERE", "ERROR"), rows)


@dead_letters.command("retry-outbox")
@click.option("--shard", type=AsciiInt(), help="only this shard (default: every shard with some)")
@click.option("--id", "ids", multiple=True, help="only these entries (needs --shard if >1 shard)")
@url_option
def retry_outbox(shard: int | None, ids: tuple[str, ...], url: str | None) -> None:
    """Move outbox dead letters back into the outbox; the writer applies them idempotently."""

    async def go(c: AdminClient) -> list[tuple[int, int]]:
        status = await c.request("GET", "/v1/admin/outbox")
        shards = [s["shard"] for s in status["shards"] if s["dead_letters"]]
        if shard is not None:
            shards = [shard]
        elif ids:
            if len(status["shards"]) > 1:
                raise click.UsageError("--id needs --shard when there are several shards")
            shards = [0]
        moved = []
        for s in shards:
            body: dict[str, Any] = {"shard": s} | ({"ids": list(ids)} if ids else {})
            result = await c.request("POST", "/v1/admin/outbox/dead-letters/retry", body)
            moved.append((s, len(result["retried"])))
        return moved

    moved = run_admin(admin_client(url), go)
    for s, n in moved:
        click.echo(f"moved {n} entries back into the outbox of shard {s}")
    if not moved:
        click.echo("no outbox dead letters")


@dead_letters.command("retry-event")
@click.argument("event_id")
@url_option
def retry_event(event_id: str, url: str | None) -> None:
    """Process a dead Stripe event again (billing worker), now."""
    path = f"/v1/admin/billing/events/{seg(event_id)}/retry"
    run_admin(admin_client(url), lambda c: c.request("POST", path))
    click.echo(f"event {event_id} queued again")
