"""SQL ledger commands: ``writer``, ``migrate``, ``reconcile``, ``rebuild`` and ``archive``."""

from __future__ import annotations

import asyncio
import getpass
import socket
import time

import click

from sidecar.cli.common import (
    echo_json,
    fail,
    load_settings,
    open_store,
    run_sql,
    run_until_signal,
)
from sidecar.ledger.audit import AuditEntry, AuditLog
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.redis_calls import CALL_DEADLINE_S
from sidecar.ledger.units import MissingOffset, parse_rfc3339
from sidecar.persistence.db import engine_for, migrate
from sidecar.persistence.outbox_status import outbox_status
from sidecar.persistence.reconcile import reconcile
from sidecar.runtime.logs import new_request_id
from sidecar.runtime.writer_runner import make_writer, run_inline, tune_gc
from sidecar.settings import Settings


@click.command()
def writer() -> None:
    """Stream the outbox into SQL until SIGTERM (`serve` runs one unless SIDECAR_WRITER=off).

    Several writers may run: each shard is written by one of them at a time (a lease).
    """
    settings = load_settings()

    async def run(stop: asyncio.Event) -> None:
        async with open_store(settings, decode_responses=True) as redis:
            tune_gc()
            await run_inline(make_writer(redis, settings), stop)

    run_until_signal(run, settings)


@click.command("migrate")
def migrate_cmd() -> None:
    """Create or upgrade the SQL ledger's schema (`serve` and `writer` also do it at start)."""
    settings = load_settings()

    async def run() -> tuple[str | None, str | None]:
        engine = engine_for(settings)
        try:
            return await migrate(engine)
        finally:
            await engine.dispose()

    before, after = run_sql(run(), settings)
    if before == after:
        click.echo(f"the schema is already at revision {after}: nothing to do")
    elif before is None:
        click.echo(f"created the schema at revision {after}")
    else:
        click.echo(f"upgraded the schema from revision {before} to {after}")


@click.command("reconcile")
@click.option("--account", help="only this account (default: every account on either side)")
@click.option("--json", "as_json", is_flag=True, help="print the differences as JSON")
def reconcile_cmd(account: str | None, as_json: bool) -> None:
    """Compare Redis and SQL per account and bucket; exit 1 if they differ."""
    settings = load_settings()

    async def run() -> tuple[list[str], int]:
        engine = engine_for(settings)
        keys = KeySpace(settings.shards)
        try:
            async with open_store(settings) as redis:
                status = await outbox_status(redis, keys, int(time.time() * 1000))
                diffs = await reconcile(redis, keys, engine, account)
        finally:
            await engine.dispose()
        return [str(d) for d in diffs], sum(s["unwritten"] for s in status)

    diffs, unwritten = run_sql(run(), settings)
    if unwritten:
        click.echo(
            f"note: {unwritten} outbox entries are not in SQL yet; differences may be only that",
            err=True,
        )
    if as_json:
        echo_json({"clean": not diffs, "unwritten": unwritten, "differences": diffs})
    else:
        for d in diffs:
            click.echo(d)
        if not diffs:
            click.echo("clean: Redis and SQL agree")
    if diffs:
        raise SystemExit(1)


@click.command("rebuild")
@click.option("--account", help="only this account (default: every account in SQL)")
@click.option(
    "--replace", is_flag=True, help="overwrite accounts that exist in Redis (default: refuse)"
)
@click.option(
    "--force",
    is_flag=True,
    help="with --replace: even where Redis has transactions SQL lacks (they are undone)",
)
def rebuild_cmd(account: str | None, replace: bool, force: bool) -> None:
    """Restore the Redis state of all (or one) accounts from the SQL ledger."""
    from sidecar.persistence.rebuild import rebuild

    settings = load_settings()

    async def run() -> int:
        engine = engine_for(settings)
        try:
            async with open_store(settings) as redis:
                return await rebuild(
                    redis,
                    KeySpace(settings.shards),
                    engine,
                    account=account,
                    replace=replace,
                    force=force,
                    now_ms=int(time.time() * 1000),
                    retention_ms=settings.retention_s * 1000,
                )
        finally:
            await engine.dispose()

    try:
        n = run_sql(run(), settings)
    except Exception as e:  # a domain error from the restore script names the problem
        fail(str(e))
    click.echo(f"restored {n} account(s) from SQL")


