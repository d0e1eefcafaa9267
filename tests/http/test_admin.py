"""The admin read API (sidecar/http/admin.py) as a console sees it: accounts, transactions
(JSON and CSV), usage over time and holds; pagination, validation of every query parameter
(422 naming it), auth, and one account's data never showing up under another."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.http.state import BILLING, LEDGER
from sidecar.persistence.writer import OutboxWriter
from tests.conftest import START_MS, FakeClock, admin, service
from tests.persistence.test_writer import drain

Client = TestClient[web.Request, web.Application]
HOUR = 3_600_000


async def to_sql(client: Client) -> None:
    """Writes everything in the outbox to SQL (the app's own writer is off in these tests)."""
    ledger = client.app[LEDGER]
    await drain(OutboxWriter(ledger.redis, client.app[BILLING].sql.engine, ledger.keys))


async def get(client: Client, path: str, status: int = 200, **headers: str) -> Any:
    r = await client.get(path, headers=admin() | headers)
    assert r.status == status, await r.text()
    return await r.json()


async def account(client: Client, name: str, credits: int = 0) -> None:
    r = await client.put(f"/v1/accounts/{name}", json={}, headers=admin())
    assert r.status == 201
    if credits:
        r = await client.post(
            f"/v1/accounts/{name}/grants",
            json={
                "grant_id": f"g-{name}",
                "credits": credits,
                "metadata": {"order": 7},
                "reason": "test",
            },
            headers=admin(),
        )
        assert r.status == 201


async def use(client: Client, name: str, cost: int, key: str, description: str = "") -> str:
    body = {"account": name, "cost": cost, "idempotency_key": key, "description": description}
    r = await client.post("/v1/check", json=body, headers=service())
    assert r.status == 200, await r.text()
    txid: str = (await r.json())["transaction_id"]
    return txid


# -- accounts --------------------------------------------------------------------------------


async def test_accounts_lists_sql_accounts_in_id_order_page_by_page(client: Client) -> None:
    for name in ("b-2", "a-1", "a_3", "A-0", "c:1"):
        await account(client, name, credits=10)
    await use(client, "a-1", 4, "r1")
    assert await get(client, "/v1/admin/accounts") == {"accounts": [], "next": None}  # not in SQL
    await to_sql(client)

    everything = await get(client, "/v1/admin/accounts")
    ids = [a["account"] for a in everything["accounts"]]
    assert sorted(ids) == ["A-0", "a-1", "a_3", "b-2", "c:1"] and everything["next"] is None
    a1 = next(a for a in everything["accounts"] if a["account"] == "a-1")
    assert a1["balance"] == 6 and a1["debt"] == 0 and a1["seq"] == 2
    assert a1["created_at"].endswith("Z")

    seen, after = [], ""
    while True:
        page = await get(client, f"/v1/admin/accounts?limit=2&after={after}")
        assert len(page["accounts"]) <= 2
        seen += [a["account"] for a in page["accounts"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == ids

    # The prefix is exact and case-sensitive ("_" is a character, not a wildcard).
    page = await get(client, "/v1/admin/accounts?prefix=a")
    assert sorted(a["account"] for a in page["accounts"]) == ["a-1", "a_3"]
    page = await get(client, "/v1/admin/accounts?prefix=a_")
    assert [a["account"] for a in page["accounts"]] == ["a_3"]


# -- transactions ----------------------------------------------------------------------------


async def test_transactions_newest_first_with_every_field_and_pages(
    client: Client, clock: FakeClock
) -> None:
    await account(client, "acme", credits=100)
    txids = []
    for i in range(5):
        clock.advance(1000)
        txids.append(await use(client, "acme", i + 1, f"r{i}", description=f"call {i}"))
    await to_sql(client)

    body = await get(client, "/v1/accounts/acme/transactions")
    assert body["account"] == "acme" and body["next"] is None
    rows = body["transactions"]
    assert [t["seq"] for t in rows] == [6, 5, 4, 3, 2, 1]
    assert [t["id"] for t in rows[:5]] == txids[::-1]
    newest = rows[0]
    assert set(newest) == {
        "id",
        "seq",
        "type",
        "amount",
        "balance",
        "debt",
        "created_at",
        "description",
        "idempotency_key",
        "hold_id",
        "source_transaction_id",
        "key_id",
        "route",
        "metadata",
    }
    assert newest["type"] == "usage" and newest["amount"] == -5 and newest["balance"] == 85
    assert newest["description"] == "call 4" and newest["idempotency_key"] == "r4"
    assert newest["created_at"] == "2027-01-15T08:00:05.000Z"
    grant = rows[-1]
    assert grant["type"] == "grant" and grant["amount"] == 100
    assert grant["metadata"] == {"order": 7}

    page1 = await get(client, "/v1/accounts/acme/transactions?limit=4")
    assert [t["seq"] for t in page1["transactions"]] == [6, 5, 4, 3] and page1["next"] == 3
    page2 = await get(client, "/v1/accounts/acme/transactions?limit=4&before=3")
    assert [t["seq"] for t in page2["transactions"]] == [2, 1] and page2["next"] is None
    exact = await get(client, "/v1/accounts/acme/transactions?limit=3&before=4")
    assert [t["seq"] for t in exact["transactions"]] == [3, 2, 1] and exact["next"] is None

    grants = await get(client, "/v1/accounts/acme/transactions?type=grant")
    assert [t["type"] for t in grants["transactions"]] == ["grant"]


async def test_transactions_as_csv_by_format_or_accept_header(client: Client) -> None:
    await account(client, "acme", credits=100)
    await use(client, "acme", 3, "r1", description='=HYPERLINK("x"), "quoted"')
    await use(client, "acme", 1, "-2-3")  # a client's request id is the idempotency key
    await to_sql(client)

    for path, headers in (
        ("/v1/accounts/acme/transactions?format=csv&limit=1", {}),
        ("/v1/accounts/acme/transactions?limit=1", {"Accept": "text/csv"}),
    ):
        r = await client.get(path, headers=admin() | headers)
        assert r.status == 200 and r.content_type == "text/csv"
        assert r.headers["X-Next-Before"] == "3"
        table = list(csv.reader(io.StringIO(await r.text())))
        assert table[0][:4] == ["id", "seq", "type", "amount"] and table[0][-1] == "metadata"
        row = dict(zip(table[0], table[1], strict=True))
        assert row["seq"] == "3" and row["amount"] == "-1" and row["hold_id"] == ""
        # No cell can become a spreadsheet formula, ids a client chose included.
        assert row["idempotency_key"] == "'-2-3"
    r = await client.get("/v1/accounts/acme/transactions?format=csv&limit=2", headers=admin())
    table = list(csv.reader(io.StringIO(await r.text())))
    row = dict(zip(table[0], table[2], strict=True))
    assert row["seq"] == "2" and row["amount"] == "-3"
    # Free text cannot become a spreadsheet formula; quotes survive the round trip.
    assert row["description"] == '\'=HYPERLINK("x"), "quoted"'

    r = await client.get("/v1/accounts/acme/transactions?format=csv", headers=admin())
    table = list(csv.reader(io.StringIO(await r.text())))
    grant = dict(zip(table[0], table[-1], strict=True))
    assert grant["type"] == "grant" and grant["metadata"] == '{"order":7}'
    # format=json wins over the Accept header.
    r = await client.get(
        "/v1/accounts/acme/transactions?format=json", headers=admin() | {"Accept": "text/csv"}
    )
    assert r.content_type == "application/json"


async def test_one_accounts_transactions_never_show_under_another(client: Client) -> None:
    await account(client, "acme", credits=50)
    await account(client, "acme2", credits=70)
    mine = {await use(client, "acme", 1, f"r{i}") for i in range(3)}
    theirs = {await use(client, "acme2", 2, f"r{i}") for i in range(3)}  # same keys
    await to_sql(client)

    acme = (await get(client, "/v1/accounts/acme/transactions"))["transactions"]
    acme2 = (await get(client, "/v1/accounts/acme2/transactions"))["transactions"]
    assert mine <= {t["id"] for t in acme} and not theirs & {t["id"] for t in acme}
    assert theirs <= {t["id"] for t in acme2} and not mine & {t["id"] for t in acme2}
    assert [t["balance"] for t in acme] == [47, 48, 49, 50]
    # a cursor from another account's page selects nothing of theirs
    page = await get(client, "/v1/accounts/acme/transactions?before=3&type=usage")
    assert {t["id"] for t in page["transactions"]} <= mine
    usage = await get(client, f"/v1/accounts/acme/usage?since={START_MS - HOUR}")
    assert sum(p["credits"] for p in usage["points"]) == 3
    assert (await get(client, "/v1/admin/accounts?prefix=acme2"))["accounts"][0]["balance"] == 64


async def test_an_account_not_in_sql_is_404(client: Client) -> None:
    await account(client, "acme", credits=5)  # in Redis, not yet written to SQL
    for path in ("/v1/accounts/acme/transactions", "/v1/accounts/acme/usage"):
        body = await get(client, path, 404)
        assert body["error"]["code"] == "unknown_account"
    await to_sql(client)
    assert len((await get(client, "/v1/accounts/acme/transactions"))["transactions"]) == 1
    body = await get(client, "/v1/accounts/nobody/transactions", 404)
    assert body["error"]["code"] == "unknown_account"


# -- usage -----------------------------------------------------------------------------------


async def test_usage_sums_credits_and_counts_checks_per_hour_and_day(
    client: Client, clock: FakeClock
) -> None:
    await account(client, "acme", credits=1000)  # START_MS is 08:00 UTC, on the hour
    await use(client, "acme", 5, "a")
    clock.advance(HOUR // 2)
    await use(client, "acme", 7, "b")
    clock.advance(2 * HOUR)  # 10:30
    await use(client, "acme", 11, "c")
    r = await client.post(
        "/v1/holds", json={"account": "acme", "hold_id": "h", "amount": 3}, headers=service()
    )
    assert r.status == 201  # a hold is not usage
    await to_sql(client)

    body = await get(
        client,
        "/v1/accounts/acme/usage?interval=hour"
        "&since=2027-01-15T08:00:00Z&until=2027-01-15T11:00:00Z",
    )
    assert body == {
        "account": "acme",
        "interval": "hour",
        "points": [
            {"start": "2027-01-15T08:00:00.000Z", "credits": 12, "checks": 2},
            {"start": "2027-01-15T09:00:00.000Z", "credits": 0, "checks": 0},
            {"start": "2027-01-15T10:00:00.000Z", "credits": 11, "checks": 1},
        ],
    }
    # since is rounded down to the interval's start; "+" arrives as a space if not encoded
    body = await get(
        client,
        "/v1/accounts/acme/usage?interval=day&since=2027-01-15T12:00:00+02:00"
        "&until=2027-01-16T00:00:00Z",
    )
    assert body["points"] == [{"start": "2027-01-15T00:00:00.000Z", "credits": 23, "checks": 3}]
    default = await get(client, "/v1/accounts/acme/usage")  # hourly, 7 days to this hour's end
    assert default["interval"] == "hour" and len(default["points"]) == 168
    assert default["points"][-1] == {
        "start": "2027-01-15T10:00:00.000Z",
        "credits": 11,
        "checks": 1,
    }
    assert sum(p["checks"] for p in default["points"]) == 3


async def test_usage_by_key_and_by_route_splits_each_point(
    client: Client, clock: FakeClock
) -> None:
    await account(client, "acme", credits=1000)
    await account(client, "beta", credits=1000)
    keys = []
    for name in ("one", "two"):
        r = await client.post("/v1/accounts/acme/keys", json={"name": name}, headers=admin())
        keys.append((await r.json())["key_id"])
    r = await client.post("/v1/accounts/beta/keys", json={"name": "b"}, headers=admin())
    beta_key = (await r.json())["key_id"]
    ledger = client.app[LEDGER]
    await ledger.deduct("acme", 5, "a", key_id=keys[0], route="search")
    await ledger.deduct("acme", 7, "b", key_id=keys[1], route="search")
    await ledger.deduct("acme", 2, "c", key_id=keys[0], route="embed")
    await use(client, "acme", 3, "d")  # no key, no route
    await ledger.deduct("beta", 100, "a", key_id=beta_key, route="search")  # never acme's
    clock.advance(HOUR)
    await ledger.deduct("acme", 1, "e", key_id=keys[1], route="embed")
    await to_sql(client)

    window = "&since=2027-01-15T08:00:00Z&until=2027-01-15T10:00:00Z"
    body = await get(client, f"/v1/accounts/acme/usage?by=key{window}")
    assert body["by"] == "key"
    first, second = body["points"]
    assert (first["credits"], first["checks"]) == (17, 4)
    assert first["groups"] == [
        {"key": keys[0], "credits": 7, "checks": 2},
        {"key": keys[1], "credits": 7, "checks": 1},
        {"key": None, "credits": 3, "checks": 1},
    ]  # most credits first, then most checks
    assert sum(g["credits"] for g in first["groups"]) == first["credits"]
    assert second["groups"] == [{"key": keys[1], "credits": 1, "checks": 1}]

    body = await get(client, f"/v1/accounts/acme/usage?by=route&interval=day{window}")
    (day,) = body["points"]
    assert day["groups"] == [
        {"key": "search", "credits": 12, "checks": 2},
        {"key": "embed", "credits": 3, "checks": 2},
        {"key": None, "credits": 3, "checks": 1},
    ]
    # empty points have an empty split; without by, no groups at all (as before)
    body = await get(client, "/v1/accounts/acme/usage?by=route")
    assert all(p["groups"] == [] for p in body["points"] if not p["checks"])
    body = await get(client, "/v1/accounts/acme/usage")
    assert "by" not in body and all("groups" not in p for p in body["points"])


# -- holds -----------------------------------------------------------------------------------


async def test_holds_lists_active_and_closed_holds_from_redis(
    client: Client, clock: FakeClock
) -> None:
    await account(client, "acme", credits=100)
    await account(client, "beta", credits=100)

    async def hold(name: str, hold_id: str, amount: int, ttl_ms: int = 60_000) -> None:
        body = {"account": name, "hold_id": hold_id, "amount": amount, "ttl_ms": ttl_ms}
        r = await client.post("/v1/holds", json=body, headers=service())
        assert r.status == 201
        clock.advance(10)

    await hold("acme", "h-settled", 30)
    await hold("acme", "h-active", 20)
    await hold("acme", "h-lapsing", 5, ttl_ms=100)
    await hold("beta", "h-beta", 1)
    r = await client.post(
        "/v1/holds/h-settled/settle", json={"account": "acme", "amount": 12}, headers=service()
    )
    assert r.status == 200
    clock.advance(1000)  # h-lapsing's TTL passed: listing releases it, as a balance would

    body = await get(client, "/v1/accounts/acme/holds")  # Redis: no SQL needed
    assert body["account"] == "acme"
    by_id = {h["hold_id"]: h for h in body["holds"]}
    assert [h["hold_id"] for h in body["holds"]] == ["h-lapsing", "h-active", "h-settled"]
    assert by_id["h-active"]["state"] == "active" and by_id["h-active"]["amount"] == 20
    assert by_id["h-active"]["expires_at"] == "2027-01-15T08:01:00.010Z"
    assert by_id["h-active"]["created_at"] == "2027-01-15T08:00:00.010Z"
    assert by_id["h-settled"]["state"] == "settled" and by_id["h-settled"]["charged"] == 12
    assert by_id["h-settled"]["close_transaction_id"]
    assert by_id["h-lapsing"]["state"] == "expired"
    assert by_id["h-active"]["buckets"] == [{"bucket": "g-acme", "amount": 20}]
    beta = await get(client, "/v1/accounts/beta/holds")
    assert [h["hold_id"] for h in beta["holds"]] == ["h-beta"]
    assert (await get(client, "/v1/accounts/nobody/holds", 404))["error"]["code"] == (
        "unknown_account"
    )


# -- validation and auth ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/admin/accounts?limit=0", "limit"),
        ("/v1/admin/accounts?limit=1001", "limit"),
        ("/v1/admin/accounts?limit=ten", "limit"),
        ("/v1/admin/accounts?limit=1.5", "limit"),
        ("/v1/admin/accounts?after=a%20b", "after"),
        ("/v1/admin/accounts?prefix=" + "x" * 129, "prefix"),
        ("/v1/admin/accounts?page=2", "page"),
        ("/v1/accounts/acme/transactions?limit=-1", "limit"),
        ("/v1/accounts/acme/transactions?before=0", "before"),
        ("/v1/accounts/acme/transactions?before=99999999999999999999", "before"),
        ("/v1/accounts/acme/transactions?type=payment", "type"),
        ("/v1/accounts/acme/transactions?format=xml", "format"),
        ("/v1/accounts/a@b/transactions", "account"),
        ("/v1/accounts/acme/usage?interval=week", "interval"),
        ("/v1/accounts/acme/usage?since=yesterday", "since"),
        ("/v1/accounts/acme/usage?since=%C2%B2", "since"),  # a Unicode digit: was a 500
        ("/v1/accounts/acme/usage?since=2027-01-15T08:00:00", "since"),  # no offset
        ("/v1/accounts/acme/usage?until=2027-13-01T00:00:00Z", "until"),
        ("/v1/accounts/acme/usage?since=2027-01-15T00:00:00Z&until=2027-01-14T00:00:00Z", "until"),
        ("/v1/accounts/acme/usage?interval=hour&since=2026-01-01T00:00:00Z", "since"),
        ("/v1/accounts/acme/usage?interval=day&since=2020-01-01T00:00:00Z", "since"),
        ("/v1/accounts/acme/usage?by=model", "by"),
        ("/v1/accounts/acme/holds?limit=5", "limit"),
    ],
)
async def test_bad_query_parameters_are_422_naming_the_parameter(
    client: Client, path: str, field: str
) -> None:
    await account(client, "acme", credits=1)
    await to_sql(client)
    body = await get(client, path, 422)
    assert body["error"]["code"] == "invalid_request" and body["error"]["field"] == field


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/admin/accounts?limit=1&limit=1000", "limit"),
        ("/v1/admin/accounts?prefix=a&prefix=b", "prefix"),
        ("/v1/accounts/acme/transactions?type=usage&type=grant", "type"),
        ("/v1/accounts/acme/usage?since=2027-01-15T00:00:00Z&since=0", "since"),
        ("/v1/admin/outbox/dead-letters?count=1&count=1000", "count"),
        ("/v1/admin/packages?active=true&active=false", "active"),
    ],
)
async def test_a_query_parameter_given_twice_is_422_naming_it_not_first_wins(
    client: Client, path: str, field: str
) -> None:
    await account(client, "acme", credits=1)
    await to_sql(client)
    body = await get(client, path, 422)
    assert body["error"]["code"] == "invalid_request" and body["error"]["field"] == field
    assert "more than once" in body["error"]["message"]


READ_ROUTES = [
    "/v1/admin/accounts",
    "/v1/accounts/acme/transactions",
    "/v1/accounts/acme/usage",
    "/v1/accounts/acme/holds",
]


@pytest.mark.parametrize("path", READ_ROUTES)
async def test_read_routes_need_the_admin_token(client: Client, path: str) -> None:
    r = await client.get(path)
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await client.get(path, headers=service())
    assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden"
