"""Billing fixtures: the app with Stripe pointed at a local fake (tests/billing/fakestripe/),
its billing worker running inline, a SQLite ledger in the test's temp dir; webhooks are signed
by the tests with Stripe's scheme."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from sidecar.billing.context import Billing
from sidecar.http.app import create_app
from sidecar.http.state import BILLING
from sidecar.redis.client import RedisClient
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.billing.fakestripe import FakeStripe, event, sign_webhook
from tests.conftest import ADMIN, SERVICE, FakeClock, admin, premigrated

SECRET = "whsec_test_current_secret"
OLD_SECRET = "whsec_test_previous_secret"
PRICE = "price_starter"  # 500 cents for 1,000 credits (package "starter")

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with FakeStripe() as f:
        f.add_price(PRICE, 500)
        f.add_price("price_pro", 2000)
        yield f


def billing_settings(
    redis_server: RedisServer, tmp_path: Path, fake: FakeStripe, **more: Any
) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_server.url,
        "admin_token": SecretStr(ADMIN),
        "service_token": SecretStr(SERVICE),
        "data_dir": tmp_path,
        "writer": "off",
        "stripe_api_key": SecretStr(fake.api_key),
        "stripe_api_base": fake.url,
        "stripe_webhook_secrets": SecretStr(f"{SECRET},{OLD_SECRET}"),
    }
    return Settings(**(values | more))


@dataclass
class Rig:
    client: Client
    fake: FakeStripe
    clock: FakeClock

    @property
    def billing(self) -> Billing:
        return self.client.app[BILLING]

    async def webhook(
        self,
        etype: str,
        obj: dict[str, Any],
        *,
        event_id: str | None = None,
        secret: str = SECRET,
        timestamp: int | None = None,
    ) -> Any:
        # Created on the test's clock, which the worker reads too.
        created = self.clock() // 1000
        body = orjson.dumps(event(etype, obj, event_id=event_id, created=created))
        headers = {"Stripe-Signature": sign_webhook(body, secret, timestamp)}
        return await self.client.post("/webhooks/stripe", data=body, headers=headers)

    async def deliver(self, *events: dict[str, Any]) -> None:
        """Delivers events the fake recorded (``fake.events``), in the order given, signed;
        created on the test's clock, which the worker reads too."""
        for e in events:
            body = orjson.dumps(e | {"created": self.clock() // 1000})
            headers = {"Stripe-Signature": sign_webhook(body, SECRET)}
            r = await self.client.post("/webhooks/stripe", data=body, headers=headers)
            assert r.status == 200, await r.text()

    def take_events(self, *types: str) -> list[dict[str, Any]]:
        """The events the fake recorded since the last call (only ``types``, if given)."""
        events, self.fake.events[:] = list(self.fake.events), []
        return [e for e in events if not types or e["type"] in types]

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Waits until the worker has processed every stored event that is due."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (
                await self._ledger_events_done()
                and not await self.billing.events.due(self.clock())
                and not await self.billing.events.count("processing")
                and await self._ledger_events_done()
            ):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the billing worker did not settle")

    async def _ledger_events_done(self) -> bool:
        """The worker has read and acknowledged every entry of the ledger's events stream."""
        redis = self.billing.ledger.redis
        stream = self.billing.ledger.keys.events(0)
        if not await redis.exists(stream):
            return True
        groups: Any = await redis.xinfo_groups(stream)
        mine = [g for g in groups if g["name"] in (b"billing", "billing")]
        return bool(mine) and mine[0]["pending"] == 0 and mine[0]["lag"] == 0

    async def account(self, account: str, **settings: Any) -> None:
        r = await self.client.put(f"/v1/accounts/{account}", json=settings, headers=admin())
        assert r.status in (200, 201), await r.text()

    async def package(self, package_id: str = "starter", **overrides: Any) -> None:
        body = {"name": "Starter", "credits": 1000, "stripe_price_id": PRICE, "price": 500}
        r = await self.client.put(
            f"/v1/admin/packages/{package_id}", json=body | overrides, headers=admin()
        )
        assert r.status in (200, 201), await r.text()

    async def balance(self, account: str) -> int:
        r = await self.client.get(f"/v1/accounts/{account}/balance", headers=admin())
        body: Any = await r.json()
        return int(body["balance"])

    async def checkout(self, account: str, **body: Any) -> dict[str, Any]:
        req = {"account": account, "package_id": "starter"} | body
        req |= {"success_url": "https://app.test/ok", "cancel_url": "https://app.test/no"}
        r = await self.client.post("/v1/checkout", json=req, headers=admin())
        assert r.status == 201, await r.text()
        out: dict[str, Any] = await r.json()
        return out


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(
    redis_server: RedisServer,
    redis: RedisClient,
    tmp_path: Path,
    fake: FakeStripe,
    clock: FakeClock,
    sqlite_template: Path,
) -> AsyncIterator[MakeRig]:
    clients: list[Client] = []
    premigrated(sqlite_template, tmp_path)  # every rig of the test shares this ledger

    async def make(**more: Any) -> Rig:
        settings = billing_settings(redis_server, tmp_path, fake, **more)
        client: Client = TestClient(TestServer(create_app(settings, clock=clock)))
        await client.start_server()
        clients.append(client)
        return Rig(client, fake, clock)

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    return await make_rig()
