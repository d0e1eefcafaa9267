"""The sidecar's own API tokens in ``credit-sidecar rebuild`` and ``reconcile`` (docs/tokens.md).

SQL keeps each token's record as columns (``api_tokens``, from the kind=token outbox entries).
``rebuild`` puts every record back into shard 0's tokens hash encoded exactly as token.lua's
``jenc`` wrote it (:func:`record_json`), so a restored record is the same bytes and every token
still verifies, with ``restore_tokens.lua``: no outbox entry (SQL has them already), and the
tokens' version moved past any a serving process still holds, so each one reloads.

Redis stays the authority while it has a token: a record SQL lacks (Redis lost it) comes back,
and so does one SQL has further along (revoked where Redis' is not, or changed later: Redis lost
that change), but a record Redis has changed since SQL last heard of it (the writer has not
caught up) is kept; ``reconcile`` names it. Tokens are never deleted, so nothing else can differ.
``reconcile`` compares each record in Redis and SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.tokens import VERSION_FIELD
from sidecar.lua import Scripts
from sidecar.persistence.models import ApiToken, table_of
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _s

log = logging.getLogger(__name__)

TOKENS = table_of(ApiToken)

# lua-cjson's escapes (Redis' cjson.encode): the control characters, '"', '\\', '/' and DEL;
# every other character as its UTF-8 bytes.
_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x5C: "\\\\",
    0x2F: "\\/",
    0x7F: "\\u007f",
}


def lua_json(v: Any) -> str:
    """``v`` as _lib.lua's ``jenc`` encodes it: integers exact, objects with sorted keys, an
    empty list or object as ``[]``, strings as cjson.encode writes them."""
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.translate(_ESCAPES) + '"'
    if isinstance(v, list | tuple) or (isinstance(v, dict) and not v):
        return "[" + ",".join(lua_json(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{lua_json(k)}:{lua_json(v[k])}" for k in sorted(v)) + "}"
    raise TypeError(f"token.lua writes no {type(v).__name__}")


def record_json(row: Any) -> str:
    """A row of api_tokens as the record token.lua keeps in Redis (its exact text)."""
    return lua_json(
        {
            "id": row.id,
            "name": row.name,
            "scopes": orjson.loads(row.scopes),
            "account_prefix": row.account_prefix,
            "hash": row.token_hash,
            "previous": orjson.loads(row.previous),
            "created_at": row.created_ms,
            "rotated_at": row.rotated_ms,
            "revoked_at": row.revoked_ms,
        }
    )


async def sql_tokens(engine: AsyncEngine) -> dict[str, str]:
    """Every token the SQL ledger has: id -> its record as token.lua wrote it."""
    async with engine.connect() as conn:
        found: Sequence[Any] = (await conn.execute(select(TOKENS).order_by(TOKENS.c.id))).all()
    return {r.id: record_json(r) for r in found}


async def redis_tokens(redis: RedisClient, keys: KeySpace) -> dict[str, str]:
    """Every token record in shard 0's tokens hash: id -> its text."""
    raw: dict[Any, Any] = await redis.hgetall(keys.tokens())
    return {_s(k): _s(v) for k, v in raw.items() if _s(k) != VERSION_FIELD}


def _progress(raw: str) -> tuple[bool, int]:
    """How far a record has come: revoked (for good), then its last change's time (a record
    that does not read as one: not at all)."""
    r = _parsed(raw)
    if not isinstance(r, dict):
        return False, -1
    times = [r.get("created_at"), r.get("rotated_at"), r.get("revoked_at")]
    return r.get("revoked_at") is not None, max((t for t in times if type(t) is int), default=-1)


async def restore_tokens(
    redis: RedisClient, keys: KeySpace, engine: AsyncEngine, *, now_ms: int
) -> int:
    """Writes the SQL ledger's token records Redis lacks or has behind into shard 0's tokens
    hash (see the module's docstring); returns how many were written."""
    sql = await sql_tokens(engine)
    if not sql:
        return 0
    current = await redis_tokens(redis, keys)
    args: list[str | int] = [now_ms]
    for token_id, raw in sql.items():
        have = current.get(token_id)
        if have == raw:
            continue
        if have is not None and _progress(raw) <= _progress(have):
            log.warning(
                "token %s: Redis' record is newer than SQL's (the writer has not caught up?); kept",
                token_id,
            )
            continue
        args += [token_id, have or "", raw]
    if len(args) == 1:
        return 0
    script = Scripts.register(redis).restore_tokens
    written, _ = await script(keys=[keys.tokens()], args=args)
    return int(written)


async def token_differences(
    redis: RedisClient, keys: KeySpace, engine: AsyncEngine
) -> list[tuple[str, str, Any, Any]]:
    """(token, what, Redis', SQL's) for each token whose record differs between Redis and SQL
    (``what``: "missing in redis", "missing in sql", "record"; records compared as JSON)."""
    sql = await sql_tokens(engine)
    first = await redis_tokens(redis, keys)
    out: list[tuple[str, str, Any, Any]] = []
    for t in sorted(set(first) | set(sql)):
        r, s = first.get(t), sql.get(t)
        if r is None:
            out.append((t, "missing in redis", None, "present"))
        elif s is None:
            out.append((t, "missing in sql", "present", None))
        elif _parsed(r) != _parsed(s):
            out.append((t, "record", _parsed(r), _parsed(s)))
    return out


def _parsed(raw: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
