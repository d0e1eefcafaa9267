"""Issue 22 (scoped, named sidecar API tokens) attacked as a hostile client and a chaos tester:
escaping an account prefix (ids that name an account elsewhere: holds, keys, transactions,
query parameters, duplicate JSON keys, encodings; every route walked), header smuggling,
token parsing, rotation and revocation raced twenty at a time, requests streaming in while a
token is revoked, Redis flushed and paused under the app.

Throughout: a refused request is a JSON 4xx naming the problem, never a 500, and changes
nothing (the Redis snapshot before and after); a revoked token is refused from the moment the
revoke is answered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.errors import StoreUnavailable
from sidecar.http.api import API
from sidecar.http.app import create_app
from sidecar.http.contract import Operation
from sidecar.http.state import TOKEN_CACHE
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.token_cache import TokenCache
from sidecar.ledger.tokens import Tokens
from sidecar.redis.client import RedisClient
from sidecar.redis.embedded import RedisServer
from tests.attack.conftest import paused_settings
from tests.conftest import ADMIN, SERVICE, FakeClock, admin, snapshot

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.sql_free  # (the writer is off: SQL is never reached)

TOKENS = KeySpace().tokens()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(
    c: Client, scopes: Sequence[str], prefix: str | None = None, *, by: str = ADMIN
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"t-{'-'.join(scopes)}", "scopes": list(scopes)}
    if prefix is not None:
        body["account_prefix"] = prefix
    r = await c.post("/v1/tokens", json=body, headers=bearer(by))
    assert r.status == 201, await r.text()
    return dict(await r.json())


async def refused(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer is a JSON ``status`` error (with ``code``) whose message names something."""
    assert r.status == status, (r.status, await r.text())
    assert r.content_type == "application/json"
    error = dict((await r.json())["error"])
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


async def works(c: Client, token: str) -> bool:
    """Whether ``token`` is taken (a read route: 200), or refused (401)."""
    r = await c.get("/v1/plans", headers=bearer(token))
    assert r.status in (200, 401), (r.status, await r.text())
    return r.status == 200


async def setup_accounts(c: Client) -> None:
    """acme_1 (ours for an ``acme_`` token) and other, each with 100 credits, a key and a hold."""
    for a in ("acme_1", "other"):
        assert (await c.put(f"/v1/accounts/{a}", json={}, headers=admin())).status == 201
        grant = {"grant_id": "g", "credits": 100, "reason": "test"}
        r = await c.post(f"/v1/accounts/{a}/grants", json=grant, headers=admin())
        assert r.status == 201, await r.text()
        hold = {"account": a, "hold_id": f"h_{a}", "amount": 10}
        r = await c.post("/v1/holds", json=hold, headers=admin())
        assert r.status in (200, 201), await r.text()


async def key_of(c: Client, account: str) -> str:
    r = await c.post(f"/v1/accounts/{account}/keys", json={"name": "k"}, headers=admin())
    assert r.status == 201, await r.text()
    return str((await r.json())["key_id"])


# --- escaping the account prefix ------------------------------------------------------------


def _concrete(op: Operation) -> str:
    values = {
        "account": "other",
        "plan": "pro",
        "hold_id": "h_other",
        "key_id": "key_other",
        "token_id": "nosuchtoken",
        "package_id": "p1",
        "event_id": "evt_1",
    }
    path = op.spec_path
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


@pytest.mark.parametrize(
    "op",
    [op for op in API.operations if op.auth.scopes],
    ids=lambda op: f"{op.method} {op.path}",
)
async def test_a_prefix_admin_token_reaches_no_other_account_on_any_route_and_changes_nothing(
    client: Client, redis: RedisClient, op: Operation
) -> None:
    """An admin token limited to ``acme_`` on every scoped route, naming the other account
    wherever a route takes one (path, body): 403, JSON, and Redis unchanged."""
    await setup_accounts(client)
    t = bearer((await create(client, ["admin"], prefix="acme_"))["token"])
    body = {
        "account": "other",
        "hold_id": "h_other",
        "amount": 1,
        "cost": 1,
        "idempotency_key": "k",
        "refund_id": "r",
        "transaction_id": "t",
        "name": "x",
        "scopes": ["admin"],
        "grant_id": "g2",
        "credits": 5,
        "reason": "test",
    }
    before = await snapshot(redis)
    r = await client.request(op.method, _concrete(op), json=body, headers=t)
    # a body the route does not take is a 422 (extra fields forbidden) before the prefix is
    # looked at; everything else is the prefix's 403
    assert r.status in (403, 422), (op.method, r.status, await r.text())
    assert r.content_type == "application/json"
    if r.status == 403:
        assert "acme_" in (await r.json())["error"]["message"]
    assert await snapshot(redis) == before


async def test_a_prefix_admin_token_cannot_mint_rotate_or_revoke_tokens(
    client: Client, redis: RedisClient
) -> None:
    """Else it would mint itself an admin token for every account."""
    boss = await create(client, ["admin"], prefix="acme_")
    victim = await create(client, ["read"])
    t = bearer(boss["token"])
    before = await snapshot(redis)
    for method, path, body in (
        ("POST", "/v1/tokens", {"name": "x", "scopes": ["admin"]}),
        ("POST", "/v1/tokens", {"name": "x", "scopes": ["admin"], "account_prefix": "acme_"}),
        ("GET", "/v1/tokens", None),
        ("GET", f"/v1/tokens/{victim['token_id']}", None),
        ("POST", f"/v1/tokens/{victim['token_id']}/rotate", {"grace_seconds": 0}),
        ("POST", f"/v1/tokens/{boss['token_id']}/rotate", {"grace_seconds": 0}),
        ("DELETE", f"/v1/tokens/{victim['token_id']}", None),
    ):
        r = await client.request(method, path, json=body, headers=t)
        error = await refused(r, 403, "forbidden")
        assert "not about one account" in error["message"], (method, path)
    assert await snapshot(redis) == before
    assert await works(client, victim["token"])


