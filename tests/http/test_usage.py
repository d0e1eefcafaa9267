"""POST /v1/usage: usage recorded after the work is done. Never refused for the balance, a
spending limit or a rate limit; what the balance cannot cover becomes debt (beyond the
overdraft too), and the account's checks are refused until it is covered; idempotent by key,
bound to the report's parameters; bad input changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import create_app
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, service
from tests.http.test_metrics import scrape, value

Client = TestClient[web.Request, web.Application]

pytestmark = pytest.mark.sql_free  # (its writer is off: SQL is never reached)


@pytest.fixture
async def client(settings: Settings, redis: RedisClient, clock: FakeClock) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(settings, clock=clock))) as c:
        yield c


async def account(c: Client, credits: int, **settings: Any) -> None:
    assert (await c.put("/v1/accounts/acme", json=settings, headers=admin())).status == 201
    grant = {"grant_id": "g", "credits": credits, "reason": "test"}
    assert (await c.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status == 201


async def report(c: Client, cost: Any, key: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    body = {"account": "acme", "cost": cost, "idempotency_key": key, **extra}
    r = await c.post("/v1/usage", json=body, headers=service())
    return r.status, await r.json()


async def check(c: Client, cost: int, key: str) -> int:
    body = {"account": "acme", "cost": cost, "idempotency_key": key}
    return (await c.post("/v1/check", json=body, headers=service())).status


async def balance(c: Client) -> dict[str, Any]:
    r = await c.get("/v1/accounts/acme/balance", headers=admin())
    body: dict[str, Any] = await r.json()
    return body


async def test_usage_beyond_the_balance_and_overdraft_becomes_debt_and_blocks_checks(
    client: Client,
) -> None:
    await account(client, 10, overdraft_limit=5)
    status, body = await report(client, 4, "job-1", description="batch 1")
    assert status == 201 and body["balance"] == 6 and body["debt_added"] == 0
    status, body = await report(client, 20, "job-2")
    assert status == 201 and body["balance"] == -14 and body["debt_added"] == 14
    b = await balance(client)
    assert b["balance"] == -14 and b["debt"] == 14
    assert await check(client, 1, "c1") == 402  # past the overdraft: refused until covered
    grant = {"grant_id": "g2", "credits": 20, "reason": "test"}
    assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status
    assert (await balance(client))["balance"] == 6
    assert await check(client, 1, "c2") == 200


async def test_a_report_replays_only_itself(client: Client) -> None:
    await account(client, 10)
    status, first = await report(client, 3, "job-1")
    assert status == 201
    status, again = await report(client, 3, "job-1")
    assert status == 200 and again["replayed"] is True
    assert again["transaction_id"] == first["transaction_id"] and again["debt_added"] == 0
    assert (await report(client, 4, "job-1"))[0] == 409  # another cost
    assert (await report(client, 3, "job-1", description="other"))[0] == 409
    assert await check(client, 3, "job-1") == 409  # a check is another request
    assert (await balance(client))["balance"] == 7


async def test_usage_counts_against_a_spending_limit_but_is_never_refused_by_it(
    client: Client,
) -> None:
    await account(client, 100, spend_limit={"credits": 10, "interval": "month"})
    status, _ = await report(client, 25, "job-1")
    assert status == 201
    assert (await balance(client))["spend"]["spent"] == 25
    assert await check(client, 1, "c1") == 402


async def test_usage_is_not_rate_limited(client: Client) -> None:
    await account(client, 100, rate_limit={"requests": 1, "period_ms": 60_000})
    assert await check(client, 1, "c1") == 200
    assert await check(client, 1, "c2") == 429
    for i in range(3):
        assert (await report(client, 1, f"job-{i}"))[0] == 201


async def test_a_reported_usage_is_refundable(client: Client) -> None:
    await account(client, 10)
    _, body = await report(client, 15, "job-1")
    assert body["debt_added"] == 5
    refund = {
        "account": "acme",
        "refund_id": "r1",
        "transaction_id": body["transaction_id"],
        "reason": "test",
    }
    r = await client.post("/v1/refunds", json=refund, headers=admin())
    assert r.status == 201, await r.text()
    b = await balance(client)
    assert b["balance"] == 10 and b["debt"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"account": "acme", "cost": 0, "idempotency_key": "k"}, "cost"),
        ({"account": "acme", "cost": -3, "idempotency_key": "k"}, "cost"),
        ({"account": "acme", "cost": 2.5, "idempotency_key": "k"}, "cost"),
        ({"account": "acme", "cost": "3", "idempotency_key": "k"}, "cost"),
        ({"account": "acme", "cost": 3}, "idempotency_key"),
        ({"cost": 3, "idempotency_key": "k"}, "account"),
        ({"account": "acme", "cost": 3, "idempotency_key": "k", "extra": 1}, "extra"),
    ],
)
async def test_bad_usage_reports_are_422s_naming_the_field_and_change_nothing(
    client: Client, body: dict[str, Any], field: str
) -> None:
    await account(client, 10)
    r = await client.post("/v1/usage", json=body, headers=service())
    assert r.status == 422, await r.text()
    assert (await r.json())["error"]["field"] == field
    assert (await balance(client))["balance"] == 10


async def test_usage_for_an_unknown_account_is_a_404(client: Client) -> None:
    body = {"account": "ghost", "cost": 3, "idempotency_key": "k"}
    r = await client.post("/v1/usage", json=body, headers=service())
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_account"


async def test_reported_usage_and_its_debt_are_in_the_metrics(client: Client) -> None:
    await account(client, 10)
    before = await scrape(client)
    await report(client, 4, "job-1")
    await report(client, 9, "job-2")
    await report(client, 9, "job-2")  # a replay counts once
    after = await scrape(client)
    reported = "credit_sidecar_usage_reported_credits_total"
    debt = "credit_sidecar_usage_debt_credits_total"
    assert value(after, reported) - value(before, reported) == 13
    assert value(after, debt) - value(before, debt) == 3


async def test_a_hold_settled_above_its_amount_draws_the_rest_and_names_what_was_not_covered(
    client: Client,
) -> None:
    """The cost known only at the end: settle for it; the part the balance and the overdraft
    cannot cover is answered as `uncovered` (not charged), and can be reported as usage."""
    await account(client, 20, overdraft_limit=5)
    before = await scrape(client)
    hold = {"account": "acme", "hold_id": "stream-1", "amount": 8}
    assert (await client.post("/v1/holds", json=hold, headers=service())).status == 201
    settle = {"account": "acme", "amount": 40, "description": "1,234 tokens"}
    r = await client.post("/v1/holds/stream-1/settle", json=settle, headers=service())
    body = await r.json()
    assert r.status == 200
    assert (body["charged"], body["uncovered"], body["balance"], body["replayed"]) == (
        25,
        15,
        -5,
        False,
    )
    again = await client.post("/v1/holds/stream-1/settle", json=settle, headers=service())
    assert (await again.json()) | {"replayed": False} == body
    other = await client.post(
        "/v1/holds/stream-1/settle", json={**settle, "amount": 25}, headers=service()
    )
    assert other.status == 409 and (await other.json())["error"]["code"] == "idempotency_conflict"
    uncovered = "credit_sidecar_settle_uncovered_credits_total"  # the replay counts once
    assert value(await scrape(client), uncovered) - value(before, uncovered) == 15
    status, used = await report(client, body["uncovered"], "stream-1-rest")
    assert status == 201 and used["debt_added"] == 15
    assert (await balance(client))["debt"] == 20
