"""``credit-sidecar keys``: create, list and revoke API keys through the admin API."""

from __future__ import annotations

from typing import Any

import click

from sidecar.cli.common import (
    admin_client,
    echo_json,
    json_option,
    rate_limit_body,
    rate_limit_options,
    run_admin,
    url_option,
)


@click.group()
def keys() -> None:
    """API keys: an account can own many; each is shown once and stored only as a hash."""


@keys.command("create")
@click.argument("account")
@click.option("--name", default="", help="a label for the key (e.g. where it is used)")
@rate_limit_options("this key")
@click.option(
    "--idempotency-key",
    default=None,
    help="run again with the same key and options: no second key (its secret is not shown again)",
)
@url_option
@json_option
def create(
    account: str,
    name: str,
    rate_limit: int | None,
    period_ms: int,
    burst: int | None,
    idempotency_key: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Create a key for ACCOUNT and print it (the only time it is shown)."""
    rl = rate_limit_body(rate_limit, period_ms, burst)
    key = run_admin(admin_client(url), lambda c: c.create_key(account, name, rl, idempotency_key))
    if as_json:
        echo_json(key)
        return
    if key.get("replayed"):
        click.echo(
            f"key id {key['key_id']} was created before with this idempotency key: its secret "
            "is shown only once (revoke it and create another if it was lost)",
            err=True,
        )
        return
    click.echo(key["key"])
    click.echo(
        f"key id {key['key_id']} for account {key['account']}: store the key now, "
        "it cannot be shown again",
        err=True,
    )


@keys.command("list")
@click.argument("account")
@url_option
@json_option
def list_(account: str, url: str | None, as_json: bool) -> None:
    """List ACCOUNT's keys (ids, prefixes and state; never the keys themselves)."""
    found = run_admin(admin_client(url), lambda c: c.list_keys(account))
    if as_json:
        echo_json(found)
        return
    rows = [("KEY ID", "PREFIX", "NAME", "CREATED", "RATE LIMIT", "STATE")]
    rows += [_row(k) for k in found["keys"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


@keys.command("revoke")
@click.argument("key_id")
@url_option
@json_option
def revoke(key_id: str, url: str | None, as_json: bool) -> None:
    """Revoke KEY_ID: its next request is refused (401), on every sidecar."""
    key = run_admin(admin_client(url), lambda c: c.revoke_key(key_id))
    if as_json:
        echo_json(key)
    else:
        click.echo(f"revoked {key['key_id']} (account {key['account']}) at {key['revoked_at']}")


def _row(k: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    rl = k.get("rate_limit")
    limit = f"{rl['requests']}/{rl['period_ms']}ms" if rl else "-"
    state = f"revoked {k['revoked_at']}" if k.get("revoked_at") else "active"
    return (k["key_id"], k["prefix"], k["name"] or "-", k["created_at"], limit, state)
