"""Builds the sidecar's Redis client: hiredis parser, bounded timeouts, retries with backoff.

Retrying a script call is safe because every mutation carries an id and is idempotent;
the retries ride out a lost connection and a server restarting and loading its AOF. Once
Redis has refused connections for longer than a restart does, calls fail at once instead
(sidecar/redis/breaker.py).

A ``redis+cluster://host:port`` URL (or ``rediss+cluster://``) means a Redis Cluster: any
node's address; the client discovers the rest, follows MOVED and ASK redirections, and finds
the new master after a failover. Every script's keys share one hash tag, so each call is
served by one node.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.redis.breaker import breaker_for, give_up

# What every part of the sidecar talks to: one server (or a primary with replicas), or a
# cluster. Both offer the commands we use on keys of one slot.
RedisClient = Redis | RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def text(v: bytes | str) -> str:
    """A Redis reply as text, whether the client decodes replies or not."""
    return v.decode() if isinstance(v, bytes) else v


async def ping(client: RedisClient) -> None:
    """Returns once the server answers PING; raises what the client raises if it does not."""
    await client.ping()


class _HiredisPacking:
    """Packs commands with hiredis (C) instead of redis-py's asyncio packer (pure Python,
    microseconds per argument): every script call's ARGV, and the writer's XACK of a whole
    batch of ids, are on hot paths."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        if any(isinstance(a, bytearray | memoryview) for a in args):
            args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        try:
            return [hiredis.pack_command(args)]
        except (TypeError, ValueError) as e:  # a type it cannot send, a str not valid UTF-8
            raise DataError(f"a command argument cannot be sent to Redis: {e}") from None


class FastConnection(_HiredisPacking, Connection):
    async def _connect(self) -> None:
        with breaker_for((self.host, self.port)).attempt():
            await super()._connect()  # type: ignore[no-untyped-call]


class FastUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    async def _connect(self) -> None:
        with breaker_for(self.path).attempt():
            await super()._connect()  # type: ignore[no-untyped-call]


def connect(
    url: str, *, retries: int = 12, max_connections: int = 64, decode_responses: bool = False
) -> RedisClient:
    """A client whose pool makes callers wait for a free connection rather than fail."""
    backoff = ExponentialBackoff(cap=0.5, base=0.01)
    if is_cluster_url(url):
        scheme, _, rest = url.partition("://")
        # The retries also cover a failover: on a connection error or CLUSTERDOWN the client
        # reloads the slot map and tries the slot's new master (so a refused connect is
        # retried here: a replica may be about to take over).
        return RedisCluster.from_url(
            f"{CLUSTER_SCHEMES[scheme]}://{rest}",
            decode_responses=decode_responses,
            max_connections=max_connections,
            retry=Retry(backoff, retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_timeout=5,
            socket_connect_timeout=2,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=decode_responses,
        max_connections=max_connections,
        timeout=10,
        retry=Retry(backoff, retries, is_retryable=lambda e: not give_up(e)),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_timeout=5,
        socket_connect_timeout=2,
    )
    if pool.connection_class is UnixDomainSocketConnection:
        pool.connection_class = FastUnixConnection
    elif pool.connection_class is Connection:
        pool.connection_class = FastConnection
    return Redis.from_pool(pool)
