"""The SQL backend of the app-level tests, and fresh PostgreSQL databases for tests.

A pytest plugin (pyproject's ``addopts`` loads it with ``-p tests.sqlbackend``). By default it
does nothing: the app-level tests (tests/e2e, tests/billing, tests/cli, tests/http) build their
``Settings`` without a database URL, so their SQL ledger is SQLite in the test's data dir.

With ``SIDECAR_TEST_SQL=postgresql`` every test module and every test gets a fresh PostgreSQL
database of its own, named in ``SIDECAR_DATABASE_URL`` for its duration: ``Settings()`` reads
that variable for every field a test does not pass, and the ``serve``, ``writer`` and CLI
processes the tests start inherit it. Module-scoped servers (tests/cli's ``served``) get the
module's database, everything else the test's. The databases are equal to a template migrated
once per session with ``credit-sidecar migrate`` (the app's own migration at start then has
nothing to do): copies made ahead, and once a test or module is over its database is cut off
(connections and all, and renamed) and emptied back to the template's state for a later test
(:class:`Copies`), by background threads, so a test waits for neither. ``make test``
runs the whole suite as is, then the SQL-touching directories again this way.

The server is the one tests/persistence uses: ``SIDECAR_TEST_PG`` (an admin URL, default
``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("SIDECAR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgresql")

_names = itertools.count()


def backend() -> str:
    """The SQL backend the app-level tests run on: ``SIDECAR_TEST_SQL``, default sqlite."""
    value = os.environ.get("SIDECAR_TEST_SQL", "sqlite").strip().lower() or "sqlite"
    if value not in BACKENDS:
        raise pytest.UsageError(f"SIDECAR_TEST_SQL must be one of {', '.join(BACKENDS)}: {value!r}")
    return value


def psql(*statements: str) -> None:
    """Runs statements as the PostgreSQL admin, each in its own transaction (CREATE and DROP
    DATABASE cannot run in one), over one connection."""
    subprocess.run(
        ["psql", PG_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-q", *(f"-c{s}" for s in statements)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def query(url: str, sql: str) -> list[list[str]]:
    """The rows of one query on database ``url``, as text (psql's unaligned output)."""
    out = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-AtF", "\t", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [line.split("\t") for line in out.stdout.splitlines()]


def database_url(name: str) -> str:
    """The URL of database ``name`` on the tests' PostgreSQL server."""
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


@contextlib.contextmanager
def fresh_database(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (empty, or a copy of ``template``), dropped on exit even if
    clients are still connected; yields its URL."""
    name = _new_name()
    psql(_drop(name), _create(name, template))  # a leftover of a killed run with our pid
    try:
        yield database_url(name)
    finally:
        psql(_drop(name))


def _new_name() -> str:
    return f"cs_t{os.getpid()}_{next(_names)}"


def _create(name: str, template: str | None) -> str:
    return f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")


def _drop(name: str) -> str:
    return f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"


def _terminate(name: str) -> str:
    return (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608 (our names)
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


# What makes a database the template's: its tables, columns, indexes, schemas and revision.
_FINGERPRINT = """SELECT md5(concat_ws('|',
  (SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace),
  (SELECT string_agg(concat_ws(' ', table_name, column_name, data_type, is_nullable,
                               column_default), ',' ORDER BY table_name, column_name)
     FROM information_schema.columns WHERE table_schema = 'public'),
  (SELECT string_agg(indexdef, ',' ORDER BY indexdef) FROM pg_indexes
     WHERE schemaname = 'public'),
  (SELECT string_agg(version_num, ',') FROM alembic_version)))"""


class Copies:
    """Databases equal to a template, made ahead and recycled behind by threads of their own,
    so a test waits for neither.

    A copy (CREATE DATABASE ... TEMPLATE) takes about 0.2 s and a drop 0.7 s of a server that
    every worker shares, far more than most tests; so a database a test is done with is
    recycled instead: its connections are ended and it is renamed (a process the test left
    behind cannot reach it under its old name, as if it were dropped), then every row of every
    table but the revision's is deleted, which leaves it equal to the template (whose tables
    are all empty). It is checked for that (:data:`_FINGERPRINT`: tables, columns, indexes,
    revision), and dropped, and a fresh copy made, if it is not. Several threads do this at
    once."""

    CREATE, RECYCLE, STOP = 0, 1, 2  # job priorities

    def __init__(self, template: str, ahead: int = 3, threads: int = 3) -> None:
        self.template = template
        self._fingerprint = query(database_url(template), _FINGERPRINT)
        tables = query(
            database_url(template),
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'",
        )
        sequences = query(
            database_url(template),
            "SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = 'public'",
        )
        # One transaction, then the fingerprint. DELETE rather than TRUNCATE: a fifth of the
        # time (no new files to sync); the replica role skips the foreign keys' triggers, so
        # the order of the tables does not matter.
        self._empty = "".join(
            ["SET session_replication_role = replica;"]
            + [f"DELETE FROM {t};" for (t,) in tables]  # noqa: S608 (the template's tables)
            + [f"ALTER SEQUENCE {q} RESTART;" for (q,) in sequences]
            + [_FINGERPRINT]
        )
        self._ready: queue.Queue[str | Exception] = queue.Queue()
        self._jobs: queue.PriorityQueue[tuple[int, int, str]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._threads = [
            threading.Thread(target=self._work, name=f"sql-copies-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()
        for _ in range(ahead):
            self._job(self.CREATE, _new_name())

    def _job(self, kind: int, name: str) -> None:
        self._jobs.put((kind, next(self._seq), name))

    def _work(self) -> None:
        while True:
            kind, _, name = self._jobs.get()
            if kind == self.STOP:
                return
            try:
                if kind == self.CREATE:
                    psql(_drop(name), _create(name, self.template))
                else:
                    name = self._recycle(name)
                self._ready.put(name)
            except Exception as e:
                self._ready.put(e)

    def _recycle(self, name: str) -> str:
        """``name`` emptied back to the template's state, under a new name (or else a fresh
        copy); returns the new name."""
        new = _new_name()
        for _ in range(20):
            try:
                psql(_terminate(name), f"ALTER DATABASE {name} RENAME TO {new}")
                break
            except subprocess.SubprocessError:
                time.sleep(0.05)  # an ended connection is still going away, or came back
        else:
            psql(_drop(name), _drop(new), _create(new, self.template))
            return new
        try:
            # The last line: psql prints the command tags of the statements before it.
            same = query(database_url(new), self._empty)[-1:] == self._fingerprint
        except subprocess.SubprocessError:  # a table of the template's gone, or a timeout
            same = False
        if not same:  # a test changed the schema: start again from the template
            psql(_drop(new), _create(new, self.template))
        return new

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A database equal to the template, recycled (in the background) on exit; yields its
        URL."""
        got = self._ready.get(timeout=120)
        if isinstance(got, Exception):
            raise got
        try:
            yield database_url(got)
        finally:
            self._job(self.RECYCLE, got)  # ready for a later test

    def close(self) -> None:
        """Waits for the recycling, then drops every database it holds."""
        for _ in self._threads:
            self._job(self.STOP, "")
        for t in self._threads:
            t.join(120)
        names = []
        while not self._ready.empty():
            got = self._ready.get()
            if isinstance(got, str):
                names.append(got)
        if names:
            psql(*(_drop(n) for n in names))


