"""The SQL backend of the app-level tests, and fresh PostgreSQL databases for tests.

A pytest plugin (pyproject's ``addopts`` loads it with ``-p tests.sqlbackend``). By default it
does nothing: the app-level tests (tests/e2e, tests/billing, tests/cli, tests/http) build their
``Settings`` without a database URL, so their SQL ledger is SQLite in the test's data dir.

With ``SIDECAR_TEST_SQL=postgresql`` every test module and every test gets a fresh PostgreSQL
database of its own, named in ``SIDECAR_DATABASE_URL`` for its duration: ``Settings()`` reads
that variable for every field a test does not pass, and the ``serve``, ``writer`` and CLI
processes the tests start inherit it. Module-scoped servers (tests/cli's ``served``) get the
module's database, everything else the test's. The databases are copies of a template migrated
once per session with ``credit-sidecar migrate`` (the app's own migration at start then has
nothing to do), made ahead and dropped behind by a background thread, so a test waits for
neither; each is dropped (connections and all) once its test or module is over. ``make test``
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


class Copies:
    """Copies of a template database, made ahead and dropped behind by threads of their own,
    so a test waits for neither (a copy takes about 0.2 s, a drop 0.1 s; several threads
    make them at once, and copies go before drops)."""

    CREATE, DROP, STOP = 0, 1, 2  # job priorities

    def __init__(self, template: str, ahead: int = 3, threads: int = 3) -> None:
        self.template = template
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
                    self._ready.put(name)
                else:
                    psql(_drop(name))
            except Exception as e:
                if kind == self.CREATE:
                    self._ready.put(e)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A copy of the template, dropped (in the background) on exit; yields its URL."""
        self._job(self.CREATE, _new_name())  # the next test's
        got = self._ready.get(timeout=120)
        if isinstance(got, Exception):
            raise got
        try:
            yield database_url(got)
        finally:
            self._job(self.DROP, got)

    def close(self) -> None:
        """Waits for the drops, then drops the copies nobody took."""
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
    """A fresh copy of the template named in SIDECAR_DATABASE_URL until exit; then the
    variable is as it was and the database goes."""
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


def pytest_report_header() -> str:
    return f"SQL ledger of the app-level tests: {backend()} (SIDECAR_TEST_SQL)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if backend() != "postgresql":
        return
    reasons = {
        "sqlite_only": "checks SQLite specifics",
        "own_database": "picks its own database: the SQLite pass ran it already",
    }
    for item in items:
        for marker, reason in reasons.items():
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=f"SIDECAR_TEST_SQL=postgresql: {reason}"))


@pytest.fixture(scope="session")
def sql_copies() -> Iterator[Copies | None]:
    """With SIDECAR_TEST_SQL=postgresql: copies of a database migrated by ``credit-sidecar
    migrate`` (every test's database is one); else None."""
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