async def audit_archive(
    settings: Settings, account: str | None, reason: str | None, summary: dict[str, object]
) -> None:
    """The archive run's audit entry (docs/audit.md), appended as the API's are: to shard 0's
    outbox, which the writer chains into SQL. Its actor is the command line (whoever can run
    it holds the data dir or the Redis and SQL URLs)."""
    keys = KeySpace(settings.shards)
    entry = AuditEntry(
        at=int(time.time() * 1000),
        token_id="cli",  # noqa: S106 (an actor id, not a secret)
        token_name=f"credit-sidecar archive ({getpass.getuser()}@{socket.gethostname()})",
        request_id=new_request_id(),
        action="archive.run",
        account=account,
        target=None,
        reason=reason,
        before=None,
        after=summary,
    )
    async with open_store(settings) as redis:
        await AuditLog(redis, keys, CALL_DEADLINE_S).append(entry)


def _cutoff(value: str, now_ms: int) -> int:
    """``90d`` / ``12h`` (that long ago) or an RFC 3339 time, as unix ms."""
    units = {"d": 86_400_000, "h": 3_600_000}
    if value[-1:] in units and value[:-1].isascii() and value[:-1].isdigit():
        return now_ms - int(value[:-1]) * units[value[-1]]
    try:
        return parse_rfc3339(value)
    except MissingOffset:
        raise click.BadParameter("the time needs an offset (Z or +hh:mm)") from None
    except ValueError:
        raise click.BadParameter("a duration like 90d or 12h, or an RFC 3339 time") from None


@click.command("archive")
@click.option(
    "--before", required=True, help="archive transactions older than this: 90d, 12h or RFC 3339"
)
@click.option("--account", help="only this account (default: every account)")
@click.option("--dry-run", is_flag=True, help="count what would move; move nothing")
@click.option("--reason", help="why, for the audit trail (docs/audit.md)")
@click.option("--json", "as_json", is_flag=True)
def archive_cmd(
    before: str, account: str | None, dry_run: bool, reason: str | None, as_json: bool
) -> None:
    """Move old transactions (and their allocations) to the archive tables.

    The ledger totals do not change: live amounts plus the archived total still equal each
    balance (checked per batch), and `reconcile` counts both. Transactions within the
    idempotency retention (SIDECAR_RETENTION_S) or younger than a day stay.
    """
    from sidecar.persistence.archive import ArchiveError, archive

    settings = load_settings()
    now_ms = int(time.time() * 1000)
    before_ms = _cutoff(before, now_ms)

    async def run() -> dict[str, object]:
        engine = engine_for(settings)
        try:
            r = await archive(
                engine,
                before_ms,
                now_ms,
                retention_ms=settings.retention_s * 1000,
                account=account,
                dry_run=dry_run,
            )
        finally:
            await engine.dispose()
        summary: dict[str, object] = {
            "dry_run": dry_run,
            "before_ms": before_ms,
            "transactions": r.transactions,
            "allocations": r.allocations,
            "accounts": len(r.accounts),
        }
        if not dry_run:
            await audit_archive(settings, account, reason, summary)
        return summary

    try:
        out = run_sql(run(), settings)
    except ArchiveError as e:
        fail(str(e))
    if as_json:
        echo_json(out)
    else:
        verb = "would move" if dry_run else "moved"
        click.echo(
            f"{verb} {out['transactions']} transactions ({out['allocations']} allocations) "
            f"of {out['accounts']} accounts to the archive"
        )