async def test_a_prefix_token_cannot_touch_another_accounts_key_by_its_id(
    client: Client, redis: RedisClient
) -> None:
    await setup_accounts(client)
    theirs = await key_of(client, "other")
    t = bearer((await create(client, ["admin"], prefix="acme_"))["token"])
    before = await snapshot(redis)
    r = await client.patch(f"/v1/keys/{theirs}", json={"spend_limit": None}, headers=t)
    await refused(r, 403, "forbidden")
    r = await client.delete(f"/v1/keys/{theirs}", headers=t)
    await refused(r, 403, "forbidden")
    assert await snapshot(redis) == before
    r = await client.get("/v1/accounts/other/keys", headers=admin())
    assert [k["key_id"] for k in (await r.json())["keys"]] == [theirs]


async def test_a_prefix_token_settling_another_accounts_hold_under_its_own_account_finds_none(
    client: Client, redis: RedisClient
) -> None:
    """The hold id of the other account, the token's own account in the body: holds live
    under their account, so it is an unknown hold of acme_1, never the other's."""
    await setup_accounts(client)
    t = bearer((await create(client, ["service"], prefix="acme_"))["token"])
    before = await snapshot(redis)
    for action, body in (
        ("settle", {"account": "acme_1", "amount": 10}),
        ("release", {"account": "acme_1"}),
    ):
        r = await client.post(f"/v1/holds/h_other/{action}", json=body, headers=t)
        assert 400 <= r.status < 500 and r.status != 403, (r.status, await r.text())
        await refused(r, r.status)
        r = await client.post(
            f"/v1/holds/h_other/{action}", json=body | {"account": "other"}, headers=t
        )
        await refused(r, 403, "forbidden")
    assert await snapshot(redis) == before


async def test_a_prefix_admin_token_refunding_another_accounts_transaction_finds_none(
    client: Client, redis: RedisClient
) -> None:
    await setup_accounts(client)
    check = {"account": "other", "cost": 5, "idempotency_key": "spend"}
    r = await client.post("/v1/check", json=check, headers=admin())
    assert r.status == 200, await r.text()
    txid = (await r.json())["transaction_id"]
    t = bearer((await create(client, ["admin"], prefix="acme_"))["token"])
    before = await snapshot(redis)
    refund = {"account": "acme_1", "refund_id": "r1", "transaction_id": txid, "reason": "t"}
    r = await client.post("/v1/refunds", json=refund, headers=t)
    assert r.status in (404, 409, 422), (r.status, await r.text())
    await refused(r, r.status)
    r = await client.post("/v1/refunds", json=refund | {"account": "other"}, headers=t)
    await refused(r, 403, "forbidden")
    assert await snapshot(redis) == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"account": "acme_1", "account": "other", "cost": 1, "idempotency_key": "k"}',
        b'{"account": "acme_1", "cost": 1, "idempotency_key": "k", "\\u0061ccount": "other"}',
        b'{"acc\\u006funt": "other", "cost": 1, "idempotency_key": "k"}',
    ],
)
async def test_a_duplicate_or_escaped_account_key_is_read_once_the_same_way_by_check_and_prefix(
    client: Client, redis: RedisClient, raw: bytes
) -> None:
    """Whichever of two ``account`` keys the body parser keeps, the prefix is checked on the
    same one the handler charges: here the other account, so 403 and nothing charged."""
    await setup_accounts(client)
    t = bearer((await create(client, ["service"], prefix="acme_"))["token"])
    before = await snapshot(redis)
    headers = t | {"Content-Type": "application/json"}
    r = await client.post("/v1/check", data=raw, headers=headers)
    await refused(r, 403, "forbidden")
    assert await snapshot(redis) == before


async def test_a_duplicate_account_key_ending_on_the_tokens_own_charges_only_that_account(
    client: Client,
) -> None:
    await setup_accounts(client)
    t = bearer((await create(client, ["service"], prefix="acme_"))["token"])
    raw = b'{"account": "other", "account": "acme_1", "cost": 7, "idempotency_key": "k"}'

    async def balances() -> list[int]:
        return [
            (await (await client.get(f"/v1/accounts/{a}/balance", headers=admin())).json())[
                "balance"
            ]
            for a in ("acme_1", "other")
        ]

    mine, theirs = await balances()
    r = await client.post("/v1/check", data=raw, headers=t | {"Content-Type": "application/json"})
    assert r.status == 200, await r.text()
    assert await balances() == [mine - 7, theirs]


@pytest.mark.parametrize(
    "account",
    [
        "acme_1\n",
        "acme_1\u0000",
        "acme_\u212a",  # Kelvin sign: lowercases to k
        "ACME_1",
        " acme_1",
        "acme_1 ",
        "acme_1/../other",
        "\uff41cme_1",  # fullwidth a
        "acme_1\u200b",  # zero width space
    ],
)
async def test_a_prefix_token_cannot_escape_through_body_encodings(
    client: Client, redis: RedisClient, account: str
) -> None:
    await setup_accounts(client)
    t = bearer((await create(client, ["service"], prefix="acme_"))["token"])
    before = await snapshot(redis)
    check = {"account": account, "cost": 1, "idempotency_key": "k"}
    r = await client.post("/v1/check", json=check, headers=t)
    assert r.status in (403, 422), (account, r.status, await r.text())
    await refused(r, r.status)
    assert await snapshot(redis) == before


async def test_query_parameters_cannot_name_another_account(client: Client) -> None:
    await setup_accounts(client)
    t = bearer((await create(client, ["read"], prefix="acme_"))["token"])
    for path in (
        "/v1/accounts/acme_1/transactions?account=other",
        "/v1/accounts/acme_1/usage?account=other",
        "/v1/accounts/acme_1/holds?account=other",
        "/v1/admin/accounts?prefix=other",
        "/v1/admin/accounts?prefix=acme_",
    ):
        r = await client.get(path, headers=t)
        assert r.status in (403, 422), (path, r.status, await r.text())
        await refused(r, r.status)
    # its own account's export is not refused by the prefix (the SQL ledger, off here, answers)
    r = await client.get("/v1/accounts/acme_1/transactions?format=csv", headers=t)
    assert r.status not in (401, 403, 500), await r.text()


