"""Engines for the SQL ledger: URL defaults, SQLite pragmas, migrations at start, and the
readiness probe's one statement."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sidecar.runtime.datadir import private_file

if TYPE_CHECKING:
    from sidecar.settings import Settings

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def resolve_url(url: str | None, data_dir: Path) -> str:
    """The async SQLAlchemy URL: default SQLite file in the data dir; plain driver names are
    mapped to the async drivers (postgresql:// → asyncpg, sqlite:// → aiosqlite)."""
    if not url:
        return f"sqlite+aiosqlite:///{(data_dir / 'ledger.db').resolve()}"
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        u = u.set(drivername="postgresql+asyncpg")
    elif u.drivername in ("sqlite", "sqlite+pysqlite"):
        u = u.set(drivername="sqlite+aiosqlite")
    return u.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL: readers never block the writer. synchronous=FULL: a commit the writer has
    # acknowledged (and XACKed) survives a power loss, not only a process crash.
    cur = dbapi_conn.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=FULL",
        "busy_timeout=10000",
        "foreign_keys=ON",
        # 64 MiB of page cache (default 2 MiB): the writer's index updates stop re-reading
        # pages from the OS on every batch.
        "cache_size=-65536",
    ):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# orjson: several times faster than json for the writer's per-row JSON columns.
_JSON: dict[str, Any] = {"json_serializer": _dumps, "json_deserializer": orjson.loads}


def create_engine(url: str, *, pool_size: int = 5, max_overflow: int = 5) -> AsyncEngine:
    """An engine for ``url``. ``pool_size`` and ``max_overflow`` size PostgreSQL's connection
    pool; SQLite keeps SQLAlchemy's default pool (one file, one writer at a time)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
            # Created 0600 before SQLite opens it: its -wal and -shm files get the same mode.
            private_file(Path(u.database))
        engine = create_async_engine(url, pool_pre_ping=False, **_JSON)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True, **_JSON
    )


def engine_for(settings: Settings) -> AsyncEngine:
    """The SQL ledger's engine as ``settings`` configure it (URL and pool size)."""
    return create_engine(
        resolve_url(settings.database_url, settings.data_dir),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )


# SQLSTATE classes that say the server cannot serve us now, not that a statement is wrong:
# connection exception, insufficient resources (too many connections, disk full), operator
# intervention (shutting down, cannot connect now, query canceled), system error (I/O).
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


def sqlstate(e: BaseException) -> str | None:
    """The SQLSTATE of a wrapped DBAPI error (asyncpg and psycopg name it differently)."""
    orig = getattr(e, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def unavailable(e: BaseException) -> bool:
    """Whether ``e``, raised by a statement, means the SQL ledger is out of reach or busy (so
    the call may succeed later) rather than that the statement or its data is wrong. Errors
    raised while *opening* a connection are always unavailability: callers map those
    separately (see ``sidecar.billing.stores.sql.Sql.tx``)."""
    if isinstance(e, sa_exc.IntegrityError | sa_exc.DataError | sa_exc.ProgrammingError):
        return False
    if isinstance(
        e,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.TimeoutError  # no pooled connection free in time
        | OSError
        | TimeoutError,
    ):
        return True
    if isinstance(e, sa_exc.DBAPIError):
        state = sqlstate(e)
        return e.connection_invalidated or (state is not None and state[:2] in _UNAVAILABLE_CLASSES)
    return False


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Brings the schema to ``revision``; idempotent, and safe for several processes at once
    (`serve`, its writer, its workers): PostgreSQL serializes them on an advisory lock, SQLite
    on a file lock next to the database. Returns the revision before and after (None: no
    schema)."""
    revisions: list[str | None] = []

    def upgrade(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(748213)")
        revisions.append(MigrationContext.configure(conn).get_current_revision())
        command.upgrade(alembic_config(conn), revision)
        revisions.append(MigrationContext.configure(conn).get_current_revision())

    lock_fd = None
    db = engine.url.database
    if engine.url.get_backend_name() == "sqlite" and db and db != ":memory:":
        lock_fd = await _flock(f"{db}.migrate-lock")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases the lock
    return revisions[0], revisions[1]


async def migrate_while_unreachable(engine: AsyncEngine, stop: asyncio.Event) -> None:
    """Brings the schema up to date (:func:`migrate`), retried with backoff while SQL is
    unreachable, until done or ``stop`` is set: SQL being down does not stop a sidecar from
    starting."""
    backoff = 0.2
    while not stop.is_set():
        try:
            await migrate(engine)
            return
        except Exception as e:
            log.warning("SQL ledger not migrated yet (%s); retrying in %.1fs", e, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 10.0)


async def probe(engine: AsyncEngine) -> None:
    """One trivial statement on a connection of ``engine``; raises what SQL raises if it does
    not answer (``/readyz`` reports it)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _flock(path: str) -> int:
    """An exclusive lock on ``path``, polled (a cancelled wait leaves nothing behind)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                await asyncio.sleep(0.05)
    except BaseException:
        os.close(fd)
        raise
