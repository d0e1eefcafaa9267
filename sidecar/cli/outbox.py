"""``credit-sidecar outbox``: the writer's progress and dead letters, through the admin API."""

from __future__ import annotations

import click

from sidecar.cli.common import AsciiInt, admin_client, echo_json, run_admin, url_option


@click.group()
def outbox() -> None:
    """The outbox → SQL writer: lag, unwritten entries, dead letters."""


@outbox.command("status")
@url_option
@click.option("--json", "as_json", is_flag=True)
def status(url: str | None, as_json: bool) -> None:
    """Per shard: entries not yet in SQL, the writer's lag, dead letters."""
    body = run_admin(admin_client(url), lambda c: c.request("GET", "/v1/admin/outbox"))
    if as_json:
        echo_json(body)
        return
    writer = body["writer"]
    state = "running" if writer.get("running") else "NOT RUNNING (no writer holds every lease)"
    pid = f", pid {writer['pid']}" if writer.get("pid") else ""
    click.echo(f"writer: {state} (mode {writer['mode']}{pid})")
    click.echo("SHARD  LENGTH  UNWRITTEN  LAG_S  DEAD_LETTERS")
    for s in body["shards"]:
        click.echo(
            f"{s['shard']:<5}  {s['length']:<6}  {s['unwritten']:<9}  {s['lag_s']:<5}  "
            f"{s['dead_letters']}"
        )


@outbox.command("dead-letters")
@click.option("--shard", type=AsciiInt(), default=0, show_default=True)
@click.option("--count", type=AsciiInt(), default=100, show_default=True)
@url_option
def dead_letters(shard: int, count: int, url: str | None) -> None:
    """The entries the writer gave up on, with their error (JSON)."""
    path = f"/v1/admin/outbox/dead-letters?shard={shard}&count={count}"
    echo_json(run_admin(admin_client(url), lambda c: c.request("GET", path)))


@outbox.command("retry-dead-letters")
@click.option("--shard", type=AsciiInt(), default=0, show_default=True)
@click.option("--id", "ids", multiple=True, help="only these entries (default: all)")
@url_option
def retry_dead_letters(shard: int, ids: tuple[str, ...], url: str | None) -> None:
    """Move dead letters back into the outbox, once what made SQL refuse them is fixed."""
    body: dict[str, object] = {"shard": shard}
    if ids:
        body["ids"] = list(ids)
    result = run_admin(
        admin_client(url),
        lambda c: c.request("POST", "/v1/admin/outbox/dead-letters/retry", body),
    )
    click.echo(f"moved {len(result['retried'])} entries back into the outbox of shard {shard}")