async def test_prefixes_that_are_prefixes_of_each_other_reach_what_their_text_says(
    client: Client,
) -> None:
    """``acme`` reaches ``acme_1`` and ``acmeevil`` (a prefix is text, docs/tokens.md);
    ``acme_1`` reaches ``acme_10`` but not ``acme_``."""
    for a in ("acme_1", "acme_10", "acme_", "acmeevil"):
        assert (await client.put(f"/v1/accounts/{a}", json={}, headers=admin())).status == 201
    short = bearer((await create(client, ["read"], prefix="acme"))["token"])
    long = bearer((await create(client, ["read"], prefix="acme_1"))["token"])
    for a, s, lg in (
        ("acme_1", 200, 200),
        ("acme_10", 200, 200),
        ("acme_", 200, 403),
        ("acmeevil", 200, 403),
    ):
        assert (await client.get(f"/v1/accounts/{a}/balance", headers=short)).status == s
        assert (await client.get(f"/v1/accounts/{a}/balance", headers=long)).status == lg


# --- the Authorization header -----------------------------------------------------------------


async def raw_request(client: Client, head: bytes) -> tuple[int, bytes]:
    """Sends ``head`` (request line and headers, CRLF-separated, no final blank line) as is
    on a socket of its own; the status and body."""
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_two_authorization_headers_are_refused_whichever_comes_first(
    client: Client, redis: RedisClient
) -> None:
    """A proxy and the sidecar may each read a different one of two Authorization headers:
    an ambiguous request is refused, not authorized on the first (or last) one."""
    read = (await create(client, ["read"]))["token"]
    for first, second in ((ADMIN, "nonsense"), ("nonsense", ADMIN), (read, ADMIN), (ADMIN, read)):
        head = (
            b"GET /v1/tokens HTTP/1.1\r\nHost: x\r\n"
            + b"Authorization: Bearer "
            + first.encode()
            + b"\r\nAuthorization: Bearer "
            + second.encode()
        )
        status, body = await raw_request(client, head)
        assert status == 401, (first, second, status, body)
        assert b"Authorization" in body


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (b"bearer " + ADMIN.encode(), 200),  # the scheme is case-insensitive
        (b"BEARER " + ADMIN.encode(), 200),
        (b"Bearer  " + ADMIN.encode(), 200),  # extra spaces before the token
        (b"Bearer " + ADMIN.encode() + b"  ", 200),  # trailing whitespace is not the header's
        (b"Bearer\t" + ADMIN.encode(), 401),
        (b"Bearer", 401),
        (b"Bearer ", 401),
        (b"Basic " + ADMIN.encode(), 401),
        (ADMIN.encode(), 401),
        (b"Bearer " + ADMIN.encode() + b" x", 401),
        (b"Bearer " + ADMIN.encode() + b"\x00", 400),
        (b"Bearer " + ADMIN.encode() + b"\xff", 401),
        (b"Bearer " + ADMIN.encode()[:-1], 401),
        (b"Bearer " + SERVICE.encode(), 403),
    ],
)
async def test_authorization_header_variants_are_parsed_one_way(
    client: Client, value: bytes, status: int
) -> None:
    got, body = await raw_request(
        client, b"GET /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: " + value
    )
    assert got == status, (value, got, body)
    assert got == 200 or b'"error"' in body or got == 400


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"authorization: Bearer " + ADMIN.encode(), 200),  # names are case-insensitive
        (b"AUTHORIZATION: Bearer " + ADMIN.encode(), 200),
        (b"Authorization: Bearer " + ADMIN.encode() + b"\r\nauthorization: Bearer x", 401),
        (b"Authorization: Bearer\r\n " + ADMIN.encode(), 400),  # obsolete line folding
        (b"Authorization : Bearer " + ADMIN.encode(), 400),  # space before the colon
        (b"Authorization: Bearer x\r\nX-Authorization: Bearer " + ADMIN.encode(), 401),
        (b"Proxy-Authorization: Bearer " + ADMIN.encode(), 401),
        (b"Authorization: Bearer " + ADMIN.encode() + b", Bearer x", 401),
    ],
)
async def test_authorization_header_smuggling_is_refused(
    client: Client, headers: bytes, status: int
) -> None:
    got, body = await raw_request(client, b"GET /v1/tokens HTTP/1.1\r\nHost: x\r\n" + headers)
    assert got == status, (headers, got, body)


