"""The layout's rules (docs/development.md, "Layout"), checked on the source: no module is too long
to read as one job (the sidecar's, and the Python and TypeScript clients'), and the HTTP layer
builds no SQL and talks to Redis only through the layers below it (ledger/, persistence/,
redis/), where the key names (ledger/keyspace.py) are built."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline

from sidecar.ledger.keyspace import PREFIX

ROOT = Path(__file__).resolve().parent.parent
SIDECAR = ROOT / "sidecar"
# Where the line limit applies: the sidecar's package and the clients' sources, by file suffix
# (the TypeScript client's .js and its .d.ts declarations alike).
SOURCES: dict[Path, tuple[str, ...]] = {
    SIDECAR: (".py",),
    ROOT / "clients" / "python" / "src": (".py",),
    ROOT / "clients" / "typescript" / "src": (".js", ".ts"),
}
MAX_LINES = 520
# Modules allowed to be longer because what they hold is data, not code: path -> why.
DATA_ONLY: dict[str, str] = {}

# What calling Redis looks like: every public method of redis-py's clients and pipelines ...
REDIS_METHODS = {
    n for cls in (Redis, RedisCluster, Pipeline) for n in dir(cls) if not n.startswith("_")
}
# ... but for the names they share with everyday objects (dict.get, Event.set, loop.time,
# log.info, list.append, response.json, a dead letter's retry, server.py's own connections'
# expire, and the clients the app factory opens and closes).
EVERYDAY = {"get", "set", "time", "info", "append", "json", "retry", "expire", "aclose", "close"}
# What calling SQL looks like (SQLAlchemy's connections and engines).
SQL_METHODS = {"execute", "exec_driver_sql", "scalar", "scalars", "stream", "begin", "connect"}
# Whatever is called on something named like a client is a call to it (but opening and
# closing it in the app factory).
CLIENTS = {"redis", "client", "pipe", "pipeline", "engine", "conn"}
LIFECYCLE = {"aclose", "close", "dispose"}
KEY_NAME = re.compile(rf"(?<![\w/]){re.escape(PREFIX)}:")


def _modules(under: Path, suffixes: tuple[str, ...] = (".py",)) -> list[Path]:
    return sorted(
        p
        for p in under.rglob("*")
        if p.suffix in suffixes
        and p.is_file()
        and not {"__pycache__", "node_modules"} & set(p.parts)
    )


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_the_line_limit_sees_every_source_tree() -> None:
    """An empty or moved tree would make the limit below pass by checking nothing."""
    for under, suffixes in SOURCES.items():
        assert _modules(under, suffixes), f"no {'/'.join(suffixes)} files under {_rel(under)}"
    found = {_rel(p) for p in _modules(ROOT / "clients" / "typescript" / "src", (".js", ".ts"))}
    assert {"clients/typescript/src/index.js", "clients/typescript/src/index.d.ts"} <= found


def test_no_module_is_over_the_line_limit_but_data() -> None:
    long = {
        _rel(p): n
        for under, suffixes in SOURCES.items()
        for p in _modules(under, suffixes)
        if (n := len(p.read_text().splitlines())) > MAX_LINES and _rel(p) not in DATA_ONLY
    }
    assert long == {}, (
        f"over the {MAX_LINES}-line limit (sidecar/, clients/python/src, clients/typescript/src "
        "(.js and .d.ts)): split each along a seam, one job per module with a header saying "
        "what it is for, and keep the public import paths (docs/development.md, Layout): "
        + ", ".join(f"{path} ({n} lines)" for path, n in sorted(long.items()))
    )
    for path in DATA_ONLY:  # the exceptions stay true
        assert len((ROOT / path).read_text().splitlines()) > MAX_LINES, path


def _terminal(node: ast.expr) -> str | None:
    """``redis`` of ``redis``, ``ledger.redis`` or ``self.redis``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _offences(source: str) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.append(node.module)
            out += [
                f"line {node.lineno}: imports {m}"
                for m in modules
                if m.split(".")[0] in ("sqlalchemy", "redis")
            ]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, on = node.func.attr, _terminal(node.func.value)
            if name in SQL_METHODS or (name in REDIS_METHODS and name not in EVERYDAY):
                out.append(f"line {node.lineno}: calls .{name}()")
            elif on in CLIENTS and name not in LIFECYCLE:
                out.append(f"line {node.lineno}: calls {on}.{name}()")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and KEY_NAME.search(node.value)
        ):
            out.append(f"line {node.lineno}: a Redis key name {node.value!r}")
    return out


def test_the_http_layer_builds_no_sql_and_calls_no_redis_command_itself() -> None:
    found = {_rel(p): o for p in _modules(SIDECAR / "http") if (o := _offences(p.read_text()))}
    assert found == {}, "move it behind a function of ledger/, persistence/ or redis/"


def test_the_scan_sees_what_the_readiness_probe_used_to_do() -> None:
    """The rule's own check: what sidecar/http/health.py did before it moved below."""
    before = """
from redis.asyncio import RedisCluster
from sqlalchemy import text
async def readyz(ledger, billing, embedded):
    pipe = ledger.redis.pipeline(transaction=False)
    pipe.set(ledger.keys.ready_probe(0), 1, px=60_000)
    await ledger.redis.script_exists("sha")
    await embedded.ping()
    await ledger.redis.get(f"cs:{{0}}:ready")
    async with billing.sql.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
"""
    flagged = [o.split(":")[0] for o in _offences(before)]
    # every line but the def's; line 9 twice (a client's get, a key name built here)
    assert sorted(flagged, key=lambda o: int(o.split()[1])) == [
        f"line {n}" for n in (2, 3, 5, 6, 7, 8, 9, 9, 10, 11)
    ]
    after = """
from sidecar.redis.client import ping
async def readyz(ledger, app, stop, embedded):
    await readiness.accepts_writes(ledger.redis, ledger.keys, 1, 60_000)
    await db.probe(app.get(BILLING).sql.engine)
    await ping(embedded)
    stop.set()
"""
    assert _offences(after) == []
