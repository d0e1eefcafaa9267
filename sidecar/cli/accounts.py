"""``credit-sidecar accounts``, ``balance`` and ``grants``: accounts, their balance and buckets,
and credits granted by hand, through the running sidecar's admin API."""

from __future__ import annotations

import secrets
import time
import urllib.parse
from typing import Any

import click

from sidecar.cli.adminclient import AdminClient
from sidecar.cli.common import (
    AsciiInt,
    admin_client,
    echo_json,
    json_option,
    rate_limit_body,
    rate_limit_options,
    run_admin,
    url_option,
)
from sidecar.cli.tables import echo_table, rate_limit_text, seg


@click.group()
def accounts() -> None:
    """Accounts: list them (from the SQL ledger), show one, create or reconfigure one."""


@accounts.command("list")
@click.option("--prefix", help="only accounts whose id starts with this (case-sensitive)")
@click.option("--after", help="start after this account id (the previous page's `next`)")
@click.option("--limit", type=AsciiInt(1, 1000), default=50, show_default=True)
@click.option("--all", "every", is_flag=True, help="follow the pages to the end")
@url_option
@json_option
def list_cmd(
    prefix: str | None,
    after: str | None,
    limit: int,
    every: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Accounts in the SQL ledger, by id, with their balance (as of the writer's last batch)."""

    async def fetch(c: AdminClient) -> dict[str, Any]:
        found: list[dict[str, Any]] = []
        cursor = after
        while True:
            query = {"limit": limit} | ({"prefix": prefix} if prefix else {})
            query |= {"after": cursor} if cursor else {}
            page = await c.request("GET", f"/v1/admin/accounts?{urllib.parse.urlencode(query)}")
            found += page["accounts"]
            cursor = page["next"]
            if cursor is None or not every:
                return {"accounts": found, "next": cursor}

    body = run_admin(admin_client(url), fetch)
    if as_json:
        echo_json(body)
        return
    echo_table(
        ("ACCOUNT", "BALANCE", "DEBT", "SEQ", "CREATED"),
        [
            (a["account"], a["balance"], a["debt"], a["seq"], a["created_at"])
            for a in body["accounts"]
        ],
    )
    if body["next"] is not None:
        click.echo(f"more: --after {body['next']} (or --all)", err=True)


def _balance(url: str | None, account: str) -> dict[str, Any]:
    path = f"/v1/accounts/{seg(account)}/balance"
    body: dict[str, Any] = run_admin(admin_client(url), lambda c: c.request("GET", path))
    return body


@accounts.command("show")
@click.argument("account")
@url_option
@json_option
def show(account: str, url: str | None, as_json: bool) -> None:
    """ACCOUNT's balance, settings and live buckets in burn order (from Redis, current)."""
    b = _balance(url, account)
    if as_json:
        echo_json(b)
        return
    click.echo(f"account              {b['account']}")
    click.echo(f"balance              {b['balance']}")
    click.echo(f"available            {b['available']}")
    click.echo(f"held                 {b['held']}")
    click.echo(f"debt                 {b['debt']}")
    click.echo(f"overdraft limit      {b['overdraft_limit']}")
    threshold = b["low_balance_threshold"]
    click.echo(f"low-balance at       {'-' if threshold is None else threshold}")
    click.echo(f"rate limit           {rate_limit_text(b['rate_limit'])}")
    click.echo(f"created              {b['created_at']}")
    if not b["buckets"]:
        click.echo("no live buckets")
        return
    click.echo("")
    echo_table(
        ("BUCKET", "REMAINING", "HELD", "CREDITS", "PRIORITY", "SOURCE", "EXPIRES"),
        [
            (
                k["id"],
                k["remaining"],
                k["held"],
                k["credits"],
                k["priority"],
                k["source"],
                k["expires_at"],
            )
            for k in b["buckets"]
        ],
    )


@accounts.command("create")
@click.argument("account")
@click.option(
    "--overdraft-limit",
    type=AsciiInt(),
    default=0,
    show_default=True,
    help="credits the balance may go below 0 (0 = hard stop)",
)
@click.option(
    "--low-balance-threshold",
    type=AsciiInt(),
    help="a debit crossing below this is a low_balance event",
)
@rate_limit_options("the account")
@click.option("--plan", help="its plan (docs/plans.md; default: the default plan if it is new)")
@click.option("--plan-anchor", help="where the plan's periods count from (RFC 3339 or unix ms)")
@url_option
@json_option
def create(
    account: str,
    overdraft_limit: int,
    low_balance_threshold: int | None,
    rate_limit: int | None,
    period_ms: int,
    burst: int | None,
    plan: str | None,
    plan_anchor: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Create ACCOUNT, or replace all of its settings (unset options go back to defaults)."""
    body: dict[str, Any] = {"overdraft_limit": overdraft_limit}
    if low_balance_threshold is not None:
        body["low_balance_threshold"] = low_balance_threshold
    if (rl := rate_limit_body(rate_limit, period_ms, burst)) is not None:
        body["rate_limit"] = rl
    if plan is not None:
        body["plan"] = plan
    if plan_anchor is not None:
        body["plan_anchor"] = _timestamp(plan_anchor)
    path = f"/v1/accounts/{seg(account)}"
    result = run_admin(admin_client(url), lambda c: c.request("PUT", path, body))
    if as_json:
        echo_json(result)
        return
    verb = "created" if result["created"] else "updated (settings replaced)"
    click.echo(
        f"account {account} {verb}: overdraft limit {result['overdraft_limit']}, "
        f"rate limit {rate_limit_text(result['rate_limit'])}"
    )


@accounts.command("set")
@click.argument("account")
@click.option("--plan", help="put it on this plan (docs/plans.md)")
@click.option("--no-plan", is_flag=True, help="take it off its plan")
@click.option("--plan-anchor", help="where the plan's periods count from (RFC 3339 or unix ms)")
@click.option("--overdraft-limit", type=AsciiInt(), help="credits the balance may go below 0")
@url_option
@json_option
def set_cmd(
    account: str,
    plan: str | None,
    no_plan: bool,
    plan_anchor: str | None,
    overdraft_limit: int | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Change only the settings given of ACCOUNT (PATCH): the others stay."""
    if plan is not None and no_plan:
        raise click.UsageError("--plan and --no-plan exclude each other")
    body: dict[str, Any] = {}
    if plan is not None or no_plan:
        body["plan"] = plan
    if plan_anchor is not None:
        body["plan_anchor"] = _timestamp(plan_anchor)
    if overdraft_limit is not None:
        body["overdraft_limit"] = overdraft_limit
    path = f"/v1/accounts/{seg(account)}"
    result = run_admin(admin_client(url), lambda c: c.request("PATCH", path, body))
    if as_json:
        echo_json(result)
        return
    click.echo(
        f"account {account}: plan {result['plan'] or 'none'}, "
        f"overdraft limit {result['overdraft_limit']}"
    )


@click.command("balance")
@click.argument("account")
@url_option
@json_option
def balance(account: str, url: str | None, as_json: bool) -> None:
    """ACCOUNT's balance (from Redis, current); `accounts show` adds its buckets."""
    b = _balance(url, account)
    if as_json:
        echo_json(b)  # the API's answer, buckets included, as every --json prints
        return
    click.echo(f"{b['balance']}  (available {b['available']}, held {b['held']}, debt {b['debt']})")


@click.group()
def grants() -> None:
    """Grant credits to an account by hand (a bucket of its own; idempotent by grant id)."""


def _timestamp(value: str | None) -> int | str | None:
    """Unix milliseconds as an integer, anything else as given (the API validates it)."""
    if value is None:
        return None
    return int(value) if value.isascii() and value.isdigit() else value


@grants.command("add")
@click.argument("account")
@click.option("--credits", type=AsciiInt(), required=True, help="credits in the new bucket")
@click.option("--id", "grant_id", help="grant id (default: generated; reuse it to retry safely)")
@click.option("--expires-at", help="RFC 3339 time (e.g. 2030-01-01T00:00:00Z) or unix ms")
@click.option("--priority", type=AsciiInt(), default=0, show_default=True, help="lower burns first")
@click.option("--source", default="manual", show_default=True, help="purchase, promo, manual, …")
@click.option("--description", default="", help="recorded on the transaction")
@click.option("--reason", help="why, for the audit trail (required for a manual grant)")
@url_option
@json_option
def add(
    account: str,
    credits: int,
    grant_id: str | None,
    expires_at: str | None,
    priority: int,
    source: str,
    description: str,
    reason: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Grant CREDITS to ACCOUNT; a retry with the same --id changes nothing."""
    grant_id = (
        grant_id or f"cli-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
    )
    body: dict[str, Any] = {
        "grant_id": grant_id,
        "credits": credits,
        "priority": priority,
        "source": source,
        "description": description,
    }
    if expires_at is not None:
        body["expires_at"] = _timestamp(expires_at)
    if reason is not None:
        body["reason"] = reason
    path = f"/v1/accounts/{seg(account)}/grants"
    result = run_admin(admin_client(url), lambda c: c.request("POST", path, body))
    if as_json:
        echo_json(result)
        return
    note = " (a replay: nothing changed)" if result["replayed"] else ""
    click.echo(
        f"granted {credits} credits to {account} as {grant_id} (transaction "
        f"{result['transaction_id']}); balance {result['balance']}{note}"
    )