async def test_pipelined_requests_on_one_connection_do_not_share_a_caller(
    client: Client,
) -> None:
    """An authorized request, then one without a token and one with a read token, on one
    keep-alive connection: each is judged on its own header."""
    read = (await create(client, ["read"]))["token"]
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(
            b"GET /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + ADMIN.encode()
            + b"\r\n\r\nGET /v1/tokens HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + read.encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    assert statuses == [200, 401, 403], data


async def test_a_token_with_a_trailing_newline_or_nul_in_a_header_is_refused_never_500(
    client: Client,
) -> None:
    made = await create(client, ["read"])
    for tail in (b"\n", b"\r", b"\x00", b"\x0b"):
        got, body = await raw_request(
            client,
            b"GET /v1/plans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + made["token"].encode()
            + tail,
        )
        assert got in (400, 401), (tail, got, body)


# --- token parsing -----------------------------------------------------------------------------


async def test_malformed_and_borrowed_token_ids_are_401_json(client: Client) -> None:
    a = await create(client, ["read"])
    b = await create(client, ["admin"])
    a_id, a_secret = a["token_id"], a["token"].rsplit("_", 1)[-1]
    b_id = b["token_id"]
    for bad in (
        f"cst_{a_id.upper()}_{a_secret}",
        f"CST_{a_id}_{a_secret}",
        f"cst_{a_id[:-1]}_{a_secret}",
        f"cst_{a_id}x_{a_secret}",
        f"cst_{a_id}__{a_secret}",
        f"cst_{a_id}_",
        f"cst_{a_id}{a_secret}",
        f"cst_{b_id}_{a_secret}",  # a's secret under b's (admin) id
        f"cst__{a_id}_{a_secret}",
        f"cst_{a_id}_{a_secret}_",
        f"cst_{a_id}_{a_secret[:-1]}",
        f"cst_{a_id}_{a_secret}\u00e9",
        "cst_~v_" + a_secret,
        "cst_" + "0" * 16 + "_x",
        a_secret,
    ):
        r = await client.get("/v1/tokens", headers=bearer(bad))
        error = await refused(r, 401, "unauthorized")
        assert "token" in error["message"]
    assert await works(client, a["token"])


async def test_a_read_or_service_token_cannot_create_tokens_and_nothing_is_created(
    client: Client, redis: RedisClient
) -> None:
    read = (await create(client, ["read"]))["token"]
    multi = (await create(client, ["read", "service", "checkout", "portal"]))["token"]
    before = await snapshot(redis)
    for who in (read, multi, SERVICE):
        for scopes in (["admin"], ["read"]):
            r = await client.post(
                "/v1/tokens", json={"name": "up", "scopes": scopes}, headers=bearer(who)
            )
            error = await refused(r, 403, "forbidden")
            assert "`admin`" in error["message"]
    assert await snapshot(redis) == before


async def test_a_stored_admin_token_may_create_an_admin_token_and_revoke_itself(
    client: Client,
) -> None:
    boss = await create(client, ["admin"])
    heir = await create(client, ["admin"], by=boss["token"])
    r = await client.delete(f"/v1/tokens/{boss['token_id']}", headers=bearer(boss["token"]))
    assert r.status == 200, await r.text()
    assert not await works(client, boss["token"])
    r = await client.get("/v1/tokens", headers=bearer(boss["token"]))
    await refused(r, 401, "unauthorized")
    assert await works(client, heir["token"])


async def test_rotated_then_revoked_every_secret_dies_and_it_stays_dead(
    client: Client, clock: FakeClock, redis: RedisClient
) -> None:
    made = await create(client, ["read"])
    path = f"/v1/tokens/{made['token_id']}"
    secrets = [made["token"]]
    for _ in range(3):
        r = await client.post(f"{path}/rotate", json={"grace_seconds": 3600}, headers=admin())
        assert r.status == 200
        secrets.append((await r.json())["token"])
        clock.advance(1)
    assert [await works(client, s) for s in secrets] == [True] * 4
    r = await client.delete(path, headers=admin())
    assert r.status == 200
    view = await r.json()
    assert view["revoked_at"] is not None and view["previous_valid_until"] is None
    assert [await works(client, s) for s in secrets] == [False] * 4
    before = await snapshot(redis)
    r = await client.post(f"{path}/rotate", json={"grace_seconds": 0}, headers=admin())
    await refused(r, 409, "token_revoked")
    assert await snapshot(redis) == before
    clock.advance(-10_000)  # the clock stepping back brings no grace back
    assert [await works(client, s) for s in secrets] == [False] * 4


async def test_a_rotation_with_no_grace_cuts_only_the_secret_it_replaces_a_revoke_all(
    client: Client,
) -> None:
    """As documented ("each replaced secret keeps its own"): a grace-0 rotation after a
    rotation with a grace leaves the earlier secret in its grace; to cut every secret of a
    leaked token, revoke it."""
    made = await create(client, ["read"])
    path = f"/v1/tokens/{made['token_id']}"
    r = await client.post(f"{path}/rotate", json={"grace_seconds": 3600}, headers=admin())
    first = (await r.json())["token"]
    r = await client.post(f"{path}/rotate", json={"grace_seconds": 0}, headers=admin())
    second = (await r.json())["token"]
    assert [await works(client, t) for t in (made["token"], first, second)] == [True, False, True]
    assert (await client.delete(path, headers=admin())).status == 200
    assert [await works(client, t) for t in (made["token"], first, second)] == [False] * 3


async def test_a_rotation_with_no_grace_cuts_the_old_secret_at_once(client: Client) -> None:
    made = await create(client, ["read"])
    r = await client.post(
        f"/v1/tokens/{made['token_id']}/rotate", json={"grace_seconds": 0}, headers=admin()
    )
    assert r.status == 200
    new = (await r.json())["token"]
    assert (await r.json())["previous_valid_until"] is None
    assert not await works(client, made["token"])
    assert await works(client, new)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("GET", "/v1/tokens/ABCDEF", None, 422, "token_id"),
        ("GET", "/v1/tokens/" + "a" * 65, None, 422, "token_id"),
        ("GET", "/v1/tokens/~v", None, 422, "token_id"),
        ("GET", "/v1/tokens/%7Ev", None, 422, "token_id"),
        ("DELETE", "/v1/tokens/~v", None, 422, "token_id"),
        ("POST", "/v1/tokens/~v/rotate", None, 422, "token_id"),
        ("GET", "/v1/tokens/" + "a" * 16, None, 404, None),
        ("POST", "/v1/tokens/" + "a" * 16 + "/rotate", None, 404, None),
        ("POST", "/v1/tokens", {"name": "x", "scopes": ["Admin"]}, 422, "scopes.0"),
        ("POST", "/v1/tokens", {"name": "x", "scopes": ["admin "]}, 422, "scopes.0"),
        ("POST", "/v1/tokens", {"name": "x", "scopes": [None]}, 422, "scopes.0"),
        ("POST", "/v1/tokens", {"name": "x", "scopes": ["read"] * 6}, 422, "scopes"),
        ("POST", "/v1/tokens", {"name": "x\u0000", "scopes": ["read"]}, 422, "name"),
        ("POST", "/v1/tokens", {"name": 5, "scopes": ["read"]}, 422, "name"),
        ("POST", "/v1/tokens", {"scopes": ["read"]}, 422, "name"),
        (
            "POST",
            "/v1/tokens",
            {"name": "x", "scopes": ["read"], "account_prefix": "acme_\n"},
            422,
            "account_prefix",
        ),
        (
            "POST",
            "/v1/tokens",
            {"name": "x", "scopes": ["read"], "account_prefix": "a" * 129},
            422,
            "account_prefix",
        ),
        (
            "POST",
            "/v1/tokens",
            {"name": "x", "scopes": ["read"], "token_id": "a" * 16},
            422,
            "token_id",
        ),
    ],
)
async def test_bad_token_requests_are_json_4xx_naming_the_field_and_change_nothing(
    client: Client,
    redis: RedisClient,
    method: str,
    path: str,
    body: Any,
    status: int,
    field: str | None,
) -> None:
    await create(client, ["read"])
    before = await snapshot(redis)
    r = await client.request(method, path, json=body, headers=admin())
    error = await refused(r, status)
    if field is not None:
        assert error.get("field") == field, error
    assert await snapshot(redis) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"null",
        b"[]",
        b'"x"',
        b"{",
        b'{"grace_seconds": 1e3}',
        b'{"grace_seconds": true}',
        b'{"grace_seconds": 99999999999999999999999}',
    ],
)
async def test_a_bad_rotate_body_is_a_json_4xx_and_rotates_nothing(
    client: Client, redis: RedisClient, raw: bytes
) -> None:
    made = await create(client, ["read"])
    before = await snapshot(redis)
    r = await client.post(
        f"/v1/tokens/{made['token_id']}/rotate",
        data=raw,
        headers=admin() | {"Content-Type": "application/json"},
    )
    assert r.status in (400, 422), (raw, r.status, await r.text())
    await refused(r, r.status)
    assert await snapshot(redis) == before
    assert await works(client, made["token"])


