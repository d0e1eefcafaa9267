"""Billing a streamed response by what it streamed (an LLM's tokens): hold an estimate before
the response starts (a refusal can still be a 402), count each chunk as it goes out, settle the
count when the stream ends, release the hold when the client goes away or the stream fails.

- :func:`metered` (async iterators) and :func:`metered_sync` (WSGI bodies) wrap a body;
- :class:`MeteredStreamingResponse` is a Starlette ``StreamingResponse`` that does it all: it
  also sees the client's ``http.disconnect`` and releases then.

The settle or release is shielded from cancellation: a request cancelled by its client still
frees (or charges) its credits. A settle the sidecar cannot take (down past the client's
deadline) is sent again in the background until the hold lapses (:mod:`credit_sidecar.late`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

from credit_sidecar import errors, late
from credit_sidecar.client import AsyncClient, Client, shielded
from credit_sidecar.models import Hold, HoldClosed

T = TypeVar("T")
log = logging.getLogger("credit_sidecar.streaming")


class Meter:
    """A hold and what its stream has used so far; ``closed`` once settled or released."""

    def __init__(self, hold: Hold, count: Callable[[Any], int]) -> None:
        self.hold = hold
        self.count = count
        self.used = 0
        self.completed = False
        self.result: HoldClosed | None = None

    def add(self, chunk: Any) -> None:
        self.used += self.count(chunk)


async def _close(client: AsyncClient, meter: Meter) -> None:
    hold = meter.hold
    try:
        if meter.completed:
            meter.result = await client.settle(hold.hold_id, meter.used, account=hold.account)
        else:
            meter.result = await client.release(hold.hold_id, account=hold.account)
    except errors.SidecarUnavailable as e:
        if meter.completed:  # the work is done: its charge is sent again until the hold lapses
            log.warning("credit-sidecar: settling hold %s failed, retrying: %s", hold.hold_id, e)
            late.settle_later(client, hold, meter.used)
        else:  # a release that fails is done by the hold's TTL
            log.warning("credit-sidecar: releasing hold %s failed: %s", hold.hold_id, e)
    except errors.CreditSidecarError as e:
        log.error("credit-sidecar: closing hold %s failed: %s", hold.hold_id, e)


async def metered(
    client: AsyncClient,
    hold: Hold,
    body: AsyncIterable[T],
    count: Callable[[T], int],
    meter: Meter | None = None,
) -> AsyncIterator[T]:
    """``body``'s chunks; at its end settles the sum of ``count(chunk)``; released if the
    iteration stops early (closed, cancelled: a disconnect) or ``body`` raises."""
    meter = meter or Meter(hold, count)
    try:
        async for chunk in body:
            meter.add(chunk)
            yield chunk
        meter.completed = True
    finally:
        await shielded(_close(client, meter))


def metered_sync(
    client: Client, hold: Hold, body: Iterable[T], count: Callable[[T], int]
) -> Iterator[T]:
    """As :func:`metered`, for a WSGI body (the server closes it when the client goes away)."""
    meter = Meter(hold, count)
    try:
        for chunk in body:
            meter.add(chunk)
            yield chunk
        meter.completed = True
    finally:
        try:
            if meter.completed:
                client.settle(hold.hold_id, meter.used, account=hold.account)
            else:
                client.release(hold.hold_id, account=hold.account)
        except errors.SidecarUnavailable as e:
            if meter.completed:
                log.warning(
                    "credit-sidecar: settling hold %s failed, retrying: %s", hold.hold_id, e
                )
                late.settle_later_sync(client, hold, meter.used)
            else:
                log.warning("credit-sidecar: releasing hold %s failed: %s", hold.hold_id, e)
        except errors.CreditSidecarError as e:
            log.error("credit-sidecar: closing hold %s failed: %s", hold.hold_id, e)


try:
    from starlette.responses import StreamingResponse
    from starlette.types import Receive, Scope, Send
except ImportError:  # starlette is the [fastapi]/[starlette] extra
    pass
else:

    class MeteredStreamingResponse(StreamingResponse):
        """``MeteredStreamingResponse(client, hold, body, count=len, media_type=...)``: a
        ``StreamingResponse`` settling the counted cost of ``body`` when it has all been sent,
        releasing the hold when the client disconnects first (or ``body`` fails)."""

        def __init__(
            self,
            client: AsyncClient,
            hold: Hold,
            body: AsyncIterable[Any],
            count: Callable[[Any], int],
            **kwargs: Any,
        ) -> None:
            self.meter = Meter(hold, count)
            self._client = client
            self._body = body
            super().__init__(self._chunks(), **kwargs)

        async def _chunks(self) -> AsyncIterator[Any]:
            async for chunk in self._body:
                self.meter.add(chunk)
                yield chunk
            self.meter.completed = True

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                await shielded(_close(self._client, self.meter))
