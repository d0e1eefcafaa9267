"""Auto-pipelining: script calls made concurrently on one event loop go to Redis together.

Every call made while the loop is busy with other callbacks joins one batch, sent at the
loop's next turn as one pipeline (one write, one read on one connection) instead of one
round trip each; a single call in flight goes out at once, alone. Batches in flight overlap
(each has its own connection), so the pipeline depth adapts to the load. Replies are matched
to callers in order; an error reply fails only its own call.

A script missing from the server's cache (restart, SCRIPT FLUSH) is sent again with EVAL,
which loads and runs it in one step, so a flush never fails a call.

On a Redis Cluster a batch goes out as redis-py's cluster pipeline instead: it splits the
batch by slot owner, sends one pipeline per master, and follows MOVED and ASK redirections
and a failover's new topology (every call's keys share one slot).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from sidecar.resp import RespChannel

# Small enough that several batches are in flight at once (client and server overlap), large
# enough to save most round trips: 32 measured best on 2 cores (bench: 9.4k -> ~20k calls/s).
MAX_BATCH = 32
CHANNELS = 4  # connections batches are spread over


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    keys: list[str]
    args: list[str | int]
    future: asyncio.Future[Any]


class AutoPipeline:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        max_batch: int = MAX_BATCH,
        deadline_s: float = 5.0,
        channels: int = CHANNELS,
    ) -> None:
        self.redis = redis
        self._cluster = redis if isinstance(redis, RedisCluster) else None
        # Single node: lean connections of our own (sidecar/resp.py), set up like the
        # client's pool.
        self._channels = (
            [RespChannel(dict(redis.connection_pool.connection_kwargs)) for _ in range(channels)]
            if isinstance(redis, Redis)
            else []
        )
        self._next = 0
        self.max_batch = max_batch
        self.deadline_s = deadline_s  # for a whole batch, retries included
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self.batches = 0  # statistics: pipelines sent, calls sent
        self.calls = 0

    async def run(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        # The loop, once: get_running_loop costs a getpid() system call on every use.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        call = _Call(script, keys, args, loop.create_future())
        self._pending.append(call)
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await call.future

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        batch = [c for c in batch if not c.future.done()]  # callers that gave up
        if not batch:
            return
        assert self._loop is not None
        task = self._loop.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            async with asyncio.timeout(self.deadline_s):
                replies = await self._sent(batch)
        except BaseException as e:  # the connection failed (after its retries), or cancelled
            for c in batch:
                if not c.future.done():
                    c.future.set_exception(
                        e if isinstance(e, Exception) else ConnectionError(str(e))
                    )
            if not isinstance(e, Exception):
                raise
            return
        for c, r in zip(batch, replies, strict=True):
            _settle(c, r)

    async def _sent(self, batch: list[_Call]) -> list[Any]:
        replies = await self._pipeline(batch, evalsha=True)
        missing = [c for c, r in zip(batch, replies, strict=True) if isinstance(r, NoScriptError)]
        if missing:
            # The calls that ran are answered now: a failure of the retry must not tell them
            # they failed (they happened).
            for c, r in zip(batch, replies, strict=True):
                if not isinstance(r, NoScriptError):
                    _settle(c, r)
            again = dict(
                zip(map(id, missing), await self._pipeline(missing, evalsha=False), strict=True)
            )
            replies = [again.get(id(c), r) for c, r in zip(batch, replies, strict=True)]
        return replies

    async def _pipeline(self, calls: list[_Call], *, evalsha: bool) -> list[Any]:
        commands: list[tuple[Any, ...]] = [
            (
                "EVALSHA" if evalsha else "EVAL",
                c.script.sha if evalsha else c.script.script,
                len(c.keys),
                *c.keys,
                *c.args,
            )
            for c in calls
        ]
        backoff = 0.01
        while self._cluster is not None:  # until the batch's deadline: a failover, say
            pipe = self._cluster.pipeline(transaction=False)
            for c in commands:
                pipe.execute_command(*c)
            try:
                return list(await pipe.execute(raise_on_error=False))
            except (RedisError, RedisClusterException, OSError, AttributeError):
                # Safe to send again: every script call is idempotent by its ids. (During a
                # failover redis-py 8.1 can also fail a connection torn down under it with
                # AttributeError: its writer is already gone.)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
        while True:  # until the batch's deadline: Redis restarting, say
            channel = self._channels[self._next % len(self._channels)]
            self._next += 1
            try:
                return await channel.execute(commands)
            except RedisConnectionError:
                # Safe to send again: every script call is idempotent by its ids.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def _settle(c: _Call, reply: Any) -> None:
    if c.future.done():  # answered already, or the caller gave up
        return
    if isinstance(reply, Exception):
        c.future.set_exception(reply)
    else:
        c.future.set_result(reply)