@pytest.mark.parametrize(
    "name",
    [
        "\U0001f600" * 200,  # 200 characters, 800 bytes
        "é" * 200,
        "a\u0301" * 100,  # combining marks: 200 code points
        'line\nbreak\ttab "quote" \\ back/slash',
        "\u2028\u2029",
        "[]",
        "{}",
        "null",
    ],
)
async def test_token_names_round_trip_through_rotation_unchanged(client: Client, name: str) -> None:
    r = await client.post("/v1/tokens", json={"name": name, "scopes": ["read"]}, headers=admin())
    assert r.status == 201, await r.text()
    made = await r.json()
    assert made["name"] == name
    r = await client.post(f"/v1/tokens/{made['token_id']}/rotate", headers=admin())
    assert r.status == 200 and (await r.json())["name"] == name
    r = await client.get(f"/v1/tokens/{made['token_id']}", headers=admin())
    assert (await r.json())["name"] == name and (await r.json())["scopes"] == ["read"]


async def test_a_name_with_a_lone_surrogate_is_refused_not_500(
    client: Client, redis: RedisClient
) -> None:
    before = await snapshot(redis)
    for raw in (
        b'{"name": "\\ud800", "scopes": ["read"]}',
        b'{"name": "x", "scopes": ["read"], "account_prefix": "\\udfff"}',
        b'{"name": "\xff", "scopes": ["read"]}',
    ):
        r = await client.post(
            "/v1/tokens", data=raw, headers=admin() | {"Content-Type": "application/json"}
        )
        assert r.status in (400, 422), (raw, r.status, await r.text())
        await refused(r, r.status)
    assert await snapshot(redis) == before


# --- concurrency ------------------------------------------------------------------------------


async def test_twenty_concurrent_rotations_without_grace_leave_exactly_one_secret(
    client: Client,
) -> None:
    made = await create(client, ["read"])
    path = f"/v1/tokens/{made['token_id']}/rotate"
    answers = await asyncio.gather(
        *(client.post(path, json={"grace_seconds": 0}, headers=admin()) for _ in range(20))
    )
    assert [a.status for a in answers] == [200] * 20
    secrets = [made["token"], *[(await a.json())["token"] for a in answers]]
    assert len(set(secrets)) == 21
    valid = [s for s in secrets if await works(client, s)]
    assert len(valid) == 1 and valid[0] != made["token"]
    r = await client.get(f"/v1/tokens/{made['token_id']}", headers=admin())
    assert (await r.json())["previous_valid_until"] is None


async def test_twenty_concurrent_rotations_with_grace_keep_the_last_secret_and_graces(
    client: Client, clock: FakeClock
) -> None:
    """Every secret issued stays valid through its grace, up to the eight most recently
    replaced (token.lua's cap); after the grace exactly one is left."""
    made = await create(client, ["read"])
    path = f"/v1/tokens/{made['token_id']}/rotate"

    async def rotate(i: int) -> Any:
        return await client.post(path, json={"grace_seconds": 60}, headers=admin())

    answers = await asyncio.gather(*(rotate(i) for i in range(20)))
    assert [a.status for a in answers] == [200] * 20
    secrets = [made["token"], *[(await a.json())["token"] for a in answers]]
    valid = [s for s in secrets if await works(client, s)]
    assert len(valid) == 9  # the current one and the eight kept
    clock.advance(60_000)
    assert len([s for s in secrets if await works(client, s)]) == 1


async def test_a_ninth_rotation_within_the_grace_drops_the_secret_whose_grace_ends_first(
    client: Client, clock: FakeClock
) -> None:
    """docs/tokens.md: eight replaced secrets at most."""
    made = await create(client, ["read"])
    path = f"/v1/tokens/{made['token_id']}/rotate"
    secrets = [made["token"]]
    for _ in range(9):
        r = await client.post(path, json={"grace_seconds": 60}, headers=admin())
        assert r.status == 200
        secrets.append((await r.json())["token"])
        clock.advance(1)
    assert [await works(client, s) for s in secrets] == [False] + [True] * 9


