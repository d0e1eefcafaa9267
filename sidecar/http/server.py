"""The HTTP server of ``serve``: aiohttp's, with limits that keep slow or idle clients from
taking it away from the others.

aiohttp alone waits for a request's head and body as long as the client trickles them, and
takes every connection offered until the process runs out of file descriptors: 1,100
connections trickling their headers over 30 s took a sidecar down for every other client.
So each connection goes through a thin protocol of ours (:class:`Guard`) that

- closes a connection that has not sent a complete request head within
  ``SIDECAR_HTTP_HEADER_TIMEOUT_S`` of connecting, or of its first byte after a response;
- closes one whose request body has not arrived within ``SIDECAR_HTTP_BODY_TIMEOUT_S`` of its
  head (the middleware below reads every body first, under that clock);
- reads at most ``SIDECAR_HTTP_LARGE_BODY_BYTES`` of bodies above the app's 64 KiB bound (a
  route marked with :func:`body_limit`) at once: one that would pass it gets 503 and
  Retry-After before it is read;
- keeps at most ``SIDECAR_HTTP_MAX_CONNECTIONS`` open: at the limit a new connection takes the
  place of the one that has waited longest for its request head (answered 503), else of the
  longest idle keep-alive one; if every connection has a request under way, the new one is
  answered 503 and closed at once. A flood of slow connections thus churns through itself
  while new clients get in, and the process keeps descriptors for Redis.

Both timeouts answer 408 before closing (a late head's connection lingers a second, its
input discarded, so that the client reads the answer rather than a reset). Idle keep-alive
connections (a proxy's pool) are closed by aiohttp after ``SIDECAR_HTTP_KEEPALIVE_TIMEOUT_S``,
which should stay above the proxies' own idle timeouts. A connection busy with a request
(waiting for Redis, say) has no clock here: the Redis deadline bounds it. One sweep per second
(or finer, for small timeouts) checks the clocks, so a request pays no timer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import StreamReader, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_log import AccessLogger

from sidecar.http.errors import error_response
from sidecar.settings import Settings

log = logging.getLogger(__name__)

# Connection states; a clock runs in the first three. CLOSING: answered 408, lingering.
_OPENED, _HEAD, _BODY, _BUSY, _IDLE, _CLOSING = range(6)
# A connection answered 408 for its head is closed this long after (its input discarded
# meanwhile): closed at once, a client still sending would get a reset, not the answer.
_LINGER_S = 1.0
_FD_RESERVE = 256  # descriptors kept for Redis, SQL, files, the writer's pipe


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 1000
    large_body_bytes: int = 64 * 1024 * 1024

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            keepalive_timeout_s=settings.http_keepalive_timeout_s,
            max_connections=settings.http_max_connections,
            large_body_bytes=settings.http_large_body_bytes,
        )


def _raw_response(status: str, code: str, message: str) -> bytes:
    body = f'{{"error":{{"code":"{code}","message":"{message}"}}}}'.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_TOO_MANY = _raw_response(
    "503 Service Unavailable", "too_many_connections", "too many open connections; retry"
)
_TIMED_OUT = _raw_response(
    "408 Request Timeout", "request_timeout", "the request head was not received in time"
)


class _BodyTimeout(TimeoutError):
    """Set on a request body that did not arrive in time. A TimeoutError, so that aiohttp,
    draining the unread body after the 408, stops quietly."""


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, a state and a clock outside."""

    __slots__ = ("body", "guard", "handler", "since", "state", "transport")

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.handler: web.RequestHandler | None = None  # None: refused
        self.transport: asyncio.Transport | None = None
        self.state = _OPENED
        self.since = guard.loop.time()
        self.body: StreamReader | None = None  # the request body being read (BODY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.guard.admit(self):
            self.transport.write(_TOO_MANY)
            self.transport.close()
            return
        self.handler = self.guard.server()
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _IDLE:  # the first byte of the next request
            self.state, self.since = _HEAD, self.guard.loop.time()
        elif state == _CLOSING:
            return
        if self.handler is not None:
            self.handler.data_received(data)

    def eof_received(self) -> None:
        if self.handler is not None:
            self.handler.eof_received()  # returns None: the transport closes itself

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def evict(self) -> None:
        """Closed at once to make room; one still to send its request is told why."""
        if self.transport is not None and not self.transport.is_closing():
            if self.state <= _HEAD:
                self.transport.write(_TOO_MANY)
            self.transport.close()

    def expire(self) -> None:
        """Its clock ran out: answered 408 and closed."""
        self.guard.timed_out += 1
        if self.state == _BODY and self.body is not None:
            # The middleware, reading it, answers (through aiohttp) and the connection closes.
            self.state = _BUSY
            self.body.set_exception(_BodyTimeout())
            return
        self.state = _CLOSING
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(_TIMED_OUT)
            if t.can_write_eof():
                t.write_eof()
            self.guard.loop.call_later(_LINGER_S, t.close)


