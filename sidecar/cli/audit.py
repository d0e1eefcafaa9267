"""``credit-sidecar audit``: read the audit trail of changes made through the admin API, and
verify its hash chain (docs/audit.md). Both read the SQL ledger directly (and Redis for the
chain's recorded head), like ``reconcile``."""

from __future__ import annotations

from typing import Any

import click

from sidecar.billing.stores.sql import Sql
from sidecar.cli.common import AsciiInt, echo_json, load_settings, open_store, run_sql
from sidecar.cli.tables import echo_table
from sidecar.ledger.audit import verify
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.units import iso, parse_rfc3339
from sidecar.persistence.audit_store import AuditQuery, find, walk
from sidecar.persistence.db import engine_for
from sidecar.redis.client import text as _text


@click.group()
def audit() -> None:
    """The audit trail: who changed what through the admin API, when and why."""


@audit.command("list")
@click.option("--account")
@click.option("--token", "token_id", help="a token id (bootstrap:admin for SIDECAR_ADMIN_TOKEN)")
@click.option("--action", help="e.g. grant.create, token.revoke")
@click.option("--since", help="changes at or after this RFC 3339 time")
@click.option("--until", help="changes before this RFC 3339 time")
@click.option("--before", "before_seq", type=AsciiInt(), help="entries before this seq (paging)")
@click.option("--limit", type=AsciiInt(), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(
    account: str | None,
    token_id: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
    before_seq: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """The newest entries first."""
    settings = load_settings()
    q = AuditQuery(
        account,
        token_id,
        action,
        _time(since, "--since"),
        _time(until, "--until"),
        before_seq,
        max(1, min(limit, 500)),
    )

    async def run() -> list[Any]:
        engine = engine_for(settings)
        try:
            return await find(Sql(engine), q)
        finally:
            await engine.dispose()

    rows = run_sql(run(), settings)
    if as_json:
        echo_json({"entries": [{"seq": r.seq, **r.body} for r in rows]})
        return
    echo_table(
        ("SEQ", "AT", "TOKEN", "ACTION", "ACCOUNT", "TARGET", "REASON"),
        [
            (
                r.seq,
                iso(r.body["at"]),
                r.body["token_id"],
                r.body["action"],
                r.body["account"],
                r.body["target"],
                r.body["reason"],
            )
            for r in rows
        ],
    )


def _time(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise click.BadParameter("an RFC 3339 time with an offset", param_hint=name) from None


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(as_json: bool) -> None:
    """Walk the trail, check every hash and the head recorded in Redis; exit 1 on a problem."""
    settings = load_settings()

    async def run() -> tuple[int, list[str]]:
        engine = engine_for(settings)
        try:
            rows = await walk(engine)
            async with open_store(settings) as redis:
                raw = await redis.get(KeySpace(settings.shards).audit_head())
        finally:
            await engine.dispose()
        head = None
        if raw is not None:
            seq, _, digest = _text(raw).partition(":")
            head = (int(seq), digest)
        return len(rows), verify(rows, head)

    count, problems = run_sql(run(), settings)
    if as_json:
        echo_json({"entries": count, "intact": not problems, "problems": problems})
    else:
        for p in problems:
            click.echo(p)
        if not problems:
            click.echo(f"intact: {count} entries, every hash checks")
    if problems:
        raise SystemExit(1)
