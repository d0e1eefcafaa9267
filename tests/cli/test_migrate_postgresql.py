"""`credit-sidecar migrate` on PostgreSQL (SIDECAR_DATABASE_URL=postgresql://…): it builds the
whole schema at the newest revision in an empty database, several at once are safe, and
running it again changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from sidecar.persistence.db import alembic_config
from sidecar.persistence.models import Base
from tests.cli.conftest import cli
from tests.sqlbackend import fresh_database, query

pytestmark = pytest.mark.own_database  # PostgreSQL, whatever SIDECAR_TEST_SQL says

COLUMNS = (
    "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
    "WHERE table_schema = 'public' ORDER BY table_name, column_name"
)


def test_migrate_builds_the_schema_on_an_empty_postgresql_database_and_is_idempotent(
    tmp_path: Path,
) -> None:
    with fresh_database() as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env |= {"SIDECAR_DATABASE_URL": url, "SIDECAR_DATA_DIR": str(tmp_path)}
        # Three at once, as when several sidecars start together: the advisory lock
        # serializes them.
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "sidecar", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        # one of them created the schema, the others found it there
        said = sorted(out.split(" at revision")[0] for out, _ in outs)
        assert said == ["created the schema", "the schema is already", "the schema is already"]

        tables = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert {t for (t,) in tables} == set(Base.metadata.tables) | {"alembic_version"}
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert query(url, "SELECT version_num FROM alembic_version") == [[head]]

        before = query(url, COLUMNS)
        again = cli(env, "migrate")
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
        assert query(url, COLUMNS) == before
        assert query(url, "SELECT version_num FROM alembic_version") == [[head]]
        assert not (tmp_path / "ledger.db").exists()  # no SQLite ledger on the side