def migrate_cli(url: str) -> None:
    """``credit-sidecar migrate`` against ``url``; fails the caller with its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["SIDECAR_DATABASE_URL"] = url
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0 or "created the schema" not in out.stdout:
        raise RuntimeError(f"credit-sidecar migrate failed on {url}: {out.stdout}{out.stderr}")


@contextlib.contextmanager
def _database_in_env(copies: Copies) -> Iterator[str]:
    """A database equal to the template named in SIDECAR_DATABASE_URL until exit; then the
    variable is as it was and the database is recycled."""
    before = os.environ.get("SIDECAR_DATABASE_URL")
    with copies.database() as url:
        os.environ["SIDECAR_DATABASE_URL"] = url
        try:
            yield url
        finally:
            if before is None:
                os.environ.pop("SIDECAR_DATABASE_URL", None)
            else:
                os.environ["SIDECAR_DATABASE_URL"] = before


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: checks SQLite specifics; skipped when SIDECAR_TEST_SQL=postgresql"
    )
    config.addinivalue_line(
        "markers",
        "own_database: picks its SQL database itself (SIDECAR_TEST_SQL changes nothing); "
        "skipped when SIDECAR_TEST_SQL=postgresql, as a repeat of the default pass",
    )
    config.addinivalue_line(
        "markers",
        "sql_free: never reaches the SQL ledger (its writer is off, it reads nothing from SQL); "
        "skipped when SIDECAR_TEST_SQL=postgresql, as a repeat of the default pass",
    )
    config.addinivalue_line(
        "markers",
        "sql_bystander: reaches the SQL ledger only as a bystander (the writer's sink, the app's "
        "start); what it tests is processes, signals, HTTP or the network, which the backend "
        "does not change: skipped when SIDECAR_TEST_SQL=postgresql, as a repeat",
    )


def pytest_report_header() -> str:
    return f"SQL ledger of the app-level tests: {backend()} (SIDECAR_TEST_SQL)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if backend() != "postgresql":
        return
    reasons = {
        "sqlite_only": "checks SQLite specifics",
        "own_database": "picks its own database: the SQLite pass ran it already",
        "sql_free": "never reaches SQL: the SQLite pass ran it already",
        "sql_bystander": "SQL is only a bystander of what it tests: the SQLite pass ran it",
    }
    for item in items:
        for marker, reason in reasons.items():
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=f"SIDECAR_TEST_SQL=postgresql: {reason}"))


@pytest.fixture(scope="session")
def sql_copies() -> Iterator[Copies | None]:
    """With SIDECAR_TEST_SQL=postgresql: databases equal to one migrated by ``credit-sidecar
    migrate`` (every test's database is one of them); else None."""
    if backend() != "postgresql":
        yield None
        return
    template = f"cs_tmpl{os.getpid()}"
    psql(_drop(template), _create(template, None))
    try:
        migrate_cli(database_url(template))
        copies = Copies(template)
        try:
            yield copies
        finally:
            copies.close()
    finally:
        psql(_drop(template))


@pytest.fixture(scope="module", autouse=True)
def _module_sql_database(sql_copies: Copies | None) -> Iterator[None]:
    """Each module's own database (for module-scoped servers), on PostgreSQL runs."""
    if sql_copies is None:
        yield
        return
    with _database_in_env(sql_copies):
        yield


@pytest.fixture(autouse=True)
def _test_sql_database(sql_copies: Copies | None, _module_sql_database: None) -> Iterator[None]:
    """Each test's own database, on PostgreSQL runs."""
    if sql_copies is None:
        yield
        return
    with _database_in_env(sql_copies):
        yield
