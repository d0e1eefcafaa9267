"""``credit-sidecar transactions``, ``holds`` and ``refunds``: what happened on an account and
giving credits back, through the running sidecar's admin API."""

from __future__ import annotations

import csv
import io
import urllib.parse
from typing import Any

import click

from sidecar.cli.common import AsciiInt, admin_client, echo_json, json_option, run_admin, url_option
from sidecar.cli.tables import echo_table, seg
from sidecar.persistence.projection import TXN_TYPES


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@click.command("transactions")
@click.argument("account")
@click.option("--limit", type=AsciiInt(1, 1000), default=50, show_default=True)
@click.option("--before", type=AsciiInt(1), help="only transactions with a lower seq (paging)")
@click.option("--type", "ttype", type=click.Choice(sorted(TXN_TYPES)), help="only this type")
@click.option(
    "--csv",
    "csv_file",
    type=click.File("w", lazy=True),
    help="write CSV to this file ('-': standard output) instead of a table",
)
@url_option
@json_option
def transactions(
    account: str,
    limit: int,
    before: int | None,
    ttype: str | None,
    csv_file: Any,
    url: str | None,
    as_json: bool,
) -> None:
    """ACCOUNT's transactions from the SQL ledger, newest first."""
    if csv_file is not None and as_json:
        raise click.UsageError("--csv and --json are alternatives")
    query: dict[str, Any] = {"limit": limit}
    if before is not None:
        query["before"] = before
    if ttype is not None:
        query["type"] = ttype
    if csv_file is not None:
        query["format"] = "csv"
    path = f"/v1/accounts/{seg(account)}/transactions?{urllib.parse.urlencode(query)}"
    body = run_admin(admin_client(url), lambda c: c.request("GET", path))
    if csv_file is not None:
        assert isinstance(body, str), "the sidecar did not answer with CSV"
        csv_file.write(body)
        csv_file.close()
        rows = list(csv.DictReader(io.StringIO(body)))
        if len(rows) >= limit:  # a full page: older transactions may follow
            click.echo(f"more: --before {rows[-1]['seq']} (this page holds {limit})", err=True)
        return
    if as_json:
        echo_json(body)
        return
    echo_table(
        ("SEQ", "ID", "TYPE", "AMOUNT", "BALANCE", "CREATED", "DESCRIPTION"),
        [
            (
                t["seq"],
                t["id"],
                t["type"],
                t["amount"],
                t["balance"],
                t["created_at"],
                _short(t["description"]),
            )
            for t in body["transactions"]
        ],
    )
    if body["next"] is not None:
        click.echo(f"more: --before {body['next']}", err=True)


@click.command("holds")
@click.argument("account")
@url_option
@json_option
def holds(account: str, url: str | None, as_json: bool) -> None:
    """ACCOUNT's holds: active ones and recently closed ones (from Redis, current)."""
    path = f"/v1/accounts/{seg(account)}/holds"
    body = run_admin(admin_client(url), lambda c: c.request("GET", path))
    if as_json:
        echo_json(body)
        return
    if not body["holds"]:
        click.echo(f"no holds on {account}")
        return
    echo_table(
        ("HOLD ID", "STATE", "AMOUNT", "CHARGED", "CREATED", "EXPIRES"),
        [
            (h["hold_id"], h["state"], h["amount"], h["charged"], h["created_at"], h["expires_at"])
            for h in body["holds"]
        ],
    )


@click.group()
def refunds() -> None:
    """Give back all or part of a usage transaction to the buckets it came from."""


@refunds.command("create")
@click.argument("account")
@click.argument("transaction_id")
@click.option("--id", "refund_id", required=True, help="refund id (reuse it to retry safely)")
@click.option("--credits", type=AsciiInt(), help="how much to give back (default: all of it)")
@click.option("--description", default="", help="recorded on the refund transaction")
@click.option("--reason", required=True, help="why, for the audit trail")
@url_option
@json_option
def create(
    account: str,
    transaction_id: str,
    refund_id: str,
    credits: int | None,
    description: str,
    reason: str,
    url: str | None,
    as_json: bool,
) -> None:
    """Refund TRANSACTION_ID (a usage transaction of ACCOUNT); idempotent by --id."""
    body: dict[str, Any] = {
        "account": account,
        "refund_id": refund_id,
        "transaction_id": transaction_id,
        "description": description,
        "reason": reason,
    }
    if credits is not None:
        body["amount"] = credits
    result = run_admin(admin_client(url), lambda c: c.request("POST", "/v1/refunds", body))
    if as_json:
        echo_json(result)
        return
    note = " (a replay: nothing changed)" if result["replayed"] else ""
    forfeited = (
        f", {result['forfeited']} forfeited (expired buckets)" if result["forfeited"] else ""
    )
    click.echo(
        f"refunded {result['refunded']} credits of {transaction_id} to {account}{forfeited} "
        f"(transaction {result['transaction_id']}); balance {result['balance']}{note}"
    )
