"""``credit-sidecar tokens``: create, list, rotate and revoke the sidecar's own API tokens
(docs/tokens.md) through the admin API. A token's secret is printed once, when it is made."""

from __future__ import annotations

import click

from sidecar.cli.common import AsciiInt, admin_client, echo_json, json_option, run_admin, url_option
from sidecar.cli.tables import echo_table, seg
from sidecar.ledger.tokens import SCOPES


@click.group()
def tokens() -> None:
    """The sidecar's API tokens: scoped, rotated, revoked (not your customers' API keys)."""


@tokens.command("create")
@click.option("--name", required=True, help="what the token is for (shown in listings)")
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(SCOPES),
    multiple=True,
    required=True,
    help="repeat for several: admin, service, read, portal, checkout",
)
@click.option("--account-prefix", help="limit the token to accounts whose id starts with this")
@url_option
@json_option
def create(
    name: str, scopes: tuple[str, ...], account_prefix: str | None, url: str | None, as_json: bool
) -> None:
    """Create a token; its secret is printed once."""
    body: dict[str, object] = {"name": name, "scopes": list(dict.fromkeys(scopes))}
    if account_prefix is not None:
        body["account_prefix"] = account_prefix
    made = run_admin(admin_client(url), lambda c: c.request("POST", "/v1/tokens", body))
    if as_json:
        echo_json(made)
        return
    click.echo(f"token {made['token_id']} ({', '.join(made['scopes'])}):")
    click.echo(made["token"])
    click.echo("(shown once: keep it now)", err=True)


@tokens.command("list")
@url_option
@json_option
def list_cmd(url: str | None, as_json: bool) -> None:
    """Every token (never a secret), revoked ones too."""
    found = run_admin(admin_client(url), lambda c: c.request("GET", "/v1/tokens"))
    if as_json:
        echo_json(found)
        return
    echo_table(
        ("TOKEN", "NAME", "SCOPES", "ACCOUNTS", "CREATED", "LAST USED", "REVOKED"),
        [
            (
                t["token_id"],
                t["name"],
                ",".join(t["scopes"]),
                f"{t['account_prefix']}*" if t["account_prefix"] else "all",
                t["created_at"],
                t["last_used_at"],
                t["revoked_at"],
            )
            for t in found["tokens"]
        ],
    )


@tokens.command("rotate")
@click.argument("token_id")
@click.option(
    "--grace",
    type=AsciiInt(),
    default=3600,
    show_default=True,
    help="seconds the current secret stays valid",
)
@url_option
@json_option
def rotate(token_id: str, grace: int, url: str | None, as_json: bool) -> None:
    """Give TOKEN_ID a new secret (printed once); the current one works for --grace seconds."""
    path = f"/v1/tokens/{seg(token_id)}/rotate"
    made = run_admin(admin_client(url), lambda c: c.request("POST", path, {"grace_seconds": grace}))
    if as_json:
        echo_json(made)
        return
    click.echo(
        f"token {made['token_id']}, new secret (the old one until {made['previous_valid_until']}):"
    )
    click.echo(made["token"])


@tokens.command("revoke")
@click.argument("token_id")
@url_option
def revoke(token_id: str, url: str | None) -> None:
    """Revoke TOKEN_ID: every serving process refuses it once this returns."""
    path = f"/v1/tokens/{seg(token_id)}"
    run_admin(admin_client(url), lambda c: c.request("DELETE", path))
    click.echo(f"revoked token {token_id}")