async def test_rotations_racing_a_revoke_end_revoked_with_every_secret_dead(
    client: Client, redis: RedisClient
) -> None:
    for _ in range(3):
        made = await create(client, ["read"])
        base = f"/v1/tokens/{made['token_id']}"
        calls = [
            client.post(f"{base}/rotate", json={"grace_seconds": 600}, headers=admin())
            for _ in range(10)
        ]
        calls.insert(5, client.delete(base, headers=admin()))
        calls += [client.delete(base, headers=admin()) for _ in range(3)]
        answers = await asyncio.gather(*calls)
        statuses = [a.status for a in answers]
        assert set(statuses) <= {200, 409}, statuses
        secrets = [made["token"]] + [
            (await a.json())["token"]
            for a in answers
            if a.status == 200 and "token" in await a.json()
        ]
        assert not [s for s in secrets if await works(client, s)]
        r = await client.get(base, headers=admin())
        view = await r.json()
        assert view["revoked_at"] is not None and view["previous_valid_until"] is None
        for a in answers:
            if a.status == 409:
                await refused(a, 409, "token_revoked")


async def test_twenty_concurrent_creates_make_twenty_distinct_working_tokens(
    client: Client, redis: RedisClient
) -> None:
    answers = await asyncio.gather(
        *(
            client.post("/v1/tokens", json={"name": f"n{i}", "scopes": ["read"]}, headers=admin())
            for i in range(20)
        )
    )
    assert [a.status for a in answers] == [201] * 20
    made = [await a.json() for a in answers]
    assert len({m["token_id"] for m in made}) == 20
    assert all([await works(client, m["token"]) for m in made])
    r = await client.get("/v1/tokens", headers=admin())
    assert len((await r.json())["tokens"]) == 20


