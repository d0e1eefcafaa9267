"""Customers' webhook endpoints for the notification tests: real aiohttp servers on 127.0.0.1
that answer, answer slowly, redirect, or accept and never answer; and helpers that give an
account an endpoint and take its balance below the threshold."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.billing.notify import HEADER
from tests.billing.conftest import Rig
from tests.conftest import admin, service


class Endpoint:
    """An endpoint: POST (or any method) on any path; counts requests in flight per path.

    ``delay_s`` answers after that long; ``hang`` accepts and never answers (the handler is
    cancelled when the client gives up); ``redirect_to`` answers 307 with that Location."""

    def __init__(
        self, *, delay_s: float = 0.0, hang: bool = False, redirect_to: str | None = None
    ) -> None:
        self.delay_s, self.hang, self.redirect_to = delay_s, hang, redirect_to
        self.received: list[tuple[str, str, bytes, str]] = []  # method, path, body, signature
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.max_in_flight = 0
        self.max_in_flight_per_path: collections.Counter[str] = collections.Counter()
        self.server = TestServer(web.Application())
        self.server.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((request.method, request.path, body, request.headers.get(HEADER, "")))
        path = request.path
        self.in_flight[path] += 1
        self.max_in_flight = max(self.max_in_flight, sum(self.in_flight.values()))
        self.max_in_flight_per_path[path] = max(
            self.max_in_flight_per_path[path], self.in_flight[path]
        )
        try:
            if self.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight[path] -= 1
        if self.redirect_to is not None:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        return web.Response(status=200)

    def url(self, path: str = "/hook") -> str:
        return str(self.server.make_url(path))

    async def __aenter__(self) -> Endpoint:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()


async def with_endpoint(rig: Rig, account: str, url: str, *, threshold: int = 100) -> None:
    """``account`` with 150 credits, a low-balance threshold, and its webhook endpoint saved
    through the API."""
    await rig.account(account, low_balance_threshold=threshold)
    r = await rig.client.post(
        f"/v1/accounts/{account}/grants",
        json={"grant_id": "g", "credits": 150, "reason": "test"},
        headers=admin(),
    )
    assert r.status == 201, await r.text()
    r = await rig.client.put(
        f"/v1/admin/accounts/{account}/notifications", json={"url": url}, headers=admin()
    )
    assert r.status == 200, await r.text()


async def cross(rig: Rig, account: str) -> None:
    """A check that takes the balance from 150 below the threshold of 100."""
    r = await rig.client.post(
        "/v1/check",
        json={"account": account, "cost": 100, "idempotency_key": f"cross-{account}"},
        headers=service(),
    )
    assert (await r.json())["low_balance"] is True


async def deliveries(rig: Rig, account: str) -> list[dict[str, Any]]:
    r = await rig.client.get(f"/v1/admin/accounts/{account}/notifications", headers=admin())
    body: Any = await r.json()
    return list(body["deliveries"])


async def eventually(what: Callable[[], Any], timeout_s: float, message: str = "") -> None:
    """Waits (real time) until ``what()`` (a value or an awaitable) is true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = what()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {message}")


async def finished(rig: Rig, account: str, timeout_s: float = 30) -> dict[str, Any]:
    """The account's latest delivery once it is delivered or given up."""

    async def done() -> bool:
        found = await deliveries(rig, account)
        return bool(found) and found[0]["status"] != "pending"

    await eventually(done, timeout_s, f"{account}'s delivery finished")
    return (await deliveries(rig, account))[0]
