"""POST /v1/accounts/{account}/keys with an idempotency key: the first call answers 201 with the
secret, a repeat 200 with the same key and ``key: null`` (only its hash is kept), other
parameters 409; concurrent repeats make one key; bad input is a 422 naming the field."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import admin

Client = TestClient[web.Request, web.Application]


async def create(client: Client, body: dict[str, Any], account: str = "acme") -> Any:
    r = await client.post(f"/v1/accounts/{account}/keys", json=body, headers=admin())
    return r.status, await r.json()


async def test_a_repeat_answers_200_with_the_same_key_and_no_secret(client: Client) -> None:
    assert (await client.put("/v1/accounts/acme", json={}, headers=admin())).status == 201
    body = {"name": "prod", "rate_limit": {"requests": 10}, "idempotency_key": "ui-1"}
    status, first = await create(client, body)
    assert status == 201 and first["key"].startswith("csk_") and first["replayed"] is False
    status, again = await create(client, body)
    assert status == 200 and again["replayed"] is True and again["key"] is None
    assert {k: v for k, v in again.items() if k not in ("key", "replayed")} == {
        k: v for k, v in first.items() if k not in ("key", "replayed")
    }
    status, err = await create(client, body | {"name": "other"})
    assert status == 409 and err["error"]["code"] == "idempotency_conflict"
    assert err["error"]["field"] == "idempotency_key"
    status, err = await create(client, body | {"spend_limit": {"credits": 5}})
    assert status == 409
    status, plain = await create(client, {"name": "prod"})  # without one: a new key each time
    assert status == 201 and plain["replayed"] is False and plain["key"]
    listed = await (await client.get("/v1/accounts/acme/keys", headers=admin())).json()
    assert len(listed["keys"]) == 2


async def test_concurrent_repeats_make_one_key(client: Client) -> None:
    assert (await client.put("/v1/accounts/acme", json={}, headers=admin())).status == 201
    results = await asyncio.gather(
        *(create(client, {"name": "double-click", "idempotency_key": "click"}) for _ in range(8))
    )
    assert sorted(s for s, _ in results) == [200] * 7 + [201]
    assert len({b["key_id"] for _, b in results}) == 1
    assert sum(1 for _, b in results if b["key"]) == 1
    listed = await (await client.get("/v1/accounts/acme/keys", headers=admin())).json()
    assert len(listed["keys"]) == 1


async def test_bad_idempotency_keys_are_422_naming_the_field(client: Client) -> None:
    assert (await client.put("/v1/accounts/acme", json={}, headers=admin())).status == 201
    for bad in ("", "a b", "x" * 129, "a/b", 7, "nul\x00"):
        status, err = await create(client, {"idempotency_key": bad})
        assert status == 422, bad
        assert err["error"]["field"] == "idempotency_key"
    status, err = await create(client, {"idempotency_key": "k"}, account="ghost")
    assert status == 404 and err["error"]["code"] == "unknown_account"
    listed = await (await client.get("/v1/accounts/acme/keys", headers=admin())).json()
    assert listed["keys"] == []
