"""Restores the Redis ledger from the SQL ledger: the engine of ``credit-sidecar rebuild``.

Used when Redis lost state that SQL has (a FLUSHALL, a lost volume, acknowledged writes lost in
a crash), or to push an admin's correction made in SQL into Redis (README, "Correcting a
balance"). Afterwards the ledger behaves as before: the same balances and buckets in the same
burn order, bucket expiries and hold TTLs still scheduled, the same settings and API keys, and
the idempotency, usage (refund) and closed-hold records that were still inside the retention
window. A retried check, grant, hold, settle or refund is therefore answered as the first time
and never charged or credited twice. The plans SQL has come back first, on every shard
(rebuild_plans.py), and so do the sidecar's own API tokens (rebuild_tokens.py).

This module runs the command: which accounts, the checks made before anything is written, and
per account one read and one write. Reading an account's state from SQL (one snapshot each, and
what SQL does not record): rebuild_sql.py. Writing it into Redis (``restore.lua``, then the
global API-key index): rebuild_redis.py.

Only transactions the writer has put into SQL can come back, so drain the outbox first
(``unwritten`` 0 in the outbox status). Accounts that exist only in Redis are left alone.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger.keyspace import KeySpace
from sidecar.lua import Scripts
from sidecar.persistence.rebuild_plans import restore_plans
from sidecar.persistence.rebuild_redis import AccountExists, ahead_of, existing, restore_account
from sidecar.persistence.rebuild_sql import (
    RebuildError,
    account_ids,
    read_account,
    snapshot,
    sql_seqs,
)
from sidecar.persistence.rebuild_tokens import restore_tokens
from sidecar.redis.client import RedisClient

log = logging.getLogger(__name__)


async def rebuild(
    redis: RedisClient,
    keys: KeySpace,
    engine: AsyncEngine,
    *,
    account: str | None = None,
    replace: bool = False,
    force: bool = False,
    now_ms: int,
    retention_ms: int,
) -> int:
    """Restores every account of the SQL ledger (or only ``account``) into Redis; returns how
    many accounts were restored.

    Without ``replace``, nothing is written if any of them exists in Redis (AccountExists).
    With it, their Redis state is replaced by SQL's, but only where Redis holds no transaction
    SQL lacks (its seq is not ahead of SQL's), unless ``force``: checked for all of them first
    (to name every such account at once), and again atomically by restore.lua against the
    snapshot each account is restored from. ``now_ms`` is the current time (it
    decides which idempotency and usage records are still within ``retention_ms``, and how
    long they live on); ``retention_ms`` must be the sidecar's (SIDECAR_RETENTION_S).
    A failure (RebuildError) stops the rebuild at that account; those restored before it stay
    restored, and running it again with ``replace`` is safe.
    """
    if account is not None:
        accounts = [account]
    else:
        accounts = await account_ids(engine)
    if not replace:
        present = await existing(redis, keys, accounts)
        if present:
            shown = ", ".join(present[:10]) + (" ..." if len(present) > 10 else "")
            raise AccountExists(
                f"{len(present)} account(s) already exist in Redis ({shown}); "
                "rebuild with --replace to overwrite them"
            )
    if replace and not force:
        ahead = await ahead_of(redis, keys, accounts, await sql_seqs(engine))
        if ahead:
            shown = ", ".join(ahead[:10]) + (" ..." if len(ahead) > 10 else "")
            raise RebuildError(
                f"Redis has transactions SQL does not have yet for {len(ahead)} account(s) "
                f"({shown}): replacing them now would undo those transactions. Wait for the "
                "writer (credit-sidecar outbox status), or pass --force to restore anyway"
            )
    # the plans first: an account restored on a plan finds it
    await restore_plans(redis, keys, engine, now_ms=now_ms, retention_ms=retention_ms)
    await restore_tokens(redis, keys, engine, now_ms=now_ms)
    script = Scripts.register(redis).restore
    for a in accounts:
        async with snapshot(engine) as conn:
            state = await read_account(conn, a, now_ms=now_ms, retention_ms=retention_ms)
        if state is None:
            raise RebuildError(f"account {a} is not in the SQL ledger")
        if state.balance != state.sql_balance:
            log.warning(
                "account %s: its buckets give balance %d, SQL's account row says %d "
                "(a correction in SQL?); restoring the buckets",
                a,
                state.balance,
                state.sql_balance,
            )
        await restore_account(
            redis,
            keys,
            script,
            state,
            replace=replace,
            now_ms=now_ms,
            retention_ms=retention_ms,
            force=force,
        )
    return len(accounts)
