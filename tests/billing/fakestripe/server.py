"""The fake's HTTP side: an aiohttp server on 127.0.0.1, bearer authentication, routing,
injected faults and lost replies, and Stripe's idempotency.

Idempotency, as https://docs.stripe.com/api/idempotent_requests documents it: a POST whose
``Idempotency-Key`` was seen before gets the first response again (same status and body,
header ``Idempotent-Replayed: true``) without running again, "including 500 errors"; the same
key with another endpoint or other parameters is a 400 ``idempotency_error``; results are
saved only when the endpoint began executing: not for parameter validation errors, nor for a
request refused before it ran (here: authentication, rate limits, ``fail_next(stored=False)``).
Keys are at most 255 characters. The library sends a key on every POST (its own random one
if the caller gives none) and reuses it on its retries."""

from __future__ import annotations

import contextlib
import copy
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self, TypeAlias
from urllib.parse import parse_qsl

from aiohttp import web

from tests.billing.fakestripe.forms import (
    FormDecodeError,
    Params,
    StripeError,
    StripeObject,
    decode_form,
    invalid,
    new_id,
)
from tests.billing.fakestripe.state import Fault, RecordedRequest, State, Stored
from tests.billing.fakestripe.webhooks import API_VERSION

Handler: TypeAlias = Callable[..., StripeObject]
Route: TypeAlias = tuple[str, str, Handler]
# A page the customer's browser opens (a hosted page's URL): GET, no API key.
Page: TypeAlias = tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


