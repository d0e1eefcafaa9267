"""Plans in ``credit-sidecar rebuild`` and ``reconcile`` (docs/plans.md).

``rebuild`` puts every plan the SQL ledger has (and has not deleted) back on every shard with
plan.lua, before the accounts on them, appending no outbox entry (SQL has them already). How
many of a shard's accounts are on a plan (``n:<plan>``) is the accounts' part: :func:`plan_counts`
says what SQL has. ``reconcile`` compares each plan's definition in Redis and SQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import false, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.errors import RebuildError, SidecarError
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.plans import put_args, put_stamp, run_plan_script
from sidecar.ledger.redis_calls import CALL_DEADLINE_S
from sidecar.ledger.results import Plan
from sidecar.lua import Scripts
from sidecar.persistence.models import Account, table_of
from sidecar.persistence.models import Plan as PlanRow
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _s

PLANS = table_of(PlanRow)
REBUILD_TXID = "rebuild"  # ARGV[3] of plan.lua (no entry is appended)


async def sql_plans(engine: AsyncEngine) -> dict[str, tuple[dict[str, Any], bool]]:
    """Every plan the SQL ledger has not deleted: id -> (definition, is_default)."""
    async with engine.connect() as conn:
        found: Sequence[Any] = (
            await conn.execute(
                select(PLANS.c.id, PLANS.c.definition, PLANS.c.is_default)
                .where(PLANS.c.deleted == false())
                .order_by(PLANS.c.id)
            )
        ).all()
    return {r.id: (_json(r.definition), bool(r.is_default)) for r in found}


def _json(v: Any) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(v) if isinstance(v, str | bytes) else v
    return out


async def restore_plans(
    redis: RedisClient, keys: KeySpace, engine: AsyncEngine, *, now_ms: int, retention_ms: int
) -> int:
    """Writes every plan of the SQL ledger into every shard's plans hash (the default plan
    last: putting it moves the flag); returns how many. RebuildError naming a plan Redis
    refuses (one being deleted)."""
    found = await sql_plans(engine)
    script = Scripts.register(redis).plan
    for order, plan_id in enumerate(sorted(found, key=lambda p: (found[p][1], p))):
        definition, is_default = found[plan_id]
        try:
            plan = dataclasses.replace(Plan.from_json(definition), default=is_default)
        except (KeyError, TypeError, ValueError) as e:
            raise RebuildError(f"plan {plan_id}: SQL's definition is not a plan's: {e}") from None
        common: list[str | int] = [plan_id, now_ms, REBUILD_TXID, retention_ms, ""]
        stamp = put_stamp(now_ms, f"{REBUILD_TXID}.{order:06d}")  # the default last: greatest
        for shard in range(keys.shards):
            try:
                await run_plan_script(
                    redis,
                    script,
                    keys,
                    shard,
                    common,
                    "put",
                    [*put_args(plan), stamp],
                    deadline_s=CALL_DEADLINE_S,
                    entry=False,
                )
            except SidecarError as e:
                raise RebuildError(f"plan {plan_id}: {e.message}") from None
    return len(found)


async def plan_counts(engine: AsyncEngine, keys: KeySpace) -> dict[int, dict[str, int]]:
    """How many accounts are on each plan, per shard (shards without any left out), as the SQL
    ledger says: what the shards' ``n:<plan>`` should be."""
    async with engine.connect() as conn:
        found = (
            await conn.execute(select(Account.id, Account.plan).where(Account.plan.is_not(None)))
        ).all()
    counts: dict[int, dict[str, int]] = {}
    for account, plan in found:
        per = counts.setdefault(keys.shard_of(account), {})
        per[str(plan)] = per.get(str(plan), 0) + 1
    return counts


async def plan_differences(
    redis: RedisClient, keys: KeySpace, engine: AsyncEngine
) -> list[tuple[str, str, Any, Any]]:
    """(plan, what, Redis', SQL's) for each plan whose definition differs between shard 0 and
    SQL, or between another shard and shard 0 (``what``: "missing in redis", "missing in
    sql", "definition", "shard <n>")."""
    sql = {p: d for p, (d, _) in (await sql_plans(engine)).items()}
    shards = [await _definitions(redis, keys, s) for s in range(keys.shards)]
    out: list[tuple[str, str, Any, Any]] = []
    first = shards[0]
    for p in sorted(set(first) | set(sql)):
        r, s = first.get(p), sql.get(p)
        if r is None:
            out.append((p, "missing in redis", None, "present"))
        elif s is None:
            out.append((p, "missing in sql", "present", None))
        elif r != s:
            out.append((p, "definition", r, s))
    for n, other in enumerate(shards[1:], 1):
        for p in sorted(set(first) | set(other)):
            if other.get(p) != first.get(p):
                out.append((p, f"shard {n}", other.get(p), first.get(p)))
    return out


async def _definitions(redis: RedisClient, keys: KeySpace, shard: int) -> dict[str, Any]:
    raw: dict[Any, Any] = await redis.hgetall(keys.plans(shard))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if _s(k).startswith("d:"):
            try:
                out[_s(k)[2:]] = orjson.loads(v)
            except orjson.JSONDecodeError:
                out[_s(k)[2:]] = _s(v)
    return out
