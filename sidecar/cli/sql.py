"""SQL ledger commands: ``writer``, ``migrate``, ``reconcile`` and ``rebuild``."""

from __future__ import annotations

import asyncio
import time

import click

from sidecar.cli.common import echo_json, fail, load_settings, open_store, run_until_signal
from sidecar.keys import KeySpace
from sidecar.persistence.db import engine_for, migrate
from sidecar.persistence.reconcile import reconcile
from sidecar.persistence.writer import outbox_status
from sidecar.writer_runner import make_writer, run_inline, tune_gc


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

    run_until_signal(run)


@click.command("migrate")
def migrate_cmd() -> None:
    """Create or upgrade the SQL ledger's schema (`serve` and `writer` also do it at start)."""
    settings = load_settings()

    async def run() -> None:
        engine = engine_for(settings)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    click.echo("schema is up to date")


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

    diffs, unwritten = asyncio.run(run())
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
        n = asyncio.run(run())
    except Exception as e:  # a domain error from the restore script names the problem
        fail(str(e))
    click.echo(f"restored {n} account(s) from SQL")