class Server(State):
    """Lifecycle and request handling; resources add their routes (``routes()``)."""

    def routes(self) -> list[Route]:
        return []

    def pages(self) -> list[Page]:
        return []

    def __init__(self, api_key: str = "sk_test_fakestripe") -> None:
        super().__init__(api_key)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._compiled = [(m, re.compile(p), h) for m, p, h in self.routes()]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listens on 127.0.0.1, on a port the OS picks."""
        if self._runner is not None:
            raise RuntimeError("FakeStripe is already running")
        app = web.Application()
        for path, page in self.pages():
            app.router.add_get(path, page)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self._url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner, self._url = self._runner, None, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, the ``"api"`` base address for ``StripeClient``."""
        if self._url is None:
            raise RuntimeError("FakeStripe is not running")
        return self._url

    # -- faults ------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        should_retry: bool | None = None,
        stored: bool | None = None,
        ran: bool = False,
    ) -> None:
        """The next ``n`` API requests (whatever they are) fail with ``status`` and Stripe's
        error body (``api_error`` for 5xx; for 429 ``code: rate_limit``), without doing
        anything.

        ``stored`` (default: for a 500) says the endpoint began executing and failed there:
        like Stripe, the fake keeps that answer under the request's idempotency key and
        replays it to every retry with the key. A fault that is not stored (a 503 in front of
        the API, a 429) leaves the key unused. The library retries 5xx and 409 responses by
        itself, up to the client's ``max_network_retries`` (each retry is a new request here
        and consumes one fault unless it is a replay). ``should_retry`` sends
        ``Stripe-Should-Retry``, which the library obeys over the status. ``ran``: the
        request did what it does (a PaymentIntent was made) before the error (stored).
        """
        keep = ran or (status == 500 if stored is None else stored)
        self._faults.extend([Fault(status, should_retry, keep, ran)] * n)

    def drop_reply_next(self, n: int = 1) -> None:
        """The next ``n`` requests run (and are kept under their idempotency key) but their
        reply is lost: the connection closes without an answer, as when a network fails
        after Stripe acted; the library raises ``APIConnectionError`` (or retries with the
        same key, which gets the kept answer)."""
        self._drops += n

    # -- HTTP --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        key = request.headers.get("Idempotency-Key")
        headers = {"Request-Id": new_id("req_", 14), "Stripe-Version": API_VERSION}
        try:
            pairs = parse_qsl(request.query_string, keep_blank_values=True)
            pairs += parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
            params = decode_form(pairs)
        except (FormDecodeError, UnicodeDecodeError) as e:
            self.requests.append(RecordedRequest(request.method, request.path, {}, key))
            return self._error(invalid(f"Invalid request body: {e}"), headers)
        self.requests.append(RecordedRequest(request.method, request.path, params, key))

        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            message = (
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_"
                "SECRET_KEY')."
            )
            return self._error(StripeError(401, "invalid_request_error", message), headers)
        if not hmac.compare_digest(auth[len("Bearer ") :], self.api_key):
            given = auth[len("Bearer ") :]
            message = f"Invalid API Key provided: {given[:8]}{'*' * max(0, len(given) - 12)}"
            return self._error(StripeError(401, "invalid_request_error", message), headers)

        handler, args = self._route(request.method, request.path)
        if handler is None:
            message = f"Unrecognized request URL ({request.method}: {request.path})."
            return self._error(StripeError(404, "invalid_request_error", message), headers)

        # A fault in front of the API (not stored) comes before the idempotency layer.
        if self._faults and not self._faults[0].stored:
            err = _fault_error(self._faults.popleft())
            return self._error(err, headers)

        idempotent = request.method == "POST" and bool(key)
        if idempotent and key:
            headers["Idempotency-Key"] = key
            if len(key) > 255:
                err = invalid("Idempotency keys are at most 255 characters", param="key")
                return self._error(err, headers)
            stored = self._idempotent.get(key)
            if stored is not None:
                if stored.path != request.path or stored.params != params:
                    return self._error(_idempotency_mismatch(key, stored, request.path), headers)
                replay = headers | stored.headers | {"Idempotent-Replayed": "true"}
                return _json(stored.status, stored.body, replay)

        if self._faults:
            fault = self._faults.popleft()
            err = _fault_error(fault)
            if fault.ran:
                with contextlib.suppress(StripeError):
                    handler(copy.deepcopy(params), **args)
            body = _dumps(err.body())
            if idempotent and key and fault.stored:
                self._idempotent[key] = Stored(
                    request.method, request.path, params, err.status, body, err.headers
                )
            return _json(err.status, body, headers | err.headers)

        snapshot = copy.deepcopy(params)
        try:
            status, body, extra = 200, _dumps(handler(params, **args)), {}
        except StripeError as e:
            status, body, extra = e.status, _dumps(e.body()), e.headers
        # Only requests that began executing are kept: validation errors (400s raised before
        # anything changed) are not; card errors (402) and objects are.
        if idempotent and key and (status < 400 or status == 402):
            self._idempotent[key] = Stored(
                request.method, request.path, snapshot, status, body, extra
            )
        if self._drops:
            self._drops -= 1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=204)
        return _json(status, body, headers | extra)

    def _route(self, method: str, path: str) -> tuple[Handler | None, dict[str, str]]:
        for route_method, pattern, handler in self._compiled:
            m = pattern.fullmatch(path)
            if m is not None and route_method == method:
                return handler, m.groupdict()
        return None, {}

    @staticmethod
    def _error(err: StripeError, headers: dict[str, str]) -> web.Response:
        return _json(err.status, _dumps(err.body()), headers | err.headers)


def _fault_error(fault: Fault) -> StripeError:
    headers = {}
    if fault.should_retry is not None:
        headers["Stripe-Should-Retry"] = "true" if fault.should_retry else "false"
    if fault.status == 429:
        return StripeError(
            429,
            "invalid_request_error",
            "Request rate limit exceeded (injected by fakestripe).",
            code="rate_limit",
            headers=headers,
        )
    type_ = "api_error" if fault.status >= 500 else "invalid_request_error"
    message = f"Injected fault: HTTP {fault.status} (fakestripe.fail_next)."
    return StripeError(fault.status, type_, message, headers=headers)


def _idempotency_mismatch(key: str, stored: Stored, path: str) -> StripeError:
    if stored.path != path:
        message = (
            "Keys for idempotent requests can only be used for the same endpoint they were first "
            f"used for ('{stored.path}' vs '{path}'). Try using a key other than '{key}' if you "
            "meant to execute a different request."
        )
    else:
        message = (
            "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{key}' if you meant to execute a "
            "different request."
        )
    return StripeError(400, "idempotency_error", message)


def _dumps(obj: StripeObject) -> bytes:
    return json.dumps(obj).encode()


def _json(status: int, body: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


def copy_of(obj: StripeObject) -> StripeObject:
    return copy.deepcopy(obj)


__all__ = ["Params", "Route", "Server", "copy_of"]