async def test_twenty_concurrent_creates_of_one_token_id_make_one_token_the_rest_409(
    client: Client, redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids are random (82 bits), so this takes forcing: every create draws the same id. One
    is created; the others are refused (409, JSON) without touching it."""
    import sidecar.ledger.tokens as tokens_module

    drawn = iter(range(20))

    def same_id() -> tuple[str, str]:
        return "samesamesamesame", f"cst_samesamesamesame_secret{next(drawn)}"

    monkeypatch.setattr(tokens_module, "new_token", same_id)
    answers = await asyncio.gather(
        *(
            client.post("/v1/tokens", json={"name": f"n{i}", "scopes": ["read"]}, headers=admin())
            for i in range(20)
        )
    )
    statuses = sorted(a.status for a in answers)
    assert statuses == [201] + [409] * 19, statuses
    winner = next(a for a in answers if a.status == 201)
    token = (await winner.json())["token"]
    for a in answers:
        if a.status == 409:
            await refused(a, 409)
    assert await works(client, token)
    r = await client.get("/v1/tokens", headers=admin())
    assert [t["name"] for t in (await r.json())["tokens"]] == [(await winner.json())["name"]]


async def test_idempotency_keys_of_another_account_are_not_replayed_to_a_prefix_token(
    client: Client,
) -> None:
    await setup_accounts(client)
    check = {"account": "other", "cost": 9, "idempotency_key": "shared"}
    r = await client.post("/v1/check", json=check, headers=admin())
    theirs = (await r.json())["transaction_id"]
    t = bearer((await create(client, ["service"], prefix="acme_"))["token"])
    r = await client.post("/v1/check", json=check | {"account": "acme_1"}, headers=t)
    assert r.status == 200, await r.text()
    mine = await r.json()
    assert mine["transaction_id"] != theirs and mine.get("replayed") in (None, False)


async def test_requests_streaming_in_while_a_token_is_revoked_are_refused_from_the_answer_on(
    client: Client,
) -> None:
    made = await create(client, ["read"])
    token = made["token"]
    revoked_at: list[float] = []
    results: list[tuple[float, int]] = []
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set():
            sent = loop.time()
            r = await client.get("/v1/plans", headers=bearer(token))
            results.append((sent, r.status))
            assert r.status in (200, 401), await r.text()

    streams = [asyncio.create_task(stream()) for _ in range(8)]
    await asyncio.sleep(0.3)
    r = await client.delete(f"/v1/tokens/{made['token_id']}", headers=admin())
    assert r.status == 200
    revoked_at.append(loop.time())
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*streams)
    after = [s for sent, s in results if sent >= revoked_at[0]]
    assert after and set(after) == {401}
    assert 200 in {s for _, s in results}


# --- Redis chaos ----------------------------------------------------------------------------


async def wait_until(predicate: Any) -> None:
    """Until ``predicate()`` holds (5 s at most)."""
    async with asyncio.timeout(5):
        while not await predicate():  # noqa: ASYNC110 (the app's state, not an event of ours)
            await asyncio.sleep(0.05)


async def test_redis_flushed_under_the_app_refuses_named_tokens_keeps_bootstrap_never_500(
    client: Client, redis: RedisClient
) -> None:
    read = await create(client, ["read"])
    assert await works(client, read["token"])
    await redis.flushall()

    async def gone() -> bool:
        return not await works(client, read["token"])

    await wait_until(gone)
    assert (await client.get("/v1/plans", headers=admin())).status == 200
    assert (await client.get("/v1/tokens", headers=admin())).status == 200
    r = await client.get(f"/v1/tokens/{read['token_id']}", headers=admin())
    await refused(r, 404, "unknown_token")
    r = await client.delete(f"/v1/tokens/{read['token_id']}", headers=admin())
    await refused(r, 404, "unknown_token")
    fresh = await create(client, ["read"])
    assert await works(client, fresh["token"])


async def test_redis_flushed_while_requests_stream_in_never_answers_500(
    client: Client, redis: RedisClient
) -> None:
    named = (await create(client, ["read"]))["token"]
    seen: dict[str, set[int]] = {"named": set(), "bootstrap": set()}
    stop = asyncio.Event()

    async def stream(who: str, token: str) -> None:
        while not stop.is_set():
            r = await client.get("/v1/plans", headers=bearer(token))
            seen[who].add(r.status)
            assert r.content_type == "application/json"

    streams = [asyncio.create_task(stream("named", named)) for _ in range(4)]
    streams += [asyncio.create_task(stream("bootstrap", ADMIN)) for _ in range(4)]
    await asyncio.sleep(0.2)
    await redis.flushall()
    await asyncio.sleep(1.0)  # past a poll: the named token is gone by now
    stop.set()
    await asyncio.gather(*streams)
    assert seen["named"] == {200, 401} and seen["bootstrap"] == {200}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/tokens/"),
        ("GET", "/v1//tokens"),
        ("GET", "/V1/tokens"),
        ("POST", "/v1/tokens/abc/rotate/"),
        ("PUT", "/v1/tokens/abc"),
        ("PATCH", "/v1/tokens"),
        ("GET", "/v1/tokens/abc/rotate"),
        ("GET", "/v1/tokens?token_id=abc"),
    ],
)
async def test_odd_token_paths_and_methods_are_json_4xx(
    client: Client, redis: RedisClient, method: str, path: str
) -> None:
    before = await snapshot(redis)
    r = await client.request(method, path, headers=admin(), allow_redirects=False)
    if r.status == 200:  # the listing, its query ignored
        assert path.startswith("/v1/tokens?")
    else:
        assert 400 <= r.status < 500 or r.status in (301, 308), (r.status, await r.text())
    assert await snapshot(redis) == before


async def test_a_token_created_just_after_redis_lost_the_tokens_is_taken_at_once(
    client: Client, redis: RedisClient, clock: FakeClock
) -> None:
    """Redis loses the tokens (FLUSHALL, a restart without its data) and a token is created
    before this process polled: the version starts again from 1, the number this process
    already holds, so it must not take the fresh hash for the one it has loaded (else the
    token just created, answered 201, is refused for good, and the lost ones still taken)."""
    old = await create(client, ["read"])
    cache = client.app[TOKEN_CACHE]
    cache.poll_s = 3600.0  # the follower's next pause is long: only the create's own refresh
    await asyncio.sleep(0.5)
    await redis.flushall()
    clock.advance(1)
    fresh = await create(client, ["read"])
    assert await works(client, fresh["token"])
    assert not await works(client, old["token"])


@pytest.mark.parametrize(
    "record",
    [
        b"{not json",
        b"{}",
        b'{"id": "x"}',
        b'{"id": "x", "name": "n", "scopes": 5, "hash": 1}',
        b"7",
    ],
)
async def test_one_unreadable_token_record_does_not_freeze_revocations_or_fail_every_change(
    client: Client, redis: RedisClient, record: bytes
) -> None:
    """A record this process cannot read (written by another version, or by hand): its token
    is refused, and the others are followed as before. (It froze every process's copy: a
    revoke answered 500 yet was in Redis, and the revoked token stayed valid everywhere.)"""
    good = await create(client, ["read"])
    doomed = await create(client, ["read"])
    await redis.hset(TOKENS, "zzzzzzzzzzzzzzzz", record)
    await redis.hincrby(TOKENS, "~v", 1)
    assert await works(client, good["token"])
    fresh = await create(client, ["read"])
    assert await works(client, fresh["token"])
    r = await client.delete(f"/v1/tokens/{doomed['token_id']}", headers=admin())
    assert r.status == 200, await r.text()
    assert not await works(client, doomed["token"])
    r = await client.get("/v1/tokens", headers=admin())
    assert r.status == 200
    listed = {t["token_id"] for t in (await r.json())["tokens"]}
    assert listed == {good["token_id"], doomed["token_id"], fresh["token_id"]}
    assert not await works(client, "cst_zzzzzzzzzzzzzzzz_x")


@pytest.mark.parametrize("value", [b"garbage", b"1:x", b"x:1", b"", b"\xff:1", b"12:34:56"])
async def test_an_unreadable_heartbeat_or_last_use_note_fails_no_token_change(
    client: Client, redis: RedisClient, value: bytes
) -> None:
    """The processes' heartbeats and last-use notes (another version's, or by hand): no
    change answers 500 after it was made (a rotation's new secret lost with it)."""
    made = await create(client, ["read"])
    await redis.hset(KeySpace().token_workers(), "old-process", value)
    await redis.hset(KeySpace().token_use(), made["token_id"], value)
    fresh = await create(client, ["read"])
    r = await client.post(f"/v1/tokens/{made['token_id']}/rotate", headers=admin())
    assert r.status == 200, await r.text()
    assert await works(client, (await r.json())["token"])
    for path in ("/v1/tokens", f"/v1/tokens/{made['token_id']}"):
        assert (await client.get(path, headers=admin())).status == 200
    r = await client.delete(f"/v1/tokens/{fresh['token_id']}", headers=admin())
    assert r.status == 200, await r.text()
    assert not await works(client, fresh["token"])


def stop_redis(server: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


async def resume_redis(server: RedisServer, redis_client: RedisClient) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)
    for _ in range(100):
        with contextlib.suppress(Exception):
            if await redis_client.ping():
                break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # whatever was queued has run by now


@pytest.mark.slow
async def test_with_redis_paused_a_cached_token_authorizes_and_changes_answer_503_unapplied(
    paused_client: tuple[Client, RedisServer, RedisClient],
) -> None:
    c, server, redis_client = paused_client
    service_token = await create(c, ["service"])
    read = await create(c, ["read"])
    victim = await create(c, ["read"])
    rotated = await create(c, ["read"])
    assert (await c.put("/v1/accounts/acme", json={}, headers=admin())).status == 201
    before = await snapshot(redis_client)
    stop_redis(server)
    try:
        check = {"account": "acme", "cost": 1, "idempotency_key": "k"}
        r = await c.post("/v1/check", json=check, headers=bearer(service_token["token"]))
        await refused(r, 503)  # authorized (not 401), then the store is away
        r = await c.get("/v1/accounts/acme/balance", headers=bearer(read["token"]))
        await refused(r, 503)
        r = await c.get("/v1/accounts/acme/balance", headers=bearer("cst_" + "a" * 16 + "_x"))
        await refused(r, 401)
        r = await c.delete(f"/v1/tokens/{victim['token_id']}", headers=admin())
        await refused(r, 503)
        r = await c.post(
            f"/v1/tokens/{rotated['token_id']}/rotate",
            json={"grace_seconds": 0},
            headers=admin(),
        )
        await refused(r, 503)
        r = await c.post("/v1/tokens", json={"name": "x", "scopes": ["admin"]}, headers=admin())
        await refused(r, 503)
        await asyncio.sleep(1.2)  # past the deadline of everything sent
    finally:
        await resume_redis(server, redis_client)
    assert await snapshot(redis_client) == before
    for t in (victim, rotated, read):
        assert await works(c, t["token"]), t["name"]
    r = await c.delete(f"/v1/tokens/{victim['token_id']}", headers=admin())
    assert r.status == 200
    assert not await works(c, victim["token"])


@pytest.mark.slow
async def test_an_app_started_while_redis_is_paused_takes_bootstrap_only_then_named_tokens(
    paused: tuple[RedisServer, RedisClient], tmp_path: Path, sqlite_template: Path, clock: FakeClock
) -> None:
    """docs/tokens.md: a process that starts while Redis is away knows only the bootstrap
    tokens until Redis answers; a named token is a 503 (JSON: its record cannot be confirmed)
    meanwhile, never a 500."""
    server, redis_client = paused
    ledger = Ledger(redis_client, KeySpace(), clock=clock)
    try:
        _, named = await Tokens(ledger).create("early", ["read"])
    finally:
        ledger.close()
    settings = paused_settings(server, tmp_path, sqlite_template)
    stop_redis(server)
    try:
        app = create_app(settings, clock=clock)
        async with TestClient(TestServer(app)) as c:
            r = await c.get("/v1/plans", headers=bearer(named))
            await refused(r, 503, "store_unavailable")
            r = await c.get("/v1/plans", headers=admin())
            await refused(r, 503)  # authorized; the store is away
            await resume_redis(server, redis_client)

            async def taken() -> bool:
                return await works(c, named)

            await wait_until(taken)
    finally:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGCONT)


