"""ASGI middleware (Starlette, FastAPI) and the FastAPI dependency ``RequireCredits``.

``CreditsMiddleware`` prices a request from a route table (``costs``) and checks it before the
app runs; ``RequireCredits(cost)`` prices a route where it is declared. Either way the answer
carries the header convention of :mod:`credit_sidecar.middleware.common`, and a refusal is the
sidecar's own JSON body and headers."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from credit_sidecar import errors
from credit_sidecar.client import AsyncClient
from credit_sidecar.middleware import common
from credit_sidecar.middleware.common import CreditsDenied, Verdict
from credit_sidecar.models import Authorized, CheckResult

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
AccountOf = Callable[[HTTPConnection], "Awaitable[str | None] | str | None"]

CONFIG = "credit_sidecar"  # scope key: the middleware's Credits
VERDICTS = "credit_sidecar.verdicts"  # scope key: the checks made for this request
CHECKS = "credit_sidecar.checks"  # scope key: how many checks this request has had


class Credits:
    """How to check a request: the client, how to find its account (``account``: the request ->
    the account id; or ``api_key``: the request -> the customer's API key, which the sidecar
    resolves, revocation and per-key limits included), the request id header."""

    def __init__(
        self,
        client: AsyncClient,
        account: AccountOf | None = None,
        *,
        api_key: AccountOf | None = None,
        request_id_header: str = "X-Request-Id",
        description: str | None = None,
    ) -> None:
        if (account is None) == (api_key is None):
            raise ValueError("give one of account= or api_key=")
        self.client = client
        self.account = account
        self.api_key = api_key
        self.request_id_header = request_id_header
        self.description = description

    async def check(self, conn: HTTPConnection, cost: int) -> Verdict:
        if self.api_key is not None:
            return await self._by_key(conn, self.api_key, cost)
        assert self.account is not None
        account = self.account(conn)
        if inspect.isawaitable(account):
            account = await account
        if not account:
            return common.no_account()
        method = conn.scope.get("method", "GET")
        path = conn.url.path
        checks = conn.scope[CHECKS] = conn.scope.get(CHECKS, 0) + 1
        key = common.idempotency_key(
            conn.headers.get(self.request_id_header), account, method, path, checks - 1
        )
        try:
            result = await self.client.check(
                account,
                cost,
                idempotency_key=key,
                description=self.description or f"{method} {path}",
            )
        except errors.CreditSidecarError as e:
            return common.refused(e)
        return common.allowed(result)

    async def _by_key(self, conn: HTTPConnection, api_key: AccountOf, cost: int) -> Verdict:
        key = api_key(conn)
        if inspect.isawaitable(key):
            key = await key
        if not key:
            return common.no_account()
        uri = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
        checks = conn.scope[CHECKS] = conn.scope.get(CHECKS, 0) + 1
        try:
            result = await self.client.authorize(
                key,
                conn.scope.get("method", "GET"),
                uri,
                request_id=common.nth_request_id(
                    conn.headers.get(self.request_id_header), checks - 1
                ),
                cost=cost,
            )
        except errors.CreditSidecarError as e:
            return common.refused(e, by_key=True)
        return common.allowed(result)


def render(verdict: Verdict) -> Response:
    return JSONResponse(verdict.body, status_code=verdict.status, headers=verdict.headers)


class CreditsMiddleware:
    """``app.add_middleware(CreditsMiddleware, client=AsyncClient(...), account=fn,
    costs={"GET /v1/things": 1}, default_cost=None)``. Routes not in ``costs`` cost
    ``default_cost`` (None: free). ``account(request)`` (sync or async) names the account, None
    answers 401; or ``api_key(request)`` gives the customer's API key and the sidecar finds the
    account (see :class:`Credits`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: AsyncClient,
        account: AccountOf | None = None,
        api_key: AccountOf | None = None,
        costs: Mapping[str, int] | None = None,
        default_cost: int | None = None,
        request_id_header: str = "X-Request-Id",
    ) -> None:
        self.app = app
        self.costs = dict(costs or {})
        self.default_cost = default_cost
        self.credits = Credits(
            client, account, api_key=api_key, request_id_header=request_id_header
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[CONFIG] = self.credits
        verdicts: list[Verdict] = scope.setdefault(VERDICTS, [])
        cost = common.route_cost(self.costs, self.default_cost, scope["method"], scope["path"])
        if cost:
            verdict = await self.credits.check(HTTPConnection(scope), cost)
            if not verdict.allowed:
                await render(verdict)(scope, receive, send)
                return
            verdicts.append(verdict)
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                added = {k.lower(): v for verdict in verdicts for k, v in verdict.headers.items()}
                if added:
                    kept = [
                        (k, v)
                        for k, v in message.get("headers", [])
                        if k.decode().lower() not in added
                    ]
                    message["headers"] = kept + [(k.encode(), v.encode()) for k, v in added.items()]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except CreditsDenied as e:  # a RequireCredits guard refused
            if started:
                raise
            await render(e.verdict)(scope, receive, send)


class RequireCredits:
    """A FastAPI dependency charging ``cost`` for the route:
    ``@app.get("/search", dependencies=[Depends(RequireCredits(10))])``, or as a parameter
    (``charge: CheckResult = Depends(RequireCredits(10))``). Uses the ``CreditsMiddleware``'s
    client and account (or the ``credits`` given); the middleware renders refusals and adds the
    headers. Without the middleware, install :func:`credits_exception_handler`."""

    def __init__(self, cost: int, *, credits: Credits | None = None) -> None:
        self.cost = cost
        self.credits = credits

    async def __call__(
        self, request: Request, response: Response
    ) -> CheckResult | Authorized | None:
        credits = self.credits or request.scope.get(CONFIG)
        if credits is None:
            raise RuntimeError("RequireCredits needs CreditsMiddleware on the app, or credits=")
        verdict = await credits.check(request, self.cost)
        if not verdict.allowed:
            raise CreditsDenied(verdict)
        verdicts = request.scope.get(VERDICTS)
        if verdicts is not None and request.scope.get(CONFIG) is not None:
            verdicts.append(verdict)  # the middleware adds the headers, to any response
        else:
            response.headers.update(verdict.headers)
        return verdict.result


async def credits_exception_handler(request: Request, exc: Exception) -> Response:
    """``app.add_exception_handler(CreditsDenied, credits_exception_handler)``: for apps using
    ``RequireCredits(cost, credits=...)`` without the middleware."""
    assert isinstance(exc, CreditsDenied)
    return render(exc.verdict)
