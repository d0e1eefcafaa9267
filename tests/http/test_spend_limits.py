"""Spending limits over HTTP: an account's limit set by PUT or PATCH, enforced on checks, holds
and the proxy modes (402 `spend_limit` with the limit, what was spent and the window's end),
shown by the balance; PATCH changes only what it is sent; bad limits are 422s naming the field
and change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import create_app
from sidecar.ledger.keyspace import KeySpace
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, service

Client = TestClient[web.Request, web.Application]
MONTHLY = {"credits": 10, "interval": "month"}

pytestmark = pytest.mark.sql_free  # (its writer is off: SQL is never reached)


@pytest.fixture
async def client(
    settings: Settings, redis: RedisClient, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Client]:
    pricing = tmp_path / "pricing.toml"
    pricing.write_text("default_cost = 4\n")
    s = settings.model_copy(update={"pricing_file": pricing})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        yield c


async def account(c: Client, credits: int = 100, **settings: Any) -> None:
    r = await c.put("/v1/accounts/acme", json=settings, headers=admin())
    assert r.status == 201, await r.text()
    grant = {"grant_id": "g", "credits": credits, "reason": "test"}
    assert (await c.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status == 201


async def check(c: Client, cost: int, key: str) -> tuple[int, dict[str, Any]]:
    body = {"account": "acme", "cost": cost, "idempotency_key": key}
    r = await c.post("/v1/check", json=body, headers=service())
    return r.status, await r.json()


async def balance(c: Client) -> dict[str, Any]:
    r = await c.get("/v1/accounts/acme/balance", headers=admin())
    assert r.status == 200
    body: dict[str, Any] = await r.json()
    return body


async def test_a_check_over_the_accounts_limit_is_refused_with_the_window_and_not_charged(
    client: Client, clock: FakeClock
) -> None:
    await account(client, spend_limit=MONTHLY)
    assert (await check(client, 6, "k1"))[0] == 200
    status, body = await check(client, 5, "k2")
    assert status == 402
    assert body["reason"] == "spend_limit" and body["allowed"] is False
    assert body["spend_limit"] == {"credits": 10, "interval": "month", "interval_count": 1}
    assert body["spent"] == 6 and body["required"] == 5
    assert body["window_ends_at"].endswith("-01T00:00:00.000Z")
    b = await balance(client)
    assert b["balance"] == 94
    assert b["spend"] == {
        "spend_limit": body["spend_limit"],
        "spent": 6,
        "window_ends_at": body["window_ends_at"],
    }
    assert (await check(client, 4, "k3"))[0] == 200  # exactly up to the limit
    # the next window starts from nothing
    clock.advance(32 * 86_400_000)
    assert (await check(client, 10, "k4"))[0] == 200


async def test_a_hold_counts_until_settled_and_a_refund_gives_room_back(client: Client) -> None:
    await account(client, spend_limit=MONTHLY)
    hold = {"account": "acme", "hold_id": "h1", "amount": 8}
    assert (await client.post("/v1/holds", json=hold, headers=service())).status == 201
    status, body = await check(client, 3, "k1")
    assert status == 402 and body["spent"] == 8
    r = await client.post(
        "/v1/holds/h1/settle", json={"account": "acme", "amount": 2}, headers=service()
    )
    assert r.status == 200
    status, body = await check(client, 8, "k2")
    assert status == 200
    refund = {
        "account": "acme",
        "refund_id": "r",
        "transaction_id": body["transaction_id"],
        "reason": "test",
    }
    assert (await client.post("/v1/refunds", json=refund, headers=admin())).status == 201
    assert (await balance(client))["spend"]["spent"] == 2
    big = {"account": "acme", "hold_id": "h2", "amount": 9}
    r = await client.post("/v1/holds", json=big, headers=service())
    assert r.status == 402 and (await r.json())["reason"] == "spend_limit"


async def test_patch_changes_only_what_it_is_sent_and_null_removes_a_setting(
    client: Client,
) -> None:
    await account(client, spend_limit=MONTHLY, rate_limit={"requests": 5})
    r = await client.patch("/v1/accounts/acme", json={"overdraft_limit": 7}, headers=admin())
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["overdraft_limit"] == 7 and body["created"] is False
    assert body["spend_limit"]["credits"] == 10 and body["rate_limit"]["requests"] == 5
    r = await client.patch("/v1/accounts/acme", json={"spend_limit": None}, headers=admin())
    body = await r.json()
    assert body["spend_limit"] is None and body["overdraft_limit"] == 7
    assert (await balance(client))["spend"] is None
    assert (await check(client, 50, "k1"))[0] == 200
    # PUT replaces every setting: what it is not sent is removed
    r = await client.put("/v1/accounts/acme", json={"spend_limit": MONTHLY}, headers=admin())
    body = await r.json()
    assert r.status == 200 and body["overdraft_limit"] == 0 and body["rate_limit"] is None


async def test_patching_an_unknown_account_is_a_404_and_creates_nothing(client: Client) -> None:
    r = await client.patch("/v1/accounts/ghost", json={"overdraft_limit": 1}, headers=admin())
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_account"
    r = await client.get("/v1/accounts/ghost/balance", headers=admin())
    assert r.status == 404


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        ({"credits": 0, "interval": "month"}, "spend_limit.credits"),
        ({"credits": -5}, "spend_limit.credits"),
        ({"credits": 5, "interval": "fortnight"}, "spend_limit.interval"),
        ({"credits": 5, "interval_count": 2}, "spend_limit.interval_count"),
        ({"credits": 5, "interval": "day", "interval_count": 0}, "spend_limit.interval_count"),
        ({"credits": "5"}, "spend_limit.credits"),
        ({"interval": "day"}, "spend_limit.credits"),
    ],
)
async def test_a_bad_spending_limit_is_a_422_naming_the_field_and_changes_nothing(
    client: Client, limit: dict[str, Any], field: str
) -> None:
    await account(client, spend_limit=MONTHLY)
    for method in (client.put, client.patch):
        r = await method("/v1/accounts/acme", json={"spend_limit": limit}, headers=admin())
        assert r.status == 422, await r.text()
        assert (await r.json())["error"]["field"] == field
    assert (await balance(client))["spend"]["spend_limit"]["credits"] == 10


async def test_a_lifetime_limit_has_no_window_end(client: Client) -> None:
    await account(client, spend_limit={"credits": 5})
    status, body = await check(client, 6, "k1")
    assert status == 402
    assert body["spend_limit"] == {"credits": 5, "interval": None, "interval_count": 1}
    assert body["window_ends_at"] is None


async def test_200_concurrent_checks_spend_exactly_up_to_the_limit(client: Client) -> None:
    await account(client, credits=1000, spend_limit={"credits": 50, "interval": "day"})
    results = await asyncio.gather(*(check(client, 1, f"k{i}") for i in range(200)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 50 and statuses.count(402) == 150
    b = await balance(client)
    assert b["balance"] == 950 and b["spend"]["spent"] == 50


async def test_the_proxy_modes_refuse_over_the_limit_with_its_headers(client: Client) -> None:
    await account(client, spend_limit={"credits": 6, "interval": "week"})
    r = await client.post("/v1/accounts/acme/keys", json={}, headers=admin())
    key = (await r.json())["key"]
    headers = {"Authorization": f"Bearer {key}", "X-Original-URI": "/v1/x"}
    r = await client.get("/auth/nginx", headers={**headers, "X-Request-Id": "a"})
    assert r.status == 200
    r = await client.get("/auth/nginx", headers={**headers, "X-Request-Id": "b"})
    assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "402"
    assert r.headers["X-Credits-Reason"] == "spend_limit"
    assert r.headers["X-Credits-Spend-Limit"] == "6" and r.headers["X-Credits-Spent"] == "4"
    assert r.headers["X-Credits-Window-Ends"].endswith("T00:00:00.000Z")
    body = await r.json()
    assert body["spent"] == 4 and body["spend_limit"]["interval"] == "week"


async def new_key(c: Client, **body: Any) -> tuple[str, str]:
    r = await c.post("/v1/accounts/acme/keys", json=body, headers=admin())
    assert r.status == 201, await r.text()
    created = await r.json()
    return created["key_id"], created["key"]


async def nginx(c: Client, key: str, request_id: str) -> Any:
    headers = {"Authorization": f"Bearer {key}", "X-Original-URI": "/v1/x"}
    return await c.get("/auth/nginx", headers={**headers, "X-Request-Id": request_id})


async def test_a_keys_limit_caps_that_key_only_and_listings_show_what_it_spent(
    client: Client,
) -> None:
    await account(client)
    capped, key = await new_key(client, spend_limit={"credits": 8, "interval": "day"})
    _, other = await new_key(client)
    assert (await nginx(client, key, "a")).status == 200
    assert (await nginx(client, key, "b")).status == 200
    r = await nginx(client, key, "c")
    assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "402"
    assert r.headers["X-Credits-Reason"] == "key_spend_limit"
    assert r.headers["X-Credits-Spent"] == "8"
    assert (await nginx(client, other, "d")).status == 200  # the account is not capped
    r = await client.get("/v1/accounts/acme/keys", headers=admin())
    keys = {k["key_id"]: k for k in (await r.json())["keys"]}
    assert keys[capped]["spend"]["spent"] == 8
    assert keys[capped]["spend_limit"] == {"credits": 8, "interval": "day", "interval_count": 1}
    assert [k["spend"] for k in keys.values() if k["key_id"] != capped] == [None]
    assert (await balance(client))["balance"] == 88


async def test_patching_a_keys_limit_keeps_the_windows_spending_and_null_removes_it(
    client: Client,
) -> None:
    await account(client)
    key_id, key = await new_key(client, spend_limit={"credits": 8, "interval": "day"})
    assert (await nginx(client, key, "a")).status == 200
    r = await client.patch(
        f"/v1/keys/{key_id}",
        json={"spend_limit": {"credits": 5, "interval": "day"}},
        headers=admin(),
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["spend_limit"]["credits"] == 5
    assert (await nginx(client, key, "b")).headers.get("X-Credits-Deny-Status") == "402"
    r = await client.patch(f"/v1/keys/{key_id}", json={"spend_limit": None}, headers=admin())
    assert r.status == 200 and (await r.json())["spend_limit"] is None
    assert (await nginx(client, key, "c")).status == 200


async def test_patching_an_unknown_or_revoked_key_is_refused(client: Client) -> None:
    await account(client)
    body = {"spend_limit": {"credits": 5}}
    r = await client.patch("/v1/keys/key_nope", json=body, headers=admin())
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_key"
    key_id, _ = await new_key(client)
    assert (await client.delete(f"/v1/keys/{key_id}", headers=admin())).status == 200
    r = await client.patch(f"/v1/keys/{key_id}", json=body, headers=admin())
    assert r.status == 409 and (await r.json())["error"]["code"] == "key_revoked"
    r = await client.patch(f"/v1/keys/{key_id}", json={}, headers=admin())
    assert r.status == 422 and (await r.json())["error"]["field"] == "spend_limit"


async def test_a_key_limit_and_the_account_limit_both_hold_the_key_is_checked_first(
    client: Client,
) -> None:
    await account(client, spend_limit={"credits": 6, "interval": "month"})
    _, key = await new_key(client, spend_limit={"credits": 4, "interval": "month"})
    assert (await nginx(client, key, "a")).status == 200
    r = await nginx(client, key, "b")
    assert r.headers["X-Credits-Reason"] == "key_spend_limit"
    _, other = await new_key(client)
    r = await nginx(client, other, "c")
    assert r.headers["X-Credits-Reason"] == "spend_limit"  # 4 + 4 > 6


async def test_a_dry_run_answers_as_the_check_would_and_changes_nothing(
    client: Client, redis: RedisClient, settings: Settings
) -> None:
    await account(client, credits=20, spend_limit={"credits": 10, "interval": "month"})
    assert (await check(client, 6, "k1"))[0] == 200
    before = await balance(client)
    # every key of the account (its hash, burn order, deadlines, holds), its shard's outbox and
    # the idempotency records a dry run would write
    space = KeySpace(settings.shards)
    names = [
        *space.for_account("acme").common(),
        *(space.idempotency("acme", k) for k in ("k1", "k2", "k3")),
    ]

    async def state() -> list[Any]:
        return [await redis.dump(k) for k in names]

    dumped = await state()

    async def dry(cost: int, key: str) -> tuple[int, dict[str, Any]]:
        body = {"account": "acme", "cost": cost, "idempotency_key": key, "dry_run": True}
        r = await client.post("/v1/check", json=body, headers=service())
        return r.status, await r.json()

    status, body = await dry(4, "k2")
    assert status == 200 and body["transaction_id"] is None and body["dry_run"] is True
    assert body["balance"] == 10 and body["replayed"] is False
    status, body = await dry(5, "k3")
    assert status == 402 and body["reason"] == "spend_limit" and body["spent"] == 6
    status, body = await dry(6, "k1")  # the same request: its replay
    assert status == 200 and body["replayed"] is True and body["transaction_id"] is None
    status, body = await dry(7, "k1")  # another request under the same id
    assert status == 409
    assert await balance(client) == before
    assert await state() == dumped  # nothing written: no record, no transaction, no expiry
    assert (await check(client, 4, "k2"))[0] == 200  # the dry run left the id unused


async def test_a_dry_run_counts_what_is_due_to_expire_without_expiring_it(
    client: Client, clock: FakeClock, redis: RedisClient, settings: Settings
) -> None:
    await account(client, credits=5)
    grant = {"grant_id": "soon", "credits": 10, "expires_at": clock.now + 1_000, "reason": "test"}
    assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status
    clock.advance(2_000)
    body = {"account": "acme", "cost": 8, "idempotency_key": "k", "dry_run": True}
    r = await client.post("/v1/check", json=body, headers=service())
    assert r.status == 402 and (await r.json())["balance"] == 5
    outbox = KeySpace(settings.shards).for_account("acme").outbox
    entries: list[Any] = [e for _, e in (await redis.xrange(outbox)) or []]
    assert entries and not any(b'"type":"expiry"' in e[b"d"] for e in entries)
    assert (await balance(client))["balance"] == 5  # a real read expires it now


async def test_the_proxy_modes_honour_a_dry_run_header_only_when_trusted(
    settings: Settings, redis: RedisClient, clock: FakeClock, tmp_path: Path
) -> None:
    pricing = tmp_path / "pricing.toml"
    pricing.write_text("default_cost = 4\n")
    for trusted in (False, True):
        await redis.flushall()
        s = settings.model_copy(update={"pricing_file": pricing, "trust_dry_run_header": trusted})
        async with TestClient(TestServer(create_app(s, clock=clock))) as c:
            await account(c, credits=10)
            _, key = await new_key(c)
            headers = {"X-Credits-Dry-Run": "1"}
            r = await c.get(
                "/auth/nginx",
                headers={
                    "Authorization": f"Bearer {key}",
                    "X-Original-URI": "/v1/x",
                    "X-Request-Id": "a",
                    **headers,
                },
            )
            assert r.status == 200
            assert (r.headers.get("X-Credits-Dry-Run") == "1") is trusted
            assert (await balance(c))["balance"] == (10 if trusted else 6)
            if trusted:  # anything but 0 or 1 is refused, naming the header, nothing charged
                r = await c.get(
                    "/auth/nginx",
                    headers={
                        "Authorization": f"Bearer {key}",
                        "X-Original-URI": "/v1/x",
                        "X-Request-Id": "b",
                        "X-Credits-Dry-Run": "yes",
                    },
                )
                assert r.status == 403 and r.headers["X-Credits-Deny-Status"] == "400"
                assert r.headers["X-Credits-Field"] == "X-Credits-Dry-Run"
                assert (await balance(c))["balance"] == 10


async def test_a_window_ending_past_year_9999_is_reported_as_its_last_millisecond(
    client: Client, clock: FakeClock
) -> None:
    clock.now = 253_402_300_000_000  # 9999-12-31
    await account(client, spend_limit={"credits": 5, "interval": "year", "interval_count": 1000})
    b = await balance(client)
    assert b["spend"]["window_ends_at"] == "9999-12-31T23:59:59.999Z"
    status, body = await check(client, 6, "k1")
    assert status == 402 and body["window_ends_at"] == "9999-12-31T23:59:59.999Z"


async def test_key_listings_near_year_9999_report_the_last_millisecond(
    client: Client, clock: FakeClock
) -> None:
    clock.now = 252_800_000_000_000  # 9980
    await account(client)
    await new_key(client, spend_limit={"credits": 5, "interval": "month", "interval_count": 1000})
    r = await client.get("/v1/accounts/acme/keys", headers=admin())
    assert r.status == 200, await r.text()
    (key,) = (await r.json())["keys"]
    assert key["spend"]["window_ends_at"] == "9999-12-31T23:59:59.999Z"


async def test_two_sidecars_on_one_redis_spend_exactly_up_to_the_limit(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    """200 request ids, each sent to both sidecars at once (a retry racing its first send):
    exactly the limit is charged, each id at most once."""
    async with (
        TestClient(TestServer(create_app(settings, clock=clock))) as one,
        TestClient(TestServer(create_app(settings, clock=clock))) as two,
    ):
        await account(one, credits=1000, spend_limit={"credits": 77, "interval": "day"})
        keys = [f"k{i}" for i in range(200)]
        results = await asyncio.gather(
            *(check(one, 1, k) for k in keys), *(check(two, 1, k) for k in keys)
        )
        charged = [b["transaction_id"] for s, b in results if s == 200 and not b["replayed"]]
        assert len(charged) == len(set(charged)) == 77
        assert {s for s, _ in results} <= {200, 402}
        b = await balance(two)
        assert b["balance"] == 1000 - 77 and b["spend"]["spent"] == 77
