"""The SQL ledger from the command line, against a real `serve` on embedded defaults: its
writer fills the SQLite file in the data dir, `outbox status` shows nothing left unwritten,
`reconcile` (on the running sidecar's own Redis) reports clean, `migrate` is idempotent."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
import redis

from tests.cli.conftest import call, cli


def wait_written(env: dict[str, str]) -> dict[str, object]:
    for _ in range(1200):  # a minute at most (a busy machine)
        status, body = call(env, "GET", "/v1/admin/outbox")
        assert status == 200
        if body["unwritten"] == 0:
            return dict(body)
        time.sleep(0.05)
    raise AssertionError("the writer did not catch up")


@pytest.mark.sqlite_only  # reads the SQLite file (tests/e2e/test_many_sidecars.py: PostgreSQL)
def test_serve_writes_the_ledger_to_sqlite_and_reconcile_is_clean(served: dict[str, str]) -> None:
    assert call(served, "PUT", "/v1/accounts/sql-1", {})[0] == 201
    grant = {"grant_id": "g", "credits": 50, "source": "purchase"}
    assert call(served, "POST", "/v1/accounts/sql-1/grants", grant)[0] == 201
    check = {"account": "sql-1", "cost": 7, "idempotency_key": "r1"}
    assert call(served, "POST", "/v1/check", check)[0] == 200
    wait_written(served)

    db = Path(served["SIDECAR_DATA_DIR"]) / "ledger.db"
    with sqlite3.connect(db) as conn:
        txns = conn.execute(
            "SELECT type, amount FROM credit_transactions WHERE account = 'sql-1' ORDER BY seq"
        ).fetchall()
        balance = conn.execute("SELECT balance FROM accounts WHERE id = 'sql-1'").fetchone()
        mode = conn.execute("PRAGMA journal_mode").fetchone()
    assert txns == [("purchase", 50), ("usage", -7)] and balance == (43,) and mode == ("wal",)

    out = cli(served, "reconcile")
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr
    out = cli(served, "reconcile", "--account", "sql-1", "--json")
    assert json.loads(out.stdout) == {"clean": True, "unwritten": 0, "differences": []}


def test_outbox_status_and_dead_letters(served: dict[str, str]) -> None:
    wait_written(served)
    out = cli(served, "outbox", "status", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["unwritten"] == 0 and body["writer"]["mode"] == "process"
    assert body["writer"]["running"] and body["writer"]["restarts"] == 0
    assert str(body["writer"]["pid"]) in body["shards"][0]["writer_lease"]
    assert "UNWRITTEN" in cli(served, "outbox", "status").stdout
    out = cli(served, "outbox", "dead-letters")
    assert json.loads(out.stdout) == {"shard": 0, "entries": []}
    out = cli(served, "outbox", "retry-dead-letters")
    assert out.returncode == 0 and "moved 0 entries" in out.stdout, out.stderr
    out = cli(served, "outbox", "retry-dead-letters", "--id", "1-1")
    assert out.returncode == 1 and "no such dead letter" in out.stderr


def test_migrate_is_idempotent_and_says_what_it_did(served: dict[str, str]) -> None:
    for _ in range(2):  # serve migrated at start
        out = cli(served, "migrate")
        assert out.returncode == 0, out.stderr
        assert re.fullmatch(r"the schema is already at revision \d+: nothing to do\n", out.stdout)


def test_flushall_then_rebuild_restores_the_running_sidecar(served: dict[str, str]) -> None:
    """What an operator does after losing Redis: rebuild from SQL, then reconcile is clean
    and the balance, buckets and a replayed request come back as before."""
    assert call(served, "PUT", "/v1/accounts/rb-1", {})[0] == 201
    grant = {"grant_id": "g", "credits": 20, "reason": "test"}
    assert call(served, "POST", "/v1/accounts/rb-1/grants", grant)[0] == 201
    check = {"account": "rb-1", "cost": 3, "idempotency_key": "r1"}
    first = call(served, "POST", "/v1/check", check)[1]
    before = call(served, "GET", "/v1/accounts/rb-1/balance")[1]
    wait_written(served)

    sock = Path(served["SIDECAR_DATA_DIR"]) / "redis" / "redis.sock"
    with redis.Redis(unix_socket_path=str(sock)) as r:
        r.flushall()
    assert call(served, "GET", "/v1/accounts/rb-1/balance")[0] == 404

    out = cli(served, "rebuild")
    assert out.returncode == 0 and "restored" in out.stdout, out.stderr
    assert call(served, "GET", "/v1/accounts/rb-1/balance")[1] == before
    replay = call(served, "POST", "/v1/check", check)[1]
    assert replay["transaction_id"] == first["transaction_id"] and replay["replayed"] is True
    assert cli(served, "reconcile").returncode == 0

    out = cli(served, "rebuild", "--account", "rb-1")
    assert out.returncode == 1 and "already exist" in out.stderr and "--replace" in out.stderr
