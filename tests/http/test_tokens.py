"""Sidecar API tokens and scopes (docs/tokens.md): every route enforces its scope (the route
registry walked), tokens shown once and stored as hashes, rotation with a grace period, revocation,
account-prefix tokens confined to their accounts (encodings included), bootstrap tokens as
before."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.http.api import API
from sidecar.http.contract import Operation
from sidecar.http.openapi import document
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.tokens import SCOPES, token_hash
from sidecar.redis.client import RedisClient
from tests.conftest import ADMIN, SERVICE, FakeClock, admin, service

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.sql_free  # (its writer is off: SQL is never reached)

PATH_VALUES = {
    "account": "acme_1",
    "plan": "pro",
    "hold_id": "h1",
    "key_id": "key_x",
    "token_id": "nosuchtoken",
    "package_id": "p1",
    "event_id": "evt_1",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(c: Client, scopes: Sequence[str], prefix: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"t-{'-'.join(scopes)}", "scopes": list(scopes)}
    if prefix is not None:
        body["account_prefix"] = prefix
    r = await c.post("/v1/tokens", json=body, headers=admin())
    assert r.status == 201, await r.text()
    return dict(await r.json())


def concrete(op: Operation) -> str:
    path = op.spec_path
    for name, value in PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    return path


def scoped_operations() -> list[Operation]:
    return [op for op in API.operations if op.auth.scopes]


@pytest.mark.parametrize("op", scoped_operations(), ids=lambda op: f"{op.method} {op.path}")
async def test_every_scoped_route_refuses_a_token_without_its_scope_and_takes_one_with_it(
    client: Client, op: Operation
) -> None:
    lacking = [s for s in SCOPES if s != "admin" and s not in op.auth.scopes]
    without = await create(client, lacking)
    with_it = await create(client, [op.auth.scopes[0]])
    path = concrete(op)
    r = await client.request(op.method, path, json={}, headers=bearer(without["token"]))
    assert r.status == 403, (op.method, path, await r.text())
    error = (await r.json())["error"]
    assert error["code"] == "forbidden" and f"`{op.auth.scopes[0]}`" in error["message"]
    r = await client.request(op.method, path, json={}, headers=bearer(with_it["token"]))
    assert r.status not in (401, 403), (op.method, path, await r.text())


def test_the_spec_lists_each_routes_scopes_with_admin_as_the_alternative() -> None:
    spec = document(API)
    for op in scoped_operations():
        declared = spec["paths"][op.spec_path][op.method.lower()]["security"]
        assert declared == [{"token": [s]} for s in dict.fromkeys((*op.auth.scopes, "admin"))]


async def test_a_token_is_shown_once_and_stored_only_as_its_hash(
    client: Client, redis: RedisClient
) -> None:
    made = await create(client, ["read"])
    token = made["token"]
    assert token.startswith(f"cst_{made['token_id']}_")
    raw: Any = await redis.hget(KeySpace().tokens(), made["token_id"])
    assert token.encode() not in raw and token_hash(token).encode() in raw
    for path in ("/v1/tokens", f"/v1/tokens/{made['token_id']}"):
        r = await client.get(path, headers=admin())
        assert r.status == 200 and token not in await r.text()
    r = await client.get("/v1/tokens", headers=admin())
    listed = (await r.json())["tokens"]
    assert [t["token_id"] for t in listed] == [made["token_id"]]
    assert listed[0]["scopes"] == ["read"] and listed[0]["revoked_at"] is None


async def test_a_read_token_reads_and_cannot_change_anything(client: Client) -> None:
    read = bearer((await create(client, ["read"]))["token"])
    assert (await client.put("/v1/accounts/acme", json={}, headers=admin())).status == 201
    assert (await client.get("/v1/accounts/acme/balance", headers=read)).status == 200
    grant = {"grant_id": "g", "credits": 5, "reason": "test"}
    r = await client.post("/v1/accounts/acme/grants", json=grant, headers=read)
    assert r.status == 403 and "`admin`" in (await r.json())["error"]["message"]
    check = {"account": "acme", "cost": 1, "idempotency_key": "k"}
    assert (await client.post("/v1/check", json=check, headers=read)).status == 403


async def test_bootstrap_tokens_keep_working_as_before(client: Client) -> None:
    assert (await client.put("/v1/accounts/acme", json={}, headers=admin())).status == 201
    grant = {"grant_id": "g", "credits": 5, "reason": "test"}
    assert (
        await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())
    ).status == 201
    check = {"account": "acme", "cost": 1, "idempotency_key": "k"}
    assert (await client.post("/v1/check", json=check, headers=service())).status == 200
    assert (await client.get("/v1/admin/packages", headers=service())).status == 200
    r = await client.get("/v1/accounts/acme/balance", headers=service())
    assert r.status == 403
    assert (await client.get("/v1/tokens", headers=bearer(SERVICE))).status == 403
    assert (await client.get("/v1/tokens", headers=bearer(ADMIN))).status == 200


async def test_unknown_malformed_and_missing_tokens_are_401(client: Client) -> None:
    made = await create(client, ["read"])
    good = made["token"]
    for bad in (
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # the secret off by one character
        "cst_" + "a" * 16 + "_" + good.rsplit("_", 1)[-1],  # another id
        "cst_",
        "cst_\u00e9\u00e9\u00e9",
        good + "x",
    ):
        r = await client.get("/v1/plans", headers={"Authorization": "Bearer " + bad})
        assert r.status == 401, bad
    assert (await client.get("/v1/plans")).status == 401


async def test_rotation_keeps_the_old_secret_for_the_grace_and_only_the_new_one_after(
    client: Client, clock: FakeClock
) -> None:
    made = await create(client, ["read"])
    old = bearer(made["token"])
    r = await client.post(
        f"/v1/tokens/{made['token_id']}/rotate", json={"grace_seconds": 60}, headers=admin()
    )
    assert r.status == 200
    rotated = await r.json()
    new = bearer(rotated["token"])
    assert rotated["token_id"] == made["token_id"] and rotated["token"] != made["token"]
    assert rotated["previous_valid_until"] is not None
    assert (await client.get("/v1/plans", headers=old)).status == 200
    assert (await client.get("/v1/plans", headers=new)).status == 200
    clock.advance(60_000)
    assert (await client.get("/v1/plans", headers=old)).status == 401
    assert (await client.get("/v1/plans", headers=new)).status == 200


async def test_a_rotation_sent_twice_never_cuts_the_first_secrets_grace_short(
    client: Client, clock: FakeClock
) -> None:
    made = await create(client, ["read"])
    path = f"/v1/tokens/{made['token_id']}/rotate"
    first = await (await client.post(path, json={"grace_seconds": 600}, headers=admin())).json()
    clock.advance(1_000)
    second = await (await client.post(path, json={"grace_seconds": 600}, headers=admin())).json()
    for t in (made["token"], first["token"], second["token"]):
        assert (await client.get("/v1/plans", headers=bearer(t))).status == 200
    clock.advance(600_000)
    assert (await client.get("/v1/plans", headers=bearer(made["token"]))).status == 401
    assert (await client.get("/v1/plans", headers=bearer(second["token"]))).status == 200


async def test_a_rotation_without_a_body_keeps_the_old_secret_an_hour(
    client: Client, clock: FakeClock
) -> None:
    made = await create(client, ["read"])
    r = await client.post(f"/v1/tokens/{made['token_id']}/rotate", headers=admin())
    assert r.status == 200
    clock.advance(3_599_000)
    assert (await client.get("/v1/plans", headers=bearer(made["token"]))).status == 200
    clock.advance(1_000)
    assert (await client.get("/v1/plans", headers=bearer(made["token"]))).status == 401


async def test_a_revoked_token_is_refused_at_once_and_cannot_be_rotated(client: Client) -> None:
    made = await create(client, ["read"])
    path = f"/v1/tokens/{made['token_id']}"
    r = await client.delete(path, headers=admin())
    assert r.status == 200 and (await r.json())["revoked_at"] is not None
    assert (await client.get("/v1/plans", headers=bearer(made["token"]))).status == 401
    again = await client.delete(path, headers=admin())
    assert again.status == 200 and (await again.json()) == await r.json()
    r = await client.post(f"{path}/rotate", headers=admin())
    assert r.status == 409 and (await r.json())["error"]["code"] == "token_revoked"
    r = await client.delete("/v1/tokens/nosuchtoken", headers=admin())
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_token"


async def test_a_stored_admin_token_may_manage_tokens(client: Client) -> None:
    boss = bearer((await create(client, ["admin"]))["token"])
    r = await client.post("/v1/tokens", json={"name": "x", "scopes": ["service"]}, headers=boss)
    assert r.status == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["read", "read"]}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"name": "x" * 201, "scopes": ["read"]}, "name"),
        ({"name": "x", "scopes": ["read"], "account_prefix": "a/b"}, "account_prefix"),
        ({"name": "x", "scopes": ["read"], "account_prefix": ""}, "account_prefix"),
        ({"name": "x", "scopes": "read"}, "scopes"),
        ({"name": "x", "scopes": ["read"], "extra": 1}, "extra"),
    ],
)
async def test_a_bad_token_request_is_a_422_naming_the_field_and_creates_nothing(
    client: Client, redis: RedisClient, body: dict[str, Any], field: str
) -> None:
    r = await client.post("/v1/tokens", json=body, headers=admin())
    assert r.status == 422, await r.text()
    assert (await r.json())["error"]["field"] == field
    assert await redis.hgetall(KeySpace().tokens()) == {}


async def test_a_bad_grace_is_a_422_and_changes_nothing(client: Client, redis: RedisClient) -> None:
    made = await create(client, ["read"])
    before = await redis.hgetall(KeySpace().tokens())
    for grace in (-1, 30 * 86400 + 1, "60", 1.5):
        r = await client.post(
            f"/v1/tokens/{made['token_id']}/rotate", json={"grace_seconds": grace}, headers=admin()
        )
        assert r.status == 422 and (await r.json())["error"]["field"] == "grace_seconds"
    assert await redis.hgetall(KeySpace().tokens()) == before


# -- account-prefix tokens ------------------------------------------------------------------


async def test_a_prefix_token_reaches_its_accounts_only(client: Client) -> None:
    t = bearer((await create(client, ["read", "service"], prefix="acme_"))["token"])
    for a in ("acme_1", "other"):
        assert (await client.put(f"/v1/accounts/{a}", json={}, headers=admin())).status == 201
        grant = {"grant_id": "g", "credits": 10, "reason": "test"}
        r = await client.post(f"/v1/accounts/{a}/grants", json=grant, headers=admin())
        assert r.status == 201
    assert (await client.get("/v1/accounts/acme_1/balance", headers=t)).status == 200
    r = await client.get("/v1/accounts/other/balance", headers=t)
    assert r.status == 403 and "acme_" in (await r.json())["error"]["message"]
    check = {"account": "acme_1", "cost": 1, "idempotency_key": "k"}
    assert (await client.post("/v1/check", json=check, headers=t)).status == 200
    r = await client.post("/v1/check", json=check | {"account": "other"}, headers=t)
    assert r.status == 403
    # not about one account: refused
    for path in ("/v1/admin/accounts", "/v1/plans", "/v1/admin/outbox"):
        r = await client.get(path, headers=t)
        assert r.status == 403 and "not about one account" in (await r.json())["error"]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/accounts/ACME_1/balance",  # case matters
        "/v1/accounts/acme/balance",  # shorter than the prefix
        "/v1/accounts/%61cme/balance",
        "/v1/accounts/acme%5F1/../other/balance",
        "/v1/accounts/acme_1%2F..%2Fother/balance",
        "/v1/accounts/acme_1%00/balance",
        "/v1/accounts/%EF%BD%81cme_1/balance",  # a fullwidth a
        "/v1/accounts/acm%C3%A9_1/balance",
        "/v1/accounts/+acme_1/balance",
    ],
)
async def test_a_prefix_token_cannot_escape_through_encodings(client: Client, path: str) -> None:
    t = bearer((await create(client, ["read"], prefix="acme_"))["token"])
    assert (await client.put("/v1/accounts/other", json={}, headers=admin())).status == 201
    r = await client.get(path, headers=t, allow_redirects=False)
    assert r.status in (403, 404, 422), (path, r.status, await r.text())


async def test_a_prefix_token_may_use_an_encoded_id_of_its_own_account(client: Client) -> None:
    t = bearer((await create(client, ["read"], prefix="acme_"))["token"])
    assert (await client.put("/v1/accounts/acme_1", json={}, headers=admin())).status == 201
    r = await client.get("/v1/accounts/%61cme%5F1/balance", headers=t)
    assert r.status == 200 and (await r.json())["account"] == "acme_1"


async def test_a_prefix_token_cannot_name_another_account_through_json_escapes(
    client: Client,
) -> None:
    t = bearer((await create(client, ["service"], prefix="acme_"))["token"])
    raw = b'{"account": "\\u006fther", "cost": 1, "idempotency_key": "k"}'
    r = await client.post("/v1/check", data=raw, headers=t | {"Content-Type": "application/json"})
    assert r.status == 403


async def test_a_rotated_token_gets_a_whole_new_secret_every_time(client: Client) -> None:
    """The secret is url-safe base64 and may hold `_`: a rotation keeps all 43 characters of
    it (256 bits), never only the part after its last `_`."""
    made = await create(client, ["read"])
    prefix = f"cst_{made['token_id']}_"
    for _ in range(40):  # about one secret in five holds a `_`
        r = await client.post(
            f"/v1/tokens/{made['token_id']}/rotate", json={"grace_seconds": 0}, headers=admin()
        )
        token = (await r.json())["token"]
        assert token.startswith(prefix) and len(token) == len(prefix) + 43
        assert (await client.get("/v1/plans", headers=bearer(token))).status == 200
