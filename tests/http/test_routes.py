"""The JSON API as a client sees it: statuses, bodies, headers, auth, and bad input that is
rejected with a 4xx JSON error naming the problem and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import create_app
from sidecar.ledger.units import (
    MAX_CREDITS,
)
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, service, snapshot

Client = TestClient[web.Request, web.Application]


async def setup_account(client: Client, credits: int = 100, **settings: Any) -> None:
    r = await client.put("/v1/accounts/acme", json=settings, headers=admin())
    assert r.status == 201
    r = await client.post(
        "/v1/accounts/acme/grants",
        json={"grant_id": "g1", "credits": credits, "reason": "test"},
        headers=admin(),
    )
    assert r.status == 201


async def check(client: Client, cost: int, key: str, account: str = "acme") -> Any:
    return await client.post(
        "/v1/check",
        json={"account": account, "cost": cost, "idempotency_key": key},
        headers=service(),
    )


async def test_check_allows_then_reports_insufficient_with_402(client: Client) -> None:
    await setup_account(client, credits=10)
    r = await check(client, 7, "r1")
    assert r.status == 200
    body = await r.json()
    assert body["allowed"] is True and body["balance"] == 3 and body["transaction_id"]
    r = await check(client, 7, "r2")
    assert r.status == 402
    assert await r.json() == {
        "allowed": False,
        "reason": "insufficient_credits",
        "account": "acme",
        "balance": 3,
        "required": 7,
    }


async def test_check_rate_limited_gives_429_with_retry_after(client: Client) -> None:
    await setup_account(client, rate_limit={"requests": 1, "period_ms": 2000})
    assert (await check(client, 1, "r1")).status == 200
    r = await check(client, 1, "r2")
    assert r.status == 429
    assert r.headers["Retry-After"] == "2"
    body = await r.json()
    assert body["reason"] == "rate_limited" and body["retry_after_ms"] == 2000


async def test_shadow_mode_check_lets_refusals_through_uncharged_and_says_what_they_were(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    """SIDECAR_SHADOW: a check the ledger refuses (402, 429) answers 200 ``allowed`` with
    ``charged: false`` and the refusal under ``shadow``; nothing is deducted. A check the
    ledger allows is charged as always; errors of the call itself stay errors."""
    s = settings.model_copy(update={"shadow": True})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        await setup_account(c, credits=10, rate_limit={"requests": 2, "period_ms": 2000})
        r = await check(c, 7, "r1")
        assert r.status == 200 and (await r.json())["balance"] == 3
        assert "X-Credits-Shadow-Status" not in r.headers
        r = await check(c, 7, "r2")
        assert r.status == 200 and r.headers["X-Credits-Shadow-Status"] == "402"
        assert await r.json() == {
            "allowed": True,
            "account": "acme",
            "charged": False,
            "shadow": {
                "status": 402,
                "reason": "insufficient_credits",
                "balance": 3,
                "required": 7,
            },
        }
        assert (await (await check(c, 1, "r3")).json())["balance"] == 2
        r = await check(c, 1, "r4")
        assert r.status == 200 and r.headers["X-Credits-Shadow-Status"] == "429"
        assert "Retry-After" not in r.headers
        body = await r.json()
        assert body["charged"] is False and body["shadow"]["reason"] == "rate_limited"
        assert body["shadow"]["retry_after_ms"] > 0
        balance = await (await c.get("/v1/accounts/acme/balance", headers=admin())).json()
        assert balance["balance"] == 2
        assert (await check(c, 1, "r5", account="ghost")).status == 404


async def test_retried_check_is_not_charged_twice(client: Client) -> None:
    await setup_account(client, credits=10)
    first = await (await check(client, 4, "same")).json()
    second = await (await check(client, 4, "same")).json()
    assert second["transaction_id"] == first["transaction_id"] and second["replayed"]
    r = await client.get("/v1/accounts/acme/balance", headers=admin())
    assert (await r.json())["balance"] == 6


async def test_balance_lists_live_buckets_in_burn_order(client: Client, clock: FakeClock) -> None:
    await setup_account(client)
    r = await client.post(
        "/v1/accounts/acme/grants",
        json={
            "grant_id": "promo",
            "credits": 5,
            "priority": -1,
            "source": "promo",
            "expires_at": "2030-01-01T00:00:00Z",
            "metadata": {"campaign": "launch"},
        },
        headers=admin(),
    )
    assert r.status == 201
    body = await (await client.get("/v1/accounts/acme/balance", headers=admin())).json()
    assert body["balance"] == 105
    assert [b["id"] for b in body["buckets"]] == ["promo", "g1"]
    assert body["buckets"][0]["expires_at"] == "2030-01-01T00:00:00.000Z"
    assert body["buckets"][0]["metadata"] == {"campaign": "launch"}


async def test_grant_replay_returns_200_and_conflict_409(client: Client) -> None:
    await setup_account(client)
    grant = {"grant_id": "g1", "credits": 100, "reason": "test"}
    r = await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())
    assert r.status == 200 and (await r.json())["replayed"]
    r = await client.post("/v1/accounts/acme/grants", json={**grant, "credits": 5}, headers=admin())
    assert r.status == 409
    assert (await r.json())["error"]["code"] == "idempotency_conflict"


async def test_hold_settle_release_and_refund_over_http(client: Client) -> None:
    await setup_account(client)
    r = await client.post(
        "/v1/holds", json={"account": "acme", "hold_id": "h1", "amount": 30}, headers=service()
    )
    assert r.status == 201 and (await r.json())["balance"] == 70
    r = await client.post(
        "/v1/holds/h1/settle", json={"account": "acme", "amount": 12}, headers=service()
    )
    assert r.status == 200 and (await r.json())["balance"] == 88
    r = await client.post("/v1/holds/h1/release", json={"account": "acme"}, headers=service())
    assert r.status == 409 and (await r.json())["error"]["code"] == "hold_closed"
    r = await client.post(
        "/v1/holds", json={"account": "acme", "hold_id": "h2", "amount": 500}, headers=service()
    )
    assert r.status == 402
    used = await (await check(client, 8, "r1")).json()
    r = await client.post(
        "/v1/refunds",
        json={
            "account": "acme",
            "refund_id": "rf1",
            "transaction_id": used["transaction_id"],
            "reason": "test",
        },
        headers=admin(),
    )
    assert r.status == 201 and (await r.json())["refunded"] == 8
    r = await client.post(
        "/v1/refunds",
        json={
            "account": "acme",
            "refund_id": "rf2",
            "transaction_id": used["transaction_id"],
            "reason": "test",
        },
        headers=admin(),
    )
    assert r.status == 409 and (await r.json())["error"]["code"] == "fully_refunded"


async def test_missing_token_is_401_with_www_authenticate(client: Client) -> None:
    r = await client.post("/v1/check", json={})
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await r.json())["error"]["code"] == "unauthorized"


async def test_wrong_token_is_401_and_service_token_cannot_use_admin_routes(
    client: Client,
) -> None:
    r = await client.put("/v1/accounts/x", json={}, headers={"Authorization": "Bearer nope"})
    assert r.status == 401
    r = await client.put("/v1/accounts/x", json={}, headers=service())
    assert r.status == 403
    assert (await r.json())["error"]["code"] == "forbidden"


async def test_unknown_route_and_method_are_json_errors(client: Client) -> None:
    r = await client.get("/v1/nope")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    r = await client.get("/v1/check")
    assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"


async def test_oversized_body_is_413(client: Client) -> None:
    r = await client.post("/v1/check", data=b"{" + b" " * 70_000 + b"}", headers=service())
    assert r.status == 413


CHECK_OK = {"account": "acme", "cost": 1, "idempotency_key": "k"}


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"{", 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b"[1]", 400, "invalid_json", None),
        ({**CHECK_OK, "cost": None}, 422, "invalid_request", "cost"),
        ({k: v for k, v in CHECK_OK.items() if k != "cost"}, 422, "invalid_request", "cost"),
        ({**CHECK_OK, "cost": -1}, 422, "invalid_request", "cost"),
        ({**CHECK_OK, "cost": 0}, 422, "invalid_request", "cost"),
        ({**CHECK_OK, "cost": 1.5}, 422, "invalid_request", "cost"),
        ({**CHECK_OK, "cost": 1.0}, 422, "invalid_request", "cost"),
        ({**CHECK_OK, "cost": "1"}, 422, "invalid_request", "cost"),
        ({**CHECK_OK, "cost": True}, 422, "invalid_request", "cost"),
        ({**CHECK_OK, "cost": MAX_CREDITS + 1}, 422, "invalid_request", "cost"),
        ({**CHECK_OK, "cost": 2**70}, 422, "invalid_request", "cost"),
        ({**CHECK_OK, "idempotency_key": "x" * 129}, 422, "invalid_request", "idempotency_key"),
        ({**CHECK_OK, "idempotency_key": ""}, 422, "invalid_request", "idempotency_key"),
        ({**CHECK_OK, "account": "a b"}, 422, "invalid_request", "account"),
        ({**CHECK_OK, "account": "a{b}"}, 422, "invalid_request", "account"),
        ({**CHECK_OK, "amount": 1}, 422, "invalid_request", "amount"),
        ({**CHECK_OK, "metadata": [1]}, 422, "invalid_request", "metadata"),
        ({**CHECK_OK, "metadata": {"x": "y" * 5000}}, 422, "invalid_request", "metadata"),
        (
            b'{"account": "acme", "cost": 1, "idempotency_key": "k", "metadata": {"x": NaN}}',
            422,
            "invalid_request",
            "metadata",
        ),
        (
            b'{"account": "acme", "cost": 1, "idempotency_key": "k", "metadata": {"x": '
            + b"1" * 40
            + b"}}",
            422,
            "invalid_request",
            "metadata",
        ),
        ({**CHECK_OK, "description": "d" * 513}, 422, "invalid_request", "description"),
        ({**CHECK_OK, "account": "ghost"}, 404, "unknown_account", None),
    ],
)
async def test_bad_check_input_is_a_named_4xx_and_changes_nothing(
    client: Client, redis: RedisClient, body: Any, status: int, code: str, field: str | None
) -> None:
    await setup_account(client)
    before = await snapshot(redis)
    if isinstance(body, bytes):
        r = await client.post("/v1/check", data=body, headers=service())
    else:
        r = await client.post("/v1/check", json=body, headers=service())
    assert r.status == status
    err = (await r.json())["error"]
    assert err["code"] == code and err["message"]
    assert err.get("field") == field
    assert await snapshot(redis) == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/accounts/acme/grants", {"grant_id": "g2", "credits": 0, "reason": "test"}, "credits"),
        (
            "/v1/accounts/acme/grants",
            {"grant_id": "g2", "credits": 2.5, "reason": "test"},
            "credits",
        ),
        ("/v1/accounts/acme/grants", {"grant_id": "g2", "reason": "test"}, "credits"),
        (
            "/v1/accounts/acme/grants",
            {"grant_id": "g/2", "credits": 1, "reason": "test"},
            "grant_id",
        ),
        (
            "/v1/accounts/acme/grants",
            {"grant_id": "g2", "credits": 1, "priority": 2**31, "reason": "test"},
            "priority",
        ),
        (
            "/v1/accounts/acme/grants",
            {"grant_id": "g2", "credits": 1, "expires_at": "tomorrow", "reason": "test"},
            "expires_at",
        ),
        (
            "/v1/accounts/acme/grants",
            {"grant_id": "g2", "credits": 1, "expires_at": "2030-01-01T00:00:00", "reason": "test"},
            "expires_at",
        ),
        (
            "/v1/accounts/acme/grants",
            {
                "grant_id": "g2",
                "credits": 1,
                "expires_at": "2001-01-01T00:00:00Z",
                "reason": "test",
            },
            "expires_at",
        ),
        (
            "/v1/accounts/acme/grants",
            {"grant_id": "g2", "credits": MAX_CREDITS, "reason": "test"},
            None,
        ),
        (
            "/v1/accounts/acme/grants",
            {"grant_id": "g2", "credits": 1, "expires_at": 999_999_999_999_998, "reason": "test"},
            "expires_at",
        ),
        (
            "/v1/accounts/acme/grants",
            {
                "grant_id": "g2",
                "credits": 1,
                "expires_at": "9999-12-31T23:59:59-23:59",
                "reason": "test",
            },
            "expires_at",
        ),
        ("/v1/accounts/acme", {"overdraft_limit": -1}, "overdraft_limit"),
        ("/v1/accounts/acme", {"rate_limit": {"requests": 0}}, "rate_limit.requests"),
        ("/v1/holds", {"account": "acme", "hold_id": "h", "amount": 1, "ttl_ms": 0}, "ttl_ms"),
        ("/v1/holds/h/settle", {"account": "acme", "amount": -1}, "amount"),
        ("/v1/holds/nohold/settle", {"account": "acme", "amount": 1}, None),
        (
            "/v1/refunds",
            {"account": "acme", "refund_id": "r", "transaction_id": "tx_x", "reason": "test"},
            None,
        ),
        (
            "/v1/refunds",
            {
                "account": "acme",
                "refund_id": "r",
                "transaction_id": "tx_x",
                "amount": 0,
                "reason": "test",
            },
            "amount",
        ),
    ],
)
async def test_bad_admin_input_is_a_named_4xx_and_changes_nothing(
    client: Client, redis: RedisClient, path: str, body: dict[str, Any], field: str | None
) -> None:
    await setup_account(client)
    before = await snapshot(redis)
    method = client.put if path == "/v1/accounts/acme" else client.post
    r = await method(path, json=body, headers=admin())
    assert 400 <= r.status < 500
    err = (await r.json())["error"]
    assert err["message"] and err.get("field") == field
    assert await snapshot(redis) == before


async def test_bad_path_id_is_422(client: Client) -> None:
    r = await client.put("/v1/accounts/" + "x" * 129, json={}, headers=admin())
    assert r.status == 422 and (await r.json())["error"]["field"] == "account"


async def test_non_ascii_bearer_token_is_401(client: Client) -> None:
    r = await client.get(
        "/v1/accounts/acme/balance", headers={"Authorization": "Bearer \u00ff\u00fe"}
    )
    assert r.status == 401


def test_rfc3339_timestamps_convert_to_exact_milliseconds() -> None:
    from sidecar.http.schemas import GrantRequest

    g = GrantRequest.model_validate_json(
        b'{"grant_id": "g", "credits": 1, "expires_at": "2039-09-04T05:40:49.648Z", "reason": "t"}'
    )
    assert g.expires_at == 2198727649648  # float timestamp() gives ...647


async def test_key_admin_api_shows_the_key_once(client: Client) -> None:
    await setup_account(client)
    r = await client.post(
        "/v1/accounts/acme/keys",
        json={"name": "prod", "rate_limit": {"requests": 10}},
        headers=admin(),
    )
    assert r.status == 201
    created = await r.json()
    assert created["key"].startswith("csk_") and created["rate_limit"]["burst"] == 10
    listed = await (await client.get("/v1/accounts/acme/keys", headers=admin())).json()
    assert [k["key_id"] for k in listed["keys"]] == [created["key_id"]]
    assert "key" not in listed["keys"][0]
    r = await client.delete(f"/v1/keys/{created['key_id']}", headers=admin())
    assert r.status == 200 and (await r.json())["revoked_at"]
    r = await client.delete("/v1/keys/key_nope", headers=admin())
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_key"
    r = await client.post("/v1/accounts/acme/keys", json={}, headers=service())
    assert r.status == 403
    r = await client.post("/v1/accounts/ghost/keys", json={}, headers=admin())
    assert r.status == 404
