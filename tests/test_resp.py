"""The hot path's lean Redis connection: replies in order, error replies as redis-py's
exceptions, a dropped connection fails its waiters and the next call reconnects."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from sidecar.redis.resp import RespChannel


def channel(redis: Redis) -> RespChannel:
    return RespChannel(dict(redis.connection_pool.connection_kwargs))


async def test_replies_come_back_in_order_with_errors_as_exceptions(redis: Redis) -> None:
    ch = channel(redis)
    try:
        replies = await ch.execute(
            [("SET", "k", "v"), ("GET", "k"), ("EVALSHA", "0" * 40, 0), ("INCR", "k")]
        )
        assert replies[:2] == [b"OK", b"v"]
        assert isinstance(replies[2], NoScriptError)
        assert isinstance(replies[3], ResponseError) and not isinstance(replies[3], NoScriptError)
    finally:
        ch.close()


async def test_a_dropped_connection_fails_its_waiters_and_the_next_call_reconnects(
    redis: Redis,
) -> None:
    ch = channel(redis)
    try:
        assert await ch.execute([("CLIENT", "SETNAME", "resp-test")]) == [b"OK"]
        blocked = asyncio.ensure_future(ch.execute([("BLPOP", "nothing", 5)]))
        await asyncio.sleep(0.1)
        await redis.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(RedisConnectionError):
            await blocked
        assert await ch.execute([("PING",)]) == [b"PONG"]
    finally:
        ch.close()
