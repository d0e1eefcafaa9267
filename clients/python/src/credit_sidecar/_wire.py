"""How a request travels, for both clients: one HTTP exchange in, an :class:`Answer` or a
:class:`NoAnswer` out, so the clients' retry rule and parsing never see a library's types.

- The async client sends with aiohttp (:class:`AiohttpWire`): a quarter of httpx's CPU per call,
  which is most of what a middleware adds to a request (``make bench-middleware``). Its session
  is made on first use, inside the running loop, and again for another loop.
- The sync client sends with httpx (:class:`HttpxWire`); either client takes an httpx transport
  instead (``transport=``: a test's, an in-process app's), sent through httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from yarl import URL


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer, read whole. ``headers`` is case-insensitive."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def header_dict(self) -> dict[str, str]:
        """The headers with lowercase names (an error's ``headers``)."""
        return {k.lower(): v for k, v in self.headers.items()}


class NoAnswer(Exception):
    """The exchange failed without an answer. ``not_sent``: no byte of the request left (a
    refused connection, no free connection in time), so sending it again is always safe."""

    def __init__(self, cause: BaseException, *, not_sent: bool) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}".rstrip(": "))
        self.cause = cause
        self.not_sent = not_sent


# httpx's errors raised before a byte of the request left
_HTTPX_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _httpx_answer(response: httpx.Response) -> Answer:
    return Answer(response.status_code, response.headers, response.content)


class HttpxWire:
    """The sync client's wire."""

    def __init__(self, base_url: str, transport: httpx.BaseTransport | None) -> None:
        # the environment's proxies are not used (as aiohttp, the async client's wire), but
        # SSL_CERT_FILE / SSL_CERT_DIR still name a private sidecar's CA, as before
        self._http = httpx.Client(
            base_url=base_url,
            transport=transport,
            trust_env=False,
            verify=httpx.create_ssl_context(trust_env=True),
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        params: Mapping[str, str] | None,
        limit_s: float,
    ) -> Answer:
        try:
            response = self._http.request(
                method,
                path,
                headers=_utf8(headers),
                content=content,
                params=params,
                timeout=limit_s,
            )
        except httpx.TransportError as e:
            raise NoAnswer(e, not_sent=isinstance(e, _HTTPX_NOT_SENT)) from e
        return _httpx_answer(response)

    def close(self) -> None:
        self._http.close()


class AsyncHttpxWire:
    """The async client's wire over a caller's httpx transport."""

    def __init__(self, base_url: str, transport: httpx.AsyncBaseTransport) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, transport=transport, trust_env=False)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        params: Mapping[str, str] | None,
        limit_s: float,
    ) -> Answer:
        try:
            response = await self._http.request(
                method,
                path,
                headers=_utf8(headers),
                content=content,
                params=params,
                timeout=limit_s,
            )
        except httpx.TransportError as e:
            raise NoAnswer(e, not_sent=isinstance(e, _HTTPX_NOT_SENT)) from e
        return _httpx_answer(response)

    async def aclose(self) -> None:
        await self._http.aclose()


class AiohttpWire:
    """The async client's default wire: one aiohttp session (its keep-alive pool of at most
    ``pool`` connections) per event loop it is used on."""

    def __init__(self, base_url: str, *, pool: int = 100) -> None:
        self.base_url = base_url
        self.pool = pool
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # the current session, let go at exit by one finalizer (a client never closed, an app's
        # for its lifetime: its connections, without aiohttp's "unclosed session" warnings);
        # one per session kept each finished loop's session for the client's life
        self._current_session: list[aiohttp.ClientSession] = []
        weakref.finalize(self, _let_go_all, self._current_session)

    def _current(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the client has been closed")
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            # a session belongs to the loop it was made on: another loop gets its own
            if self._session is not None:
                _let_go(self._session)
            self._session = session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.pool),
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
            )
            # aiohttp sends a GET, PUT or DELETE again when its connection drops before the
            # answer: a request the client does not send again once it may have landed (a
            # delete_plan) would be; the client's own retry rule decides alone (aiohttp >= 3.11)
            session._retry_connection = False
            self._loop = loop
            self._current_session[:] = [session]
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        params: Mapping[str, str] | None,
        limit_s: float,
    ) -> Answer:
        session = self._current()
        # the path is already percent-encoded (credit_sidecar._calls): sent as it is
        url = URL(self.base_url + path, encoded=True)
        limits = aiohttp.ClientTimeout(total=limit_s, connect=limit_s)
        try:
            # a redirect is answered as it is (as httpx and node:http): a check is never sent on
            async with session.request(
                method,
                url,
                headers=headers,
                data=content,
                params=params,
                timeout=limits,
                allow_redirects=False,
            ) as r:
                return Answer(r.status, r.headers, await r.read())
        except aiohttp.ClientConnectorError as e:  # the connection was never made
            raise NoAnswer(e, not_sent=True) from e
        except aiohttp.ConnectionTimeoutError as e:  # no connection (or free one) in time
            raise NoAnswer(e, not_sent=True) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise NoAnswer(e, not_sent=False) from e

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        self._current_session.clear()
        if session is not None and not session.closed:
            await session.close()


def _let_go_all(sessions: list[aiohttp.ClientSession]) -> None:
    for session in sessions:
        _let_go(session)


def _let_go(session: aiohttp.ClientSession) -> None:
    """Closes a session's connections without awaiting (another loop's, or at exit)."""
    if session.closed:
        return
    connector = session.connector
    session.detach()
    if connector is not None:
        # the synchronous half of ``await connector.close()``: closes every connection (none
        # on a closed loop) and marks the connector closed; nothing is left to await
        with contextlib.suppress(RuntimeError):
            connector._close()


def _utf8(headers: Mapping[str, str]) -> dict[bytes, bytes]:
    """Header values as UTF-8, as aiohttp sends them (httpx encodes a str as ASCII: a customer's
    key or path with an "é" raised UnicodeEncodeError)."""
    return {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in headers.items()}


def encode(body: Any) -> bytes:
    """A request's JSON body, as compact as httpx sends it; NaN and infinities refused."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
