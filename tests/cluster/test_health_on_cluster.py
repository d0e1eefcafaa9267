"""Readiness (tests/http/test_health.py) against a Redis Cluster: the write probe reaches the
slot of every shard."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import create_app
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.http.test_health import (  # noqa: F401
    client_now,
    test_ready_when_redis_scripts_and_sql_answer,
    test_scripts_flushed_from_the_cache_are_loaded_again,
)


async def test_ready_writes_a_probe_into_every_shards_slot(
    settings: Settings, redis: RedisClient
) -> None:
    sharded = settings.model_copy(update={"shards": 8})
    async with TestClient(TestServer(create_app(sharded))) as c:
        # (each check has a one-second budget: on a busy machine six servers on two cores may
        # miss it at first; asked again until ready, within a generous bound)
        deadline = time.monotonic() + 30
        r = await c.get("/readyz")
        while r.status != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            r = await c.get("/readyz")
        body: dict[str, Any] = await r.json()
        assert r.status == 200, body
    keys = KeySpace(8)
    for shard in range(8):
        assert await redis.exists(keys.ready_probe(shard)) == 1
