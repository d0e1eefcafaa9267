"""What ``GET /readyz`` asks of the ledger's Redis: that it accepts a write where the ledger
writes, and that the ledger's scripts are in its script cache.

The HTTP layer (sidecar/http/health.py) bounds each of these by its timeout and reports the
outcome; the Redis commands and the probe's key name (keyspace.py) are here.
"""

from __future__ import annotations

import dataclasses

from redis.asyncio import RedisCluster

from sidecar.ledger.keyspace import KeySpace
from sidecar.lua import Scripts
from sidecar.redis.client import RedisClient


async def accepts_writes(redis: RedisClient, keys: KeySpace, value: int, ttl_ms: int) -> None:
    """Writes the readiness probe key (``value``, expiring after ``ttl_ms``); raises what Redis
    raises if it refuses.

    A write, not a PING: a Redis out of memory (noeviction), a read-only replica or one missing
    its min-replicas answers PING but refuses every check. On a cluster, every shard's slot
    (each may live on another primary)."""
    shards = range(keys.shards) if isinstance(redis, RedisCluster) else range(1)
    pipe = redis.pipeline(transaction=False)
    for shard in shards:
        pipe.set(keys.ready_probe(shard), value, px=ttl_ms)
    await pipe.execute()


async def load_missing_scripts(redis: RedisClient, scripts: Scripts) -> tuple[int, int]:
    """Loads those of the ledger's scripts missing from Redis's script cache (after a Redis
    restart or SCRIPT FLUSH; on a cluster, on every primary); returns how many scripts there
    are and how many were loaded."""
    every = [getattr(scripts, f.name) for f in dataclasses.fields(scripts)]
    exists = await redis.script_exists(*(s.sha for s in every))
    missing = [s for s, there in zip(every, exists, strict=True) if not there]
    for s in missing:  # the next call would load it (EVAL): load it now instead
        await redis.script_load(s.script)
    return len(every), len(missing)