class Guard:
    """The connections of one listening server, their clocks and their number."""

    def __init__(self, server: web.Server, limits: Limits) -> None:
        self.server = server
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: dict[_Connection, None] = {}  # in the order they opened
        self.refused = 0  # statistics: connections answered 503 at once, ...
        self.evicted = 0  # ... closed to make room for a new one, ...
        self.timed_out = 0  # ... closed by a timeout
        self.large_bodies = 0  # bytes reserved by requests with a large body under way
        self._sweeper: asyncio.Task[None] | None = None

    def protocol(self) -> _Connection:
        return _Connection(self)

    def admit(self, conn: _Connection) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            victim = self._victim()
            if victim is None:
                self.refused += 1
                return False
            self.forget(victim)
            self.evicted += 1
            victim.evict()
        self.connections[conn] = None
        return True

    def _victim(self) -> _Connection | None:
        """One already answered 408, else the connection that has waited longest for its
        request head (a slow client), else the longest idle keep-alive one (it reconnects
        when it needs to); never one with a request under way."""
        waiting: _Connection | None = None
        idle: _Connection | None = None
        for c in self.connections:
            if c.state <= _HEAD:
                if waiting is None or c.since < waiting.since:
                    waiting = c
            elif c.state == _IDLE:
                if idle is None or c.since < idle.since:
                    idle = c
            elif c.state == _CLOSING:
                return c
        return waiting or idle

    def forget(self, conn: _Connection) -> None:
        self.connections.pop(conn, None)

    def reserve_large_body(self, size: int) -> bool:
        """Room for a body larger than the app's default bound, within
        ``large_body_bytes`` (one body is always let in, whatever its size)."""
        if self.large_bodies and self.large_bodies + size > self.limits.large_body_bytes:
            return False
        self.large_bodies += size
        return True

    def start(self) -> None:
        self._sweeper = self.loop.create_task(self._sweep(), name="http-connection-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        limits = self.limits
        interval = min(1.0, limits.header_timeout_s / 4, limits.body_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            head_before = now - limits.header_timeout_s
            body_before = now - limits.body_timeout_s
            for c in list(self.connections):
                if (c.state <= _HEAD and c.since < head_before) or (
                    c.state == _BODY and c.since < body_before
                ):
                    c.expire()


def _connection(request: web.Request) -> _Connection | None:
    transport = request.transport
    conn = transport.get_protocol() if transport is not None else None
    return conn if isinstance(conn, _Connection) else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def body_first(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reads the request body before the handler runs (so ``request.can_read_body`` is
    False in handlers: use ``body_exists``), and moves the connection's state along: head
    done; body read under its clock; busy; idle. Without a guarded connection (the tests'
    servers) the body is read all the same, without a clock. A route that declares a
    ``body_limit`` (sidecar/http/contract.py) is read up to its own bound."""
    limit = getattr(request.match_info.handler, "body_limit", None)
    bound = 0
    if limit is not None:
        bound = limit(request.app)
        request = request.clone(client_max_size=bound)
    conn = _connection(request)
    if conn is None:
        if request.body_exists and (failed := await _read_body(request)) is not None:
            return failed
        return await handler(request)
    loop = conn.guard.loop
    reserved = 0
    try:
        if bound and request.body_exists:
            # Unauthenticated (Stripe's signature is checked once the body is in): without a
            # budget, every connection could hold a body of the route's bound at once.
            need = min(request.content_length or bound, bound)
            if not conn.guard.reserve_large_body(need):
                response = error_response(
                    503,
                    "busy",
                    "too many large request bodies under way; retry",
                    headers={"Retry-After": "1"},
                )
                response.force_close()
                return response
            reserved = need
        if request.body_exists:
            conn.state, conn.since, conn.body = _BODY, loop.time(), request.content
            try:
                failed = await _read_body(request)
            finally:
                conn.body = None
            if failed is not None:
                return failed
        conn.state = _BUSY
        return await handler(request)
    finally:
        conn.guard.large_bodies -= reserved
        conn.state, conn.since = _IDLE, loop.time()


async def _read_body(request: web.Request) -> web.Response | None:
    """Reads the body (kept: the handler's own read() gets it); None when it arrived, else
    the answer for a body that did not: 408 on its clock, and for a client gone mid-body
    (aiohttp's "Connection lost") a 400 nobody reads, without an error logged.

    The failure is stored in the request's stream, and its traceback holds the frames that
    hold the request, the stream and the part of the body received: a reference cycle that
    only the cyclic GC frees, rarely, since it counts objects, not bytes. A flood of clients
    abandoning their bodies then kept gigabytes alive. Dropping the traceback here breaks the
    cycle, so the buffers go when the request does."""
    try:
        await request.read()
        return None
    except (_BodyTimeout, ConnectionResetError) as e:
        e.__traceback__ = e.__context__ = e.__cause__ = None
        if isinstance(e, _BodyTimeout):
            response = error_response(
                408, "request_timeout", "the request body was not received in time"
            )
        else:
            response = error_response(400, "incomplete_body", "the connection closed mid-body")
        response.force_close()
        return response


def _raise_fd_limit(limits: Limits) -> None:
    """Room for the connection limit: a process out of descriptors cannot reach Redis."""
    need = limits.max_connections + _FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < need:
            log.warning(
                "open file limit %d is below SIDECAR_HTTP_MAX_CONNECTIONS (%d) + %d: lower "
                "the limit or raise ulimit -n",
                soft,
                limits.max_connections,
                _FD_RESERVE,
            )


async def listen(
    runner: web.AppRunner,
    host: str,
    port: int,
    limits: Limits,
    *,
    reuse_port: bool = False,
    backlog: int = 1024,  # aiohttp's 128 drops SYNs in a burst of connects (1 s retries)
) -> tuple[asyncio.Server, Guard]:
    """Serves ``runner``'s app (set up) on host:port through a :class:`Guard`."""
    assert runner.server is not None, "runner.setup() first"
    guard = Guard(runner.server, limits)
    server = await guard.loop.create_server(
        guard.protocol,
        host,
        port,
        backlog=backlog,
        reuse_port=reuse_port or None,
    )
    guard.start()
    return server, guard


def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: Limits,
    reuse_port: bool = False,
    access_log: logging.Logger | None = None,
    access_log_class: type[AbstractAccessLogger] = AccessLogger,
    loop: asyncio.AbstractEventLoop,
    shutdown_timeout: float = 60.0,
) -> None:
    """``web.run_app`` for a guarded server: serves until SIGTERM or SIGINT, then stops
    accepting, answers the requests in flight (within ``shutdown_timeout``) and cleans up
    the app, as ``web.run_app`` does."""
    _raise_fd_limit(limits)

    async def serve() -> None:
        kwargs: dict[str, Any] = {"access_log_class": access_log_class}
        runner = web.AppRunner(
            app,
            handle_signals=True,  # SIGTERM/SIGINT raise GracefulExit here
            access_log=access_log,
            keepalive_timeout=limits.keepalive_timeout_s,
            # a body left unread (413) is drained for at most this long
            lingering_time=min(10.0, limits.body_timeout_s),
            shutdown_timeout=shutdown_timeout,
            **kwargs,
        )
        await runner.setup()
        server: asyncio.Server | None = None
        guard: Guard | None = None
        try:
            server, guard = await listen(runner, host, port, limits, reuse_port=reuse_port)
            await loop.create_future()  # until GracefulExit (or cancelled)
        finally:
            if server is not None:
                server.close()  # no new connections; the open ones finish their requests
            if guard is not None:
                await guard.stop()
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    main = loop.create_task(serve())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        if rest:
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