async def test_token_changes_survive_redis_losing_its_scripts(
    client: Client, redis: RedisClient
) -> None:
    made = await create(client, ["read"])
    await redis.script_flush()
    r = await client.post(f"/v1/tokens/{made['token_id']}/rotate", headers=admin())
    assert r.status == 200, await r.text()
    await redis.script_flush()
    fresh = await create(client, ["read"])
    await redis.script_flush()
    r = await client.delete(f"/v1/tokens/{made['token_id']}", headers=admin())
    assert r.status == 200, await r.text()
    assert not await works(client, made["token"])
    assert await works(client, fresh["token"])


# --- the applied protocol across processes -----------------------------------------------------


async def test_a_revoke_waits_for_a_live_process_whose_clock_is_behind(
    redis: RedisClient, clock: FakeClock
) -> None:
    """Two serving processes on one Redis (two hosts), the second's clock 10 s behind. The
    second has reported in just now but has not applied the revoke: the revoke must not be
    answered as applied everywhere (reports are stamped on Redis's clock, not the hosts')."""
    here = Ledger(redis, KeySpace(), clock=clock)
    behind_clock = FakeClock(clock.now - 10_000)
    there = Ledger(redis, KeySpace(), clock=behind_clock)
    try:
        tokens = Tokens(here)
        record, _ = await tokens.create("app", ["read"])
        mine = TokenCache(tokens, clock, worker="here")
        theirs = TokenCache(Tokens(there), behind_clock, worker="there")
        await mine.refresh()
        await theirs.refresh()  # alive, on the version before the revoke
        await tokens.revoke(record.id)
        assert not await mine.applied(await tokens.version(), timeout_s=0.5)
    finally:
        here.close()
        there.close()


async def test_a_revoke_is_not_taken_by_a_process_cut_off_from_redis(
    redis: RedisClient, clock: FakeClock
) -> None:
    """A process that has not reached Redis for 10 s: a revoke no longer waits for it (its
    last report is that old), and it no longer vouches for stored tokens (503), so the revoked
    token works nowhere once the revoke is answered."""
    ledger = Ledger(redis, KeySpace(), clock=clock)
    try:
        tokens = Tokens(ledger)
        record, token = await tokens.create("app", ["read"])
        here = TokenCache(tokens, clock, worker="here")
        cut_off = TokenCache(tokens, clock, worker="cut-off")
        await here.refresh()
        await cut_off.refresh()
        # 10 s without reaching Redis: its report and its own memory of it are that old
        cut_off._heard -= 10_000
        workers = KeySpace().token_workers()
        raw: Any = await redis.hget(workers, "cut-off")
        report = raw.decode()
        version, _, at = report.partition(":")
        await redis.hset(workers, "cut-off", f"{version}:{int(at) - 10_000}")
        await tokens.revoke(record.id)
        assert await here.applied(await tokens.version(), timeout_s=0.5)  # answered: revoked
        with pytest.raises(StoreUnavailable):
            cut_off.verify(token.encode())
    finally:
        ledger.close()


async def test_a_process_starting_while_a_token_is_revoked_is_waited_for(
    redis: RedisClient, clock: FakeClock
) -> None:
    """A process that loaded the tokens but has not reported yet (starting up) when a revoke
    is made: the revoke is not answered until it applied it."""
    ledger = Ledger(redis, KeySpace(), clock=clock)
    try:
        tokens = Tokens(ledger)
        record, token = await tokens.create("app", ["read"])
        here = TokenCache(tokens, clock, worker="here")
        await here.refresh()
        starting_tokens = Tokens(ledger)
        starting = TokenCache(starting_tokens, clock, worker="starting")
        loaded, report = asyncio.Event(), asyncio.Event()
        real_report = starting_tokens.report_applied

        async def slow_report(worker: str, version: int) -> None:
            if version >= 0:  # its records are loaded: hold its report back
                loaded.set()
                await report.wait()
            await real_report(worker, version)

        starting_tokens.report_applied = slow_report  # type: ignore[method-assign]
        start = asyncio.create_task(starting.refresh())
        await loaded.wait()
        await tokens.revoke(record.id)
        version = await tokens.version()
        assert not await here.applied(version, timeout_s=0.5)
        report.set()
        await start
        await starting.refresh()  # its next poll
        assert await here.applied(version, timeout_s=0.5)
        assert starting.verify(token.encode()) is None
    finally:
        ledger.close()
