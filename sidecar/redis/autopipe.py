"""Auto-pipelining: script calls made concurrently on one event loop go to Redis together.

Every call made while the loop is busy with other callbacks joins one batch, sent at the
loop's next turn as one pipeline (one write, one read on one connection) instead of one
round trip each; a single call in flight goes out at once, alone. Batches in flight overlap
(each has its own connection), so the pipeline depth adapts to the load. Replies are matched
to callers in order; an error reply fails only its own call.

Each call is packed as it joins, in its caller's context: one that cannot be sent (a str that
is not valid UTF-8, an argument of another type) fails alone with ``DataError`` and never
joins a batch, so one caller's bad bytes cannot fail the others' calls.

A script missing from the server's cache (restart, SCRIPT FLUSH) is sent again with EVAL,
which loads and runs it in one step, so a flush never fails a call. A call the server could
not run yet (``LOADING`` after a restart, ``BUSY`` with another script, a cluster's
``TRYAGAIN`` while its slot migrates) is sent again, with backoff, within the deadline.

A lost connection is reopened and the batch sent again within the deadline; once Redis has
refused connections for longer than a restart does, a batch fails at once
(sidecar/redis/breaker.py).
A batch that fails before any of its sends reached a connection fails with :class:`NotSent`:
its calls certainly did not run (a caller that would undo them need not, sidecar/ledger/voids.py).

On a Redis Cluster a batch goes out as redis-py's cluster pipeline instead: it splits the
batch by slot owner, sends one pipeline per master, and follows MOVED and ASK redirections
and a failover's new topology (every call's keys share one slot).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterError,
    DataError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.redis.breaker import give_up
from sidecar.redis.resp import RespChannel

# Small enough that several batches are in flight at once (client and server overlap), large
# enough to save most round trips: 32 measured best on 2 cores (bench: 9.4k -> ~20k calls/s).
MAX_BATCH = 32
CHANNELS = 4  # connections batches are spread over
MAX_BACKOFF_S = 0.5

# Error replies that mean "not run; send it again shortly": the server is loading its data
# (BusyLoadingError is a ConnectionError), the slot is migrating or moved (TRYAGAIN, ASK,
# MOVED; ClusterError: redis-py's own retries of those ran out), the cluster is reconfiguring
# (CLUSTERDOWN, a ClusterError), a cluster node's connection failed under one command.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, TryAgainError, AskError, ClusterError)


class NotSent(RedisConnectionError):
    """The call failed before it was written to any connection: it did not run."""


def _transient(reply: Any) -> bool:
    if isinstance(reply, _TRANSIENT):
        return True
    # BUSY: another script is running past the busy threshold; ours runs once it is done.
    return isinstance(reply, ResponseError) and str(reply).startswith("BUSY ")


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    keys: list[str]
    args: list[str | int]
    future: asyncio.Future[Any]
    packed: bytes  # the command as RESP
    evalsha: bool = True  # False once the server said NOSCRIPT: sent again with EVAL
    written: bool = False  # handed to a connection at least once (it may have run)

    def command(self) -> tuple[Any, ...]:
        c = self.script
        name, body = ("EVALSHA", c.sha) if self.evalsha else ("EVAL", c.script)
        return (name, body, len(self.keys), *self.keys, *self.args)

    def use_eval(self) -> None:
        self.evalsha = False
        # EVAL's extra argument is the script's own text: packing it cannot fail.
        self.packed = hiredis.pack_command(self.command())


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
        # Single node: lean connections of our own (sidecar/redis/resp.py), set up like the
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
        """The script's reply; its error reply as an exception; ``DataError`` if an argument
        cannot be sent (checked here, before the call joins a batch)."""
        # Packed now, alone: the batch joins packed calls. hiredis takes the same types as
        # redis-py's encoder (str, bytes, int, float), so this checks the cluster path too.
        try:
            command: Any = ("EVALSHA", script.sha, len(keys), *keys, *args)
            packed = hiredis.pack_command(command)
        except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
            raise DataError(f"a script argument cannot be sent to Redis: {e}") from None
        # The loop, once: get_running_loop costs a getpid() system call on every use.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        call = _Call(script, keys, args, loop.create_future(), packed)
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
                await self._sent(batch)
        except BaseException as e:  # refused, the deadline passed, or cancelled
            for c in batch:
                if not c.future.done():
                    error = e if isinstance(e, Exception) else ConnectionError(str(e))
                    if not c.written:
                        error = NotSent(f"not sent: {error!r}")
                        error.__cause__ = e
                    c.future.set_exception(error)
            if not isinstance(e, Exception):
                raise

    async def _sent(self, batch: list[_Call]) -> None:
        """Sends the batch and answers each call as its reply arrives; sends again the calls
        the server could not run yet, until every call is answered (or the deadline)."""
        todo, backoff = batch, 0.01
        while True:
            replies = await self._pipeline(todo)
            again: list[_Call] = []
            wait = False
            for c, r in zip(todo, replies, strict=True):
                if isinstance(r, NoScriptError) and c.evalsha:
                    c.use_eval()  # EVAL loads and runs it: no wait needed
                    again.append(c)
                elif _transient(r):
                    again.append(c)
                    wait = True
                else:
                    # Answered now: a failure of a later send must not tell a call that ran
                    # that it failed.
                    _settle(c, r)
            todo = [c for c in again if not c.future.done()]
            if not todo:
                return
            if wait:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        """One reply (or error reply) per call; retries a lost connection until the deadline."""
        if self._cluster is not None:
            return await self._cluster_pipeline(self._cluster, calls)
        payload = _payload(calls)
        backoff = 0.01
        while True:  # until the batch's deadline: a connection lost, say
            channel = self._channels[self._next % len(self._channels)]
            self._next += 1
            writes = channel.writes
            try:
                return await channel.send(payload, len(calls))
            except BaseException as e:
                if not isinstance(e, RedisConnectionError) or give_up(e):
                    # cancelled, or nothing listens past a restart: fail now, not at the deadline
                    raise
                # Safe to send again: every script call is idempotent by its ids.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            finally:
                if channel.writes != writes:  # (or another batch's write: erring on "written")
                    for c in calls:
                        c.written = True

    @staticmethod
    async def _cluster_pipeline(cluster: RedisCluster, calls: list[_Call]) -> list[Any]:
        commands = [c.command() for c in calls]
        for c in calls:
            c.written = True  # (redis-py's pipeline does not say whether it wrote)
        backoff = 0.01
        while True:  # until the batch's deadline: a failover, say
            pipe = cluster.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            try:
                return list(await pipe.execute(raise_on_error=False))
            except (RedisError, RedisClusterException, OSError, AttributeError):
                # Safe to send again: every script call is idempotent by its ids. (During a
                # failover redis-py 8.1 can also fail a connection torn down under it with
                # AttributeError: its writer is already gone.)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def _payload(calls: list[_Call]) -> bytes:
    """The batch's write: its calls' packed commands."""
    return b"".join([c.packed for c in calls])


def _settle(c: _Call, reply: Any) -> None:
    if c.future.done():  # answered already, or the caller gave up
        return
    if isinstance(reply, Exception):
        c.future.set_exception(reply)
    else:
        c.future.set_result(reply)
