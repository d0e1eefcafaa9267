"""A lean Redis connection for the hot path: commands go out as RESP packed by hiredis, replies
are parsed by hiredis and handed to their waiters in order (Redis answers in order), with no
per-command timers, pool checkouts or retry wrappers. The auto-pipeline (sidecar/redis/autopipe.py)
sends its batches through a few of these; everything else uses redis-py.

Error replies come back as redis-py's exception objects (``NoScriptError`` for a flushed
script, ``BusyLoadingError`` while the server loads its data, ``ResponseError`` otherwise), so
callers treat them as before. A lost connection fails its waiters with ``ConnectionError`` and
the next send reconnects; a connect that fails at once (refused) raises a ``ConnectionError``
whose cause is :class:`sidecar.redis.breaker.ConnectFailed` (see sidecar/redis/breaker.py).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, cast

import hiredis
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from sidecar.redis.breaker import ConnectFailed, breaker_for


def _error(reply: Exception) -> Exception:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith("LOADING"):
        return BusyLoadingError(message)
    return ResponseError(message)


class _Batch:
    """The replies of one write's commands, handed over together once all have arrived."""

    __slots__ = ("future", "replies", "size")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future = future
        self.replies: list[Any] = []
        self.size = size


class RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        # One waiter per write, not per command: a batch costs one future, not one each
        # plus a gather.
        self.waiters: collections.deque[_Batch] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        # Kept: get_running_loop() costs a getpid() system call on every use.
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as e:
                self._fail(RedisConnectionError(f"protocol error: {e}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            if not self.waiters:  # nobody asked: the stream is out of step
                self._fail(RedisConnectionError("unexpected reply"))
                if self.transport is not None:
                    self.transport.close()
                return
            batch = self.waiters[0]
            batch.replies.append(_error(reply) if isinstance(reply, hiredis.ReplyError) else reply)
            if len(batch.replies) == batch.size:
                self.waiters.popleft()
                if not batch.future.done():
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        self.lost = error
        while self.waiters:
            batch = self.waiters.popleft()
            if not batch.future.done():
                batch.future.set_exception(error)


class RespChannel:
    """One connection, (re)opened on demand from a redis-py pool's connection settings."""

    def __init__(self, connection_kwargs: dict[str, Any]) -> None:
        self.kw = connection_kwargs
        self.protocol: RespProtocol | None = None
        self._connecting: asyncio.Lock | None = None
        self.writes = 0  # payloads handed to a connection (sidecar/redis/autopipe.py: NotSent)
        # A socket path, or (host, port): also the key of the address's breaker.
        self._address: str | tuple[str, int] = self.kw.get("path") or (
            self.kw.get("host", "127.0.0.1"),
            self.kw.get("port", 6379),
        )
        self._breaker = breaker_for(self._address)

    async def _connect(self) -> RespProtocol:
        loop = asyncio.get_running_loop()
        kw = self.kw
        timeout = kw.get("socket_connect_timeout") or 2
        with self._breaker.attempt():
            async with asyncio.timeout(timeout):
                if isinstance(self._address, str):
                    _, protocol = await loop.create_unix_connection(RespProtocol, self._address)
                else:
                    _, protocol = await loop.create_connection(RespProtocol, *self._address)
        setup: list[tuple[Any, ...]] = []
        if kw.get("password"):
            user = kw.get("username")
            setup.append(("AUTH", user, kw["password"]) if user else ("AUTH", kw["password"]))
        if kw.get("db"):
            setup.append(("SELECT", kw["db"]))
        for reply in await self._send(protocol, setup) if setup else []:
            if isinstance(reply, Exception):
                assert protocol.transport is not None
                protocol.transport.close()
                raise RedisConnectionError(f"connection setup refused: {reply}")
        return protocol

    @staticmethod
    async def _send(protocol: RespProtocol, commands: list[tuple[Any, ...]]) -> list[Any]:
        payload = b"".join([hiredis.pack_command(c) for c in commands])
        return await RespChannel._write(protocol, payload, len(commands))

    @staticmethod
    async def _write(protocol: RespProtocol, payload: bytes, count: int) -> list[Any]:
        batch = _Batch(protocol.loop.create_future(), count)
        protocol.waiters.append(batch)
        assert protocol.transport is not None
        protocol.transport.write(payload)
        return await batch.future

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Sends ``commands`` in one write; their replies (error replies as exceptions).

        Packing is all or nothing: a command hiredis cannot pack (a str that is not valid
        UTF-8, an argument of another type) raises before anything is sent. Callers that
        batch other callers' commands pack each one first and use :meth:`send`."""
        payload = b"".join([hiredis.pack_command(c) for c in commands])
        return await self.send(payload, len(commands))

    async def send(self, payload: bytes, count: int) -> list[Any]:
        """Sends ``count`` commands already packed into ``payload``; their replies."""
        protocol = self.protocol
        if protocol is None or protocol.lost is not None or protocol.transport is None:
            if self._connecting is None:
                self._connecting = asyncio.Lock()
            async with self._connecting:
                protocol = self.protocol
                if protocol is None or protocol.lost is not None:
                    try:
                        protocol = self.protocol = await self._connect()
                    except ConnectFailed as e:  # refused: the cause says so (breaker.give_up)
                        raise RedisConnectionError(f"Redis refused the connection: {e}") from e
                    except (OSError, TimeoutError) as e:
                        raise RedisConnectionError(f"cannot connect to Redis: {e}") from e
        self.writes += 1  # before the write: a caller can tell whether its payload went out
        try:
            return await self._write(protocol, payload, count)
        except BaseException:
            # Cancelled or failed mid-way: replies may still arrive for these commands, and
            # the next batch must not read them as its own.
            self.close()
            raise

    def close(self) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
