"""Low-balance notifications: crossing the threshold sends one signed JSON webhook to the
account's endpoint, retried with backoff until delivered, given up after the last try."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.billing.notify import HEADER
from sidecar.ledger import units
from tests.billing.conftest import MakeRig, Rig
from tests.conftest import admin, service


class Receiver:
    """A customer's webhook endpoint: answers with the next status of ``statuses``."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.received: list[tuple[bytes, str]] = []
        self.server = TestServer(web.Application())
        self.server.app.router.add_post("/hook", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), request.headers.get(HEADER, "")))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hook"))


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    """The receivers listen on 127.0.0.1: private addresses are allowed here."""
    return await make_rig(notify_allow_private=True)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.server.start_server()
    yield r
    await r.server.close()


def verify(body: bytes, header: str, secret: str) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts["v1"])


async def setup(rig: Rig, receiver: Receiver) -> str:
    await rig.account("acme", low_balance_threshold=100)
    r = await rig.client.post(
        "/v1/accounts/acme/grants",
        json={"grant_id": "g", "credits": 150, "reason": "test"},
        headers=admin(),
    )
    assert r.status == 201
    r = await rig.client.put(
        "/v1/admin/accounts/acme/notifications", json={"url": receiver.url}, headers=admin()
    )
    assert r.status == 200, await r.text()
    body: Any = await r.json()
    assert body["header"] == HEADER
    return str(body["secret"])


async def cross(rig: Rig) -> None:
    r = await rig.client.post(
        "/v1/check",
        json={"account": "acme", "cost": 100, "idempotency_key": "r1"},
        headers=service(),
    )
    assert (await r.json())["low_balance"] is True


async def deliveries(rig: Rig) -> list[dict[str, Any]]:
    r = await rig.client.get("/v1/admin/accounts/acme/notifications", headers=admin())
    body: Any = await r.json()
    return list(body["deliveries"])


async def run_until(rig: Rig, status: str, steps: int = 400) -> dict[str, Any]:
    """Advances the clock (the backoff) until the delivery reaches ``status``."""
    import asyncio

    for _ in range(steps):
        await rig.settle()
        found = await deliveries(rig)
        if found and found[0]["status"] == status:
            return found[0]
        rig.clock.advance(5_000)
        await asyncio.sleep(0.02)
    raise AssertionError(f"delivery never reached {status}: {await deliveries(rig)}")


async def test_crossing_the_threshold_sends_one_signed_webhook(
    rig: Rig, receiver: Receiver
) -> None:
    secret = await setup(rig, receiver)
    await cross(rig)
    d = await run_until(rig, "delivered")
    ((body, header),) = receiver.received
    assert verify(body, header, secret)
    payload = orjson.loads(body)
    assert payload["type"] == "balance.low" and payload["account"] == "acme"
    assert (payload["balance"], payload["threshold"]) == (50, 100)
    # times are RFC 3339, as everywhere in the API; `created` (unix ms) is deprecated
    assert payload["created_at"] == units.iso(payload["created"])
    assert payload["created_at"].endswith("Z")
    assert d["attempts"] == 1


async def test_failed_deliveries_are_retried_with_backoff(rig: Rig, receiver: Receiver) -> None:
    await setup(rig, receiver)
    receiver.statuses = [500, 503]
    await cross(rig)
    d = await run_until(rig, "delivered")
    assert d["attempts"] == 3 and len(receiver.received) == 3


async def test_an_endpoint_that_keeps_failing_is_given_up_after_the_last_try(
    make_rig: MakeRig, receiver: Receiver
) -> None:
    rig = await make_rig(notify_max_attempts=3, notify_allow_private=True)
    await setup(rig, receiver)
    receiver.statuses = [500] * 10
    await cross(rig)
    d = await run_until(rig, "dead")
    assert d["attempts"] == 3 and d["last_error"] == "HTTP 500"


async def test_notification_urls_are_validated(rig: Rig) -> None:
    """Only http(s) URLs of printable ASCII: a NUL (PostgreSQL cannot store it: a fuzzer's
    500) or a non-ASCII character is a 422, not a server error."""
    await rig.account("acme")
    for url in (
        "ftp://x.test/h",
        "not a url",
        5,
        "http://b\x00",
        "http://b\u00c0",
    ):
        r = await rig.client.put(
            "/v1/admin/accounts/acme/notifications", json={"url": url}, headers=admin()
        )
        assert r.status == 422, url
    r = await rig.client.put(
        "/v1/admin/accounts/ghost/notifications", json={"url": "https://x.test"}, headers=admin()
    )
    assert r.status == 404
