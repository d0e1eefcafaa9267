"""`credit-sidecar archive` on SQLite and PostgreSQL: old transactions and their allocations
move to the archive tables, the ledger totals and reconcile do not change, a re-run moves
nothing more, and a cutoff inside the retention is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.persistence.archive import ArchiveError, archive, ledger_totals
from sidecar.persistence.reconcile import reconcile
from tests.conftest import START_MS, FakeClock
from tests.persistence.conftest import rows
from tests.persistence.test_writer import busy_ledger, drain, make_writer

DAY = 86_400_000


async def test_old_transactions_move_to_the_archive_with_every_total_unchanged(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    await busy_ledger(ledger, clock)  # about a minute of history at START_MS
    clock.advance(3 * DAY)
    await ledger.deduct("acme", 1, "late-1")
    await ledger.grant("beta", "g2", 5)
    await drain(make_writer(ledger, engine))
    old = {
        r[0]
        for r in await rows(
            engine, "SELECT id FROM credit_transactions WHERE created_ms < :cut", cut=START_MS + DAY
        )
    }
    allocs = await rows(
        engine,
        "SELECT count(*) FROM credit_allocations a JOIN credit_transactions t "
        "ON t.id = a.transaction_id WHERE t.created_ms < :cut",
        cut=START_MS + DAY,
    )
    totals = await ledger_totals(engine)
    assert old and totals

    result = await archive(engine, START_MS + DAY, clock.now, retention_ms=3_600_000)

    assert result.transactions == len(old) and result.allocations == allocs[0][0]
    assert result.accounts == {"acme", "beta"}
    archived = {r[0] for r in await rows(engine, "SELECT id FROM credit_transactions_archive")}
    assert archived == old
    live = await rows(engine, "SELECT min(created_ms), count(*) FROM credit_transactions")
    assert live[0][0] >= START_MS + DAY and live[0][1] == 2
    assert await rows(engine, "SELECT count(*) FROM credit_allocations_archive") == [allocs[0]]
    assert await ledger_totals(engine) == totals
    for account, total in totals.items():
        assert (await ledger.balance(account)).balance == total
    assert await reconcile(ledger.redis, ledger.keys, engine) == []

    again = await archive(engine, START_MS + DAY, clock.now, retention_ms=3_600_000)
    assert again.transactions == 0 and await ledger_totals(engine) == totals

    # Later transactions still reach SQL, and reconcile counts live plus archived.
    await ledger.deduct("acme", 2, "late-2")
    await drain(make_writer(ledger, engine))
    assert await reconcile(ledger.redis, ledger.keys, engine) == []


async def test_a_dry_run_counts_and_moves_nothing(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    await busy_ledger(ledger, clock)
    clock.advance(3 * DAY)
    await drain(make_writer(ledger, engine))
    before = await rows(engine, "SELECT count(*) FROM credit_transactions")
    r = await archive(engine, START_MS + DAY, clock.now, retention_ms=0, dry_run=True)
    assert r.transactions == before[0][0]
    assert await rows(engine, "SELECT count(*) FROM credit_transactions") == before
    assert await rows(engine, "SELECT count(*) FROM credit_transactions_archive") == [(0,)]


async def test_one_account_only(ledger: Ledger, clock: FakeClock, engine: AsyncEngine) -> None:
    await busy_ledger(ledger, clock)
    clock.advance(3 * DAY)
    await drain(make_writer(ledger, engine))
    await archive(engine, START_MS + DAY, clock.now, retention_ms=0, account="beta")
    accounts = await rows(engine, "SELECT DISTINCT account FROM credit_transactions_archive")
    assert accounts == [("beta",)]
    assert await reconcile(ledger.redis, ledger.keys, engine) == []


async def test_a_cutoff_inside_the_retention_or_the_last_day_is_refused(
    engine: AsyncEngine,
) -> None:
    now = START_MS + 10 * DAY
    with pytest.raises(ArchiveError):
        await archive(engine, now - DAY // 2, now, retention_ms=0)
    with pytest.raises(ArchiveError):
        await archive(engine, now - 2 * DAY, now, retention_ms=3 * DAY)


def test_the_archive_command_reports_and_refuses_a_recent_cutoff(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {
        "SIDECAR_DATA_DIR": str(tmp_path),
        "SIDECAR_DATABASE_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidecar", *args], env=env, capture_output=True, text=True
        )

    assert run("migrate").returncode == 0
    ok = run("archive", "--before", "400d", "--dry-run", "--json")
    assert ok.returncode == 0 and '"transactions": 0' in ok.stdout
    recent = run("archive", "--before", "1h")
    assert recent.returncode == 1 and "retention" in recent.stderr
    bad = run("archive", "--before", "last tuesday")
    assert bad.returncode == 2 and "RFC 3339" in bad.stderr
