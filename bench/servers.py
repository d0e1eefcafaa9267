"""The servers a benchmark measures against, private to one run: a redis-server on a free port
in a temp dir, a temporary PostgreSQL database, fresh SQLite files; and the process ids whose
CPU the run reports."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.harness import BenchFailure, Pids
from sidecar.persistence.db import create_engine, migrate, resolve_url
from sidecar.persistence.models import Base
from sidecar.redis.client import RedisClient
from sidecar.redis.embedded import RedisServer, free_port

PG_ADMIN_URL = os.environ.get("SIDECAR_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgresql")


def psql(url: str, sql: str) -> None:
    try:
        subprocess.run(
            ["psql", url, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", b"") or b""
        raise BenchFailure(f"psql {sql!r} failed: {e} {err.decode(errors='replace')}") from e


def postgres_pids(database: str) -> list[int]:
    """The PostgreSQL server's background processes and the backends serving ``database``
    (backends of other databases, e.g. a test suite running meanwhile, are not ours)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if p.joinpath("comm").read_text().strip() != "postgres":
                    continue
                title = p.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode()
                backend = "(" in title  # "postgres: user db 127.0.0.1(port) idle"
                if not backend or f" {database} " in title:
                    pids.append(int(p.name))
    return pids


class Databases:
    """Fresh, migrated, empty ledger databases: a new SQLite file per call, and one temporary
    PostgreSQL database truncated before each use."""

    def __init__(self, tmp: Path, pg_admin_url: str) -> None:
        self.tmp = tmp
        self.pg_admin_url = pg_admin_url
        self.pg_name = f"cs_bench_{os.getpid()}"
        self.pg_url = f"{pg_admin_url.rsplit('/', 1)[0]}/{self.pg_name}"
        self._runs = 0

    def create_pg(self) -> None:
        psql(self.pg_admin_url, f"DROP DATABASE IF EXISTS {self.pg_name}")
        psql(self.pg_admin_url, f"CREATE DATABASE {self.pg_name}")

    def drop_pg(self) -> None:
        psql(self.pg_admin_url, f"DROP DATABASE IF EXISTS {self.pg_name} WITH (FORCE)")

    async def fresh(self, backend: str) -> AsyncEngine:
        """An engine on an empty, migrated database (its URL: ``url_of(engine)``)."""
        self._runs += 1
        if backend == "sqlite":
            url = resolve_url(None, self.tmp / "sqlite" / f"run-{self._runs}")
        else:
            url = resolve_url(self.pg_url, self.tmp)
        engine = create_engine(url)
        await migrate(engine)
        if backend == "postgresql":
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            async with engine.begin() as conn:
                await conn.execute(text(f"TRUNCATE {tables} CASCADE"))
        async with engine.connect() as conn:  # the pool holds a live connection, as in service
            await conn.execute(text("SELECT 1"))
        return engine

    async def versions(self) -> dict[str, Any]:
        """SQLite's and PostgreSQL's versions and the settings that decide write speed."""
        pg = create_engine(resolve_url(self.pg_url, self.tmp))
        try:
            async with pg.connect() as conn:
                pg_settings = {
                    k: (await conn.execute(text(f"SHOW {k}"))).scalar()
                    for k in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
                }
        finally:
            await pg.dispose()
        return {
            "sqlite": f"{sqlite3.sqlite_version} (WAL, synchronous=FULL)",
            "postgresql": pg_settings,
        }


async def redis_version(client: RedisClient) -> str:
    info: Any = await client.info("server")
    return f"{info.get('redis_version')} (AOF appendfsync everysec, as embedded)"


def url_of(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=False)


@dataclass
class Servers:
    tmp: Path  # removed at the end, with the SQLite files and Redis's AOF in it
    redis: RedisServer
    dbs: Databases

    def watched(self) -> dict[str, Pids]:
        """The servers' processes, for CpuProbe."""
        assert self.redis.process is not None
        redis_pid = self.redis.process.pid
        return {
            "redis_server": lambda: [redis_pid],
            "postgres": lambda: postgres_pids(self.dbs.pg_name),
        }


@contextlib.asynccontextmanager
async def started(prefix: str, pg_admin_url: str = PG_ADMIN_URL) -> AsyncIterator[Servers]:
    """A private redis-server (AOF everysec, the embedded default) and PostgreSQL database,
    and a temp dir for SQLite files; all removed at the end."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    servers = Servers(
        tmp, RedisServer(tmp / "redis", port=free_port()), Databases(tmp, pg_admin_url)
    )
    try:
        servers.redis.start()
        servers.dbs.create_pg()
        yield servers
    finally:
        with contextlib.suppress(BenchFailure):  # a cleanup failure must not hide the cause
            servers.dbs.drop_pg()
        servers.redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
