"""The SQL commands (`migrate`, `reconcile`, `rebuild`, `archive`) against a PostgreSQL that
refuses the connection end in one line naming the ledger (password hidden) and the reason,
exit 1, instead of a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.conftest import cli
from tests.http.test_sql_unavailable import _refuse
from tests.sqlbackend import fresh_database, psql

pytestmark = pytest.mark.own_database  # PostgreSQL, whatever SIDECAR_TEST_SQL says


@pytest.mark.parametrize("how", ["allow_connections_false", "database_gone"])
def test_sql_commands_on_a_refusing_ledger_fail_in_one_line(tmp_path: Path, how: str) -> None:
    with fresh_database() as url:
        name = url.rsplit("/", 1)[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env |= {
            "SIDECAR_DATA_DIR": str(tmp_path),
            "SIDECAR_DATABASE_URL": url.replace("postgres@", "postgres:pw-not-shown@"),
        }
        refuse, undo = _refuse(name, how)
        psql(*refuse)
        try:
            for command in (["migrate"], ["reconcile"], ["rebuild"], ["archive", "--before=90d"]):
                out = cli(env, *command)
                assert out.returncode == 1, (command, out.stdout, out.stderr)
                assert "Traceback" not in out.stderr, command
                lines = out.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error: SQL ledger "), lines
                assert name in lines[0] and "pw-not-shown" not in lines[0]
        finally:
            psql(*undo)
