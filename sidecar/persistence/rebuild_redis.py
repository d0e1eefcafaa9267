"""Writes an account's state read from SQL (rebuild_sql.py) into Redis, for ``credit-sidecar
rebuild``; and what the rebuild asks Redis before writing anything.

``restore.lua`` validates the whole document and writes it in one atomic script; unless
``replace`` is given it refuses an account that exists in Redis. The global API-key index lives
in another slot, so it is written from here, after the script. Nothing is appended to the
outbox: the state is already in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from sidecar.ledger import replies
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import RestoreCounts
from sidecar.persistence.rebuild_sql import AccountState, RebuildError
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _s

REBUILD_TXID = "rebuild"  # ARGV[3] of restore.lua (no transaction is written)
_SCRIPT_ERROR = re.compile(
    r"^CS (?P<code>[A-Z_]+) (?P<detail>.*?)(?: script: \S+, on @\S+\.)?$", re.S
)


class AccountExists(RebuildError):
    """The account exists in Redis and ``replace`` was not given."""


def _script_error(account: str, e: ResponseError) -> Exception:
    m = _SCRIPT_ERROR.match(str(e))
    if m is None:
        return e
    if m["code"] == "EXISTS":
        return AccountExists(m["detail"])
    if m["code"] == "AHEAD":
        return RebuildError(
            f"{m['detail']}: checks were acknowledged while the rebuild read SQL, and "
            "replacing would undo them. Wait for the writer (credit-sidecar outbox status) "
            "and stop traffic to the account, or pass --force to restore anyway"
        )
    return RebuildError(f"account {account}: {m['detail']}")


async def restore_account(
    redis: RedisClient,
    keys: KeySpace,
    script: AsyncScript,
    state: AccountState,
    *,
    replace: bool,
    now_ms: int,
    retention_ms: int,
    force: bool = False,
) -> RestoreCounts:
    """Writes one account's state (restore.lua), then its entries in the global key index;
    returns what the script restored.

    With ``replace`` the script refuses (RebuildError) if Redis has moved past the state's
    seq since SQL was read, unless ``force``."""
    account = state.account
    mode = ("force" if force else "replace") if replace else "create"
    old_keys: dict[Any, Any] = {}
    purge: list[str] = []
    if replace:
        # What the account has in Redis and SQL does not: its old per-request records (they
        # could replay transactions SQL never saw) and its old API keys' index entries.
        old_keys = await redis.hgetall(keys.api_keys(account))
        writing = {keys.idempotency(account, k) for k in state.idempotency_keys} | {
            keys.usage(account, t) for t in state.usage_ids
        }
        for pattern in (keys.idempotency_glob(account), keys.usage_glob(account)):
            async for k in redis.scan_iter(match=pattern, count=1000):
                if _s(k) not in writing:
                    purge.append(_s(k))
    script_keys = [
        *keys.for_account(account).common(),
        keys.api_keys(account),
        *(keys.idempotency(account, k) for k in state.idempotency_keys),
        *(keys.usage(account, t) for t in state.usage_ids),
        *sorted(set(purge)),
    ]
    document = state.document | {"purge": len(set(purge))}
    args: list[str | int] = [
        account,
        now_ms,
        REBUILD_TXID,
        retention_ms,
        "",  # no deadline: an operator's command, not a caller that gives up
        orjson.dumps(document).decode(),
        mode,
    ]
    try:
        counts = replies.restore(await script(keys=script_keys, args=args))
    except ResponseError as e:
        raise _script_error(account, e) from None

    by_hash, by_id = keys.api_key_index(), keys.api_key_accounts()
    pipe = redis.pipeline(transaction=False)
    current = {k.key_id for k in state.api_keys}
    for kid, raw in old_keys.items():
        if _s(kid) not in current:
            pipe.hdel(by_id, _s(kid))
            digest = orjson.loads(raw).get("hash")
            if isinstance(digest, str):
                pipe.hdel(by_hash, digest)
    for k in state.api_keys:
        pipe.hset(by_id, k.key_id, account)  # kept after a revocation, as ApiKeys.revoke does
        if k.active:
            pipe.hset(by_hash, k.digest, f"{account}/{k.key_id}")
        else:
            pipe.hdel(by_hash, k.digest)
    await pipe.execute()
    return counts


async def existing(redis: RedisClient, keys: KeySpace, accounts: Sequence[str]) -> list[str]:
    """Those of ``accounts`` that exist in Redis."""
    out: list[str] = []
    for i in range(0, len(accounts), 1000):
        chunk = accounts[i : i + 1000]
        pipe = redis.pipeline(transaction=False)
        for a in chunk:
            pipe.exists(keys.for_account(a).account)
        found = await pipe.execute()
        out += [a for a, n in zip(chunk, found, strict=True) if n]
    return out


async def ahead_of(
    redis: RedisClient, keys: KeySpace, accounts: Sequence[str], sql_seq: dict[str, int]
) -> list[str]:
    """Those of ``accounts`` whose Redis sequence number is ahead of SQL's (``sql_seq``:
    account -> its seq in SQL): transactions not written yet."""
    ahead = []
    for a in accounts:
        raw = await redis.hget(keys.for_account(a).account, "seq")
        if raw is not None and int(raw) > sql_seq.get(a, 0):
            ahead.append(a)
    return ahead
