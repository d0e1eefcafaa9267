"""Builds the sidecar's Redis client: hiredis parser, bounded timeouts, retries with backoff.

Retrying a script call is safe because every mutation carries an id and is idempotent;
the retries ride out a server restart (and AOF loading) of a few seconds.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def connect(
    url: str, *, retries: int = 12, max_connections: int = 64, decode_responses: bool = False
) -> Redis:
    """A client whose pool makes callers wait for a free connection rather than fail."""
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=decode_responses,
        max_connections=max_connections,
        timeout=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_timeout=5,
        socket_connect_timeout=2,
    )
    return Redis.from_pool(pool)
