"""The audit trail (docs/audit.md) attacked: replays and refusals (exactly one entry per
change, none for a refusal), secrets in every place an entry has, reasons at and past their
limits (header and body, unicode, control characters), malformed kind=audit entries written
straight into the outbox, the chain edited column by column, rows swapped and renumbered, two
writers, Redis flushed under it, and GET /v1/audit's filters, paging and bad query values."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from sqlalchemy import text

from sidecar.http.state import BILLING, LEDGER
from sidecar.ledger.audit import chain_hash, verify
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.outbox import FIELD
from sidecar.persistence.audit_store import walk
from sidecar.redis.client import RedisClient
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.cli.conftest import cli
from tests.conftest import ADMIN, admin, service, snapshot
from tests.http.test_audit import audits, bearer, head, to_sql
from tests.persistence.test_writer import drain, make_writer

Client = TestClient[web.Request, web.Application]


async def setup_account(client: Client, account: str = "acme") -> None:
    assert (await client.put(f"/v1/accounts/{account}", json={}, headers=admin())).status == 201


async def token(client: Client, *scopes: str, prefix: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "t-" + "-".join(scopes), "scopes": list(scopes)}
    if prefix is not None:
        body["account_prefix"] = prefix
    r = await client.post("/v1/tokens", json=body, headers=admin())
    assert r.status == 201, await r.text()
    return dict(await r.json())


# -- exactly one entry per change ----------------------------------------------------------


async def test_a_replayed_grant_leaves_a_second_entry_marked_replayed(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client)
    grant = {"grant_id": "g", "credits": 5, "reason": "goodwill"}
    for _ in range(2):
        r = await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())
        assert r.status in (200, 201)
    entries = [e for e in await audits(redis) if e["action"] == "grant.create"]
    assert [e["replayed"] for e in entries] == [False, True]
    assert {e["target"] for e in entries} == {"g"}


async def test_twenty_identical_grants_at_once_leave_one_entry_not_replayed(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client)
    grant = {"grant_id": "g", "credits": 5, "reason": "goodwill"}
    rs = await asyncio.gather(
        *(client.post("/v1/accounts/acme/grants", json=grant, headers=admin()) for _ in range(20))
    )
    assert all(r.status < 300 for r in rs)
    entries = [e for e in await audits(redis) if e["action"] == "grant.create"]
    assert len(entries) == 20
    assert sum(not e["replayed"] for e in entries) == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/accounts/acme/grants", {"grant_id": "g", "credits": 9, "reason": "x"}, 409),
        ("POST", "/v1/accounts/acme/grants", {"grant_id": "g2", "credits": 0, "reason": "x"}, 422),
        (
            "POST",
            "/v1/accounts/nobody/grants",
            {"grant_id": "g3", "credits": 1, "reason": "x"},
            404,
        ),
        ("PATCH", "/v1/keys/k_nope", {"spend_limit": None}, 404),
        ("DELETE", "/v1/keys/k_nope", None, 404),
        ("DELETE", "/v1/plans/nope", None, 404),
        ("DELETE", "/v1/tokens/tnope", None, 404),
        ("POST", "/v1/tokens/tnope/rotate", None, 404),
        (
            "POST",
            "/v1/refunds",
            {"account": "acme", "refund_id": "r", "transaction_id": "nope", "reason": "x"},
            404,
        ),
    ],
)
async def test_a_refused_change_leaves_no_entry(
    client: Client,
    redis: RedisClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
) -> None:
    await setup_account(client)
    grant = {"grant_id": "g", "credits": 5, "reason": "goodwill"}
    assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status
    before = len(await audits(redis))
    r = await client.request(method, path, json=body, headers=admin())
    assert r.status == status, await r.text()
    assert len(await audits(redis)) == before


async def test_a_prefix_limited_token_refused_leaves_no_entry(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client, "beta")
    t = await token(client, "admin", prefix="acme")
    before = await snapshot(redis)
    r = await client.patch(
        "/v1/accounts/beta", json={"overdraft_limit": 1}, headers=bearer(t["token"])
    )
    assert r.status == 403
    assert await snapshot(redis) == before


# -- who, what, why ----------------------------------------------------------------------------


async def test_a_created_key_or_token_is_named_as_the_target(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client)
    r = await client.post("/v1/accounts/acme/keys", json={"name": "k"}, headers=admin())
    key = await r.json()
    t = await token(client, "read")
    by_action = {e["action"]: e for e in await audits(redis)}
    assert by_action["key.create"]["target"] == key["key_id"]
    assert by_action["token.create"]["target"] == t["token_id"]


async def test_a_key_changed_by_its_id_names_its_account(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client)
    r = await client.post("/v1/accounts/acme/keys", json={"name": "k"}, headers=admin())
    key_id = (await r.json())["key_id"]
    r = await client.patch(f"/v1/keys/{key_id}", json={"spend_limit": None}, headers=admin())
    assert r.status == 200, await r.text()
    assert (await client.delete(f"/v1/keys/{key_id}", headers=admin())).status == 200
    by_action = {e["action"]: e for e in await audits(redis)}
    assert by_action["key.patch"]["account"] == "acme"
    assert by_action["key.revoke"]["account"] == "acme"
    assert by_action["key.revoke"]["target"] == key_id


async def test_the_reason_header_is_kept_on_a_grant_that_needs_none(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client)
    grant = {"grant_id": "p", "credits": 5, "source": "purchase"}
    headers = admin() | {"X-Audit-Reason": "order 7"}
    assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=headers)).status
    assert (await audits(redis))[-1]["reason"] == "order 7"


@pytest.mark.parametrize(
    "reason",
    ["x" * 500, "goodwill: outage #123 — ünïcødé ✓ 🎉", "\u0645\u0631\u062d\u0628\u0627"],
)
async def test_a_reason_in_the_body_reaches_sql_as_given(
    client: Client, redis: RedisClient, reason: str
) -> None:
    await setup_account(client)
    grant = {"grant_id": "g", "credits": 5, "reason": reason}
    r = await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())
    assert r.status == 201, await r.text()
    await to_sql(client)
    rows = await walk(client.app[BILLING].sql.engine)
    assert rows[-1].body["reason"] == reason
    assert verify(rows, await head(redis)) == []


@pytest.mark.parametrize(
    "reason",
    [
        "x" * 501,
        "",
        "line\nbreak",
        "nul\u0000",
        "tab\t",
        "del\x7f",
        "c1\x85",
        "rtl\u202e",
        "ls\u2028",
        "nbsp\u00a0",
    ],
)
async def test_a_bad_reason_in_the_body_is_a_422_naming_it_as_the_header_would_be(
    client: Client, redis: RedisClient, reason: str
) -> None:
    await setup_account(client)
    before = await snapshot(redis)
    raw = orjson.dumps({"grant_id": "g", "credits": 5}).decode()[:-1]
    raw += (
        ',"reason":"'
        + "".join(
            c if c.isascii() and c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
            for c in reason
        )
        + '"}'
    )
    r = await client.post(
        "/v1/accounts/acme/grants", data=raw, headers=admin() | {"Content-Type": "application/json"}
    )
    assert r.status == 422, await r.text()
    assert (await r.json())["error"]["field"] == "reason"
    assert await snapshot(redis) == before


@pytest.mark.parametrize("reason", ["x" * 500, "ünïcødé ✓", "goodwill after outage #123"])
async def test_a_reason_header_reaches_the_entry_as_given(
    client: Client, redis: RedisClient, reason: str
) -> None:
    r = await client.put("/v1/accounts/acme", json={}, headers=admin() | {"X-Audit-Reason": reason})
    assert r.status == 201, await r.text()
    assert (await audits(redis))[-1]["reason"] == reason


@pytest.mark.parametrize("reason", ["x" * 501, "tab\there"])
async def test_a_bad_reason_header_is_refused_before_any_change(
    client: Client, redis: RedisClient, reason: str
) -> None:
    before = await snapshot(redis)
    r = await client.put("/v1/accounts/acme", json={}, headers=admin() | {"X-Audit-Reason": reason})
    assert r.status in (400, 422)
    assert await snapshot(redis) == before


# -- malformed kind=audit entries written straight into the outbox -------------------------


def good_entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "audit",
        "id": "au_x",
        "at": 1_700_000_000_000,
        "token_id": "bootstrap:admin",
        "token_name": "bootstrap:admin",
        "request_id": "req-1",
        "action": "account.put",
        "account": "acme",
        "target": None,
        "reason": None,
        "before": None,
        "after": {"account": "acme"},
        "replayed": False,
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not DROP}


DROP = object()


async def test_a_nul_inside_before_or_after_is_kept_escaped_and_verifies(
    client: Client, redis: RedisClient
) -> None:
    entry = good_entry(before={"n\u0000": "nul\u0000"}, after=["\u0000", {"x": None}])
    await redis.xadd(KeySpace().outbox(0), {FIELD: orjson.dumps(entry)})
    await to_sql(client)
    rows = await walk(client.app[BILLING].sql.engine)
    assert rows[-1].body["before"] == {"n\u0000": "nul\u0000"}
    assert verify(rows, await head(redis)) == []


async def dead_letters(redis: RedisClient) -> list[dict[str, str]]:
    raw: Any = await redis.xrange(KeySpace().dead_letters(0))
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in raw]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"token_id": DROP}, "without token_id"),
        ({"before": DROP}, "without before"),
        ({"at": "yesterday"}, "field at has the wrong type"),
        ({"at": True}, "field at has the wrong type"),
        ({"replayed": "no"}, "field replayed has the wrong type"),
        ({"account": 7}, "field account has the wrong type"),
        ({"action": ""}, "action or token_id out of range"),
        ({"action": "a" * 65}, "action or token_id out of range"),
        ({"token_id": "t" * 65}, "action or token_id out of range"),
        ({"at": 2**63}, "field at out of range"),
        ({"at": -1}, "field at out of range"),
        ({"request_id": "r" * 129}, "field request_id too long"),
        ({"token_name": "n" * 201}, "field token_name too long"),
        ({"account": "a" * 129}, "field account too long"),
        ({"target": "t" * 256}, "field target too long"),
        ({"reason": "nul\u0000"}, "field reason too long or with NUL"),
    ],
)
async def test_a_malformed_audit_entry_is_dead_lettered_naming_it_and_the_chain_goes_on(
    client: Client, redis: RedisClient, changes: dict[str, Any], error: str
) -> None:
    await setup_account(client, "a0")
    await redis.xadd(KeySpace().outbox(0), {FIELD: orjson.dumps(good_entry(**changes))})
    await setup_account(client, "a1")
    app = client.app
    writer = make_writer(app[LEDGER], app[BILLING].sql.engine, max_attempts=1)
    await asyncio.wait_for(drain(writer), 30)
    dead = await dead_letters(redis)
    assert len(dead) == 1, dead
    assert error in dead[0]["dl_error"], dead[0]["dl_error"]
    rows = await walk(app[BILLING].sql.engine)
    assert [r.body["account"] for r in rows] == ["a0", "a1"]
    assert verify(rows, await head(redis)) == []


# -- the chain -------------------------------------------------------------------------------


async def changes(client: Client, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        r = await client.put(
            f"/v1/accounts/a{i}", json={}, headers=admin() | {"X-Audit-Reason": f"r{i}"}
        )
        assert r.status == 201


async def tamper(client: Client, *statements: str) -> list[str]:
    engine = client.app[BILLING].sql.engine
    async with engine.begin() as conn:
        for s in statements:
            await conn.execute(text(s))
    return verify(await walk(engine), await head(client.app[LEDGER].redis))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET at_ms = at_ms + 1 WHERE seq = 2",
        "UPDATE audit_log SET token_id = 'someone' WHERE seq = 2",
        "UPDATE audit_log SET token_name = 'someone' WHERE seq = 2",
        "UPDATE audit_log SET request_id = 'other' WHERE seq = 2",
        "UPDATE audit_log SET action = 'plan.put' WHERE seq = 2",
        "UPDATE audit_log SET account = 'zz' WHERE seq = 2",
        "UPDATE audit_log SET account = NULL WHERE seq = 2",
        "UPDATE audit_log SET target = 'x' WHERE seq = 2",
        "UPDATE audit_log SET reason = NULL WHERE seq = 2",
        "UPDATE audit_log SET before = '{}' WHERE seq = 2",
        "UPDATE audit_log SET after = 'null' WHERE seq = 2",
        "UPDATE audit_log SET replayed = NOT replayed WHERE seq = 2",
        "UPDATE audit_log SET prev_hash = hash WHERE seq = 2",
        "UPDATE audit_log SET hash = prev_hash WHERE seq = 2",
    ],
)
async def test_verify_finds_any_column_edited(
    client: Client, redis: RedisClient, statement: str
) -> None:
    await changes(client, 3)
    await to_sql(client)
    problems = await tamper(client, statement)
    assert any(p.startswith("seq 2") or p.startswith("seq 3") for p in problems), problems


async def test_verify_finds_two_rows_swapped_and_the_trail_renumbered(
    client: Client, redis: RedisClient
) -> None:
    await changes(client, 5)
    await to_sql(client)
    swapped = await tamper(
        client,
        "UPDATE audit_log SET seq = -2 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = -2",
    )
    assert any(p.startswith("seq 2: prev_hash") for p in swapped), swapped


async def test_verify_finds_a_row_deleted_and_the_rest_renumbered(
    client: Client, redis: RedisClient
) -> None:
    await changes(client, 5)
    await to_sql(client)
    problems = await tamper(
        client,
        "DELETE FROM audit_log WHERE seq = 2",
        "UPDATE audit_log SET seq = seq - 1 WHERE seq > 2",
    )
    assert problems and problems[0].startswith("seq 2"), problems
    assert any("head" in p or "missing at the end" in p for p in problems), problems


async def test_a_flushed_redis_loses_the_head_but_the_chain_goes_on_and_verifies(
    client: Client, redis: RedisClient
) -> None:
    await changes(client, 3)
    await to_sql(client)
    await redis.flushall()
    assert await head(redis) is None
    rows = await walk(client.app[BILLING].sql.engine)
    assert verify(rows, None) == []
    await changes(client, 2, first=3)
    await to_sql(client)
    rows = await walk(client.app[BILLING].sql.engine)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert verify(rows, await head(redis)) == [] and (await head(redis) or (0,))[0] == 5


@pytest.mark.xfail(
    strict=True,
    reason="design: the chain is an unkeyed SHA-256 and its only anchor outside SQL is the "
    "Redis head; with that lost (FLUSHALL, a new Redis) someone who can write SQL deletes the "
    "newest entries unseen (an HMAC key or a head kept elsewhere would close this)",
)
async def test_newest_entries_deleted_after_the_head_is_lost_are_found(
    client: Client, redis: RedisClient
) -> None:
    await changes(client, 3)
    await to_sql(client)
    await redis.flushall()
    assert await tamper(client, "DELETE FROM audit_log WHERE seq = 3") != []


async def test_two_writers_at_once_keep_one_chain(client: Client, redis: RedisClient) -> None:
    app = client.app
    engine = app[BILLING].sql.engine
    for round_ in range(3):
        await changes(client, 10, first=10 * round_)
        writers = [make_writer(app[LEDGER], engine, batch_size=3) for _ in range(2)]
        # Both read the same group (as two processes do while a lease changes hands); a
        # conflict is retried on the next drain.
        for _ in range(5):
            results = await asyncio.gather(*(drain(w) for w in writers), return_exceptions=True)
            if not any(isinstance(x, Exception) for x in results):
                break
        await to_sql(client)
    rows = await walk(engine)
    assert sorted(r.body["account"] for r in rows) == sorted(f"a{i}" for i in range(30))
    assert [r.seq for r in rows] == list(range(1, 31))
    assert verify(rows, await head(redis)) == []


async def test_a_batch_refused_by_sql_is_written_one_by_one_in_order_chained(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client)
    grant = {"grant_id": "g", "credits": 5, "reason": "first"}
    assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status
    await to_sql(client)
    app = client.app
    engine = app[BILLING].sql.engine
    # A stray row holds acme's next transaction seq: the batch with that grant is refused.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO credit_transactions (id, account, seq, type, amount, balance_after,"
                " debt_after, description, created_ms, created_at, details) VALUES ('stray',"
                " 'acme', 2, 'grant', 0, 0, 0, '', 0, '2026-01-01 00:00:00', '{}')"
            )
        )
    await changes(client, 2)
    grant = {"grant_id": "g2", "credits": 5, "reason": "second"}
    assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status
    await changes(client, 2, first=2)
    await drain(make_writer(app[LEDGER], engine, max_attempts=1))
    assert len(await dead_letters(redis)) == 1  # the transaction, not its audit entry
    rows = await walk(engine)
    assert [r.body["reason"] for r in rows][2:] == ["r0", "r1", "second", "r2", "r3"]
    assert verify(rows, await head(redis)) == []


async def test_a_dead_lettered_audit_entry_retried_joins_the_chain_once(
    client: Client, redis: RedisClient
) -> None:
    await changes(client, 1)
    await redis.xadd(KeySpace().outbox(0), {FIELD: orjson.dumps(good_entry(action=""))})
    app = client.app
    await drain(make_writer(app[LEDGER], app[BILLING].sql.engine, max_attempts=1))
    assert len(await dead_letters(redis)) == 1
    r = await client.post("/v1/admin/outbox/dead-letters/retry", headers=admin())
    assert r.status == 200 and len((await r.json())["retried"]) == 1
    await to_sql(client)
    await to_sql(client)
    rows = await walk(app[BILLING].sql.engine)
    # still malformed: dead again, and the retry itself is in the trail
    assert [r.body["action"] for r in rows] == ["account.put", "dead_letters.retry"]
    assert verify(rows, await head(redis)) == []


# -- GET /v1/audit ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("before=0", "before"),
        ("before=-5", "before"),
        ("before=99999999999999999999999", "before"),
        ("since=yesterday", "since"),
        ("until=2026-01-01", "until"),
        ("account=a%20b", "account"),
        ("account=" + "a" * 129, "account"),
        ("token_id=BOOT", "token_id"),
        ("action=drop;table", "action"),
        ("limit=1&limit=2", "limit"),
        ("acount=acme", "acount"),
    ],
)
async def test_a_bad_audit_query_is_a_422_naming_the_parameter(
    client: Client, query: str, field: str
) -> None:
    r = await client.get(f"/v1/audit?{query}", headers=admin())
    assert r.status == 422, await r.text()
    assert (await r.json())["error"]["field"] == field


async def test_paging_walks_every_entry_once_and_ends(client: Client) -> None:
    await changes(client, 7)
    await to_sql(client)
    seen: list[int] = []
    url = "/v1/audit?limit=3"
    while True:
        page = await (await client.get(url, headers=admin())).json()
        seen += [e["seq"] for e in page["entries"]]
        if page["next"] is None:
            break
        url = f"/v1/audit?limit=3&before={page['next']}"
    assert seen == list(range(7, 0, -1))
    page = await (await client.get("/v1/audit?limit=7", headers=admin())).json()
    assert page["next"] is None  # the last page, exactly full, does not point past seq 1


async def test_time_filters_take_since_inclusive_and_until_exclusive(client: Client) -> None:
    await changes(client, 3)
    await to_sql(client)
    entries = (await (await client.get("/v1/audit", headers=admin())).json())["entries"]
    at = entries[0]["at"]
    r = await client.get("/v1/audit", params={"since": at}, headers=admin())
    assert len((await r.json())["entries"]) == 3
    r = await client.get("/v1/audit", params={"until": at}, headers=admin())
    assert (await r.json())["entries"] == []


async def test_only_an_admin_token_reads_the_trail(client: Client) -> None:
    await changes(client, 1)
    await to_sql(client)
    a = await token(client, "admin")
    assert (await client.get("/v1/audit", headers=bearer(a["token"]))).status == 200
    for scope in ("read", "service"):
        t = await token(client, scope)
        assert (await client.get("/v1/audit", headers=bearer(t["token"]))).status == 403


@pytest.mark.parametrize("query", ["", "?account=acme", "?account=beta"])
async def test_a_prefix_limited_token_gets_no_other_accounts_entries(
    client: Client, query: str
) -> None:
    await setup_account(client, "acme")
    await setup_account(client, "beta")
    await to_sql(client)
    t = await token(client, "read", prefix="acme")
    r = await client.get(f"/v1/audit{query}", headers=bearer(t["token"]))
    assert r.status == 403
    assert "beta" not in await r.text()


async def test_a_read_token_does_not_learn_the_token_inventory_from_the_trail(
    client: Client,
) -> None:
    await token(client, "admin", prefix="secret-tenant")
    await to_sql(client)
    t = await token(client, "read")
    assert (await client.get("/v1/tokens", headers=bearer(t["token"]))).status == 403
    r = await client.get("/v1/audit", headers=bearer(t["token"]))
    assert "secret-tenant" not in await r.text()


# -- secrets ---------------------------------------------------------------------------------


async def test_no_secret_reaches_any_field_of_any_entry_nor_the_logs(
    client: Client, redis: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    await setup_account(client)
    made: list[str] = []
    t = await token(client, "admin")
    made.append(t["token"])
    tid = t["token_id"]
    for _ in range(2):
        r = await client.post(f"/v1/tokens/{tid}/rotate", json={}, headers=admin())
        assert r.status == 200, await r.text()
        made.append((await r.json())["token"])
    # the token itself makes changes: its own secret in the Authorization header only
    ops = bearer(made[-1])
    r = await client.post("/v1/accounts/acme/keys", json={"name": "k"}, headers=ops)
    made.append((await r.json())["key"])
    hook = {"url": "https://example.com/hook"}
    for _ in range(2):  # the second PUT's before is the first's endpoint
        r = await client.put("/v1/admin/accounts/acme/notifications", json=hook, headers=ops)
        made.append((await r.json())["secret"])
    assert (await client.delete(f"/v1/tokens/{tid}", headers=admin())).status == 200
    await to_sql(client)
    trail = (await (await client.get("/v1/audit?limit=1000", headers=admin())).json())["entries"]
    raw = repr(await audits(redis)) + repr(trail) + caplog.text
    for secret in made:
        assert secret not in raw
        assert secret[-12:] not in raw  # not even a tail of one
    notif = [e for e in trail if e["action"] == "notifications.put"]
    assert notif[0]["before"] is not None and notif[0]["after"]["secret"] == "***"


# -- a change whose audit append fails (Redis paused under the app) ---------------------------


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="design: a change made in SQL only (package PUT) whose audit XADD fails is "
    "answered 503 but stays made; the retry's entry then shows before == after, so the trail "
    "never says what the package was before (the entry would have to be written before or "
    "with the change)",
)
async def test_a_sql_only_change_whose_audit_append_failed_is_audited_on_retry(
    paused_client: tuple[Client, RedisServer, RedisClient],
) -> None:
    client, server, redis_client = paused_client
    old = {"name": "Small", "credits": 10, "price": 5}
    assert (await client.put("/v1/admin/packages/p", json=old, headers=admin())).status == 201
    new = {"name": "Big", "credits": 1000, "price": 5}
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        r = await client.put("/v1/admin/packages/p", json=new, headers=admin())
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    for _ in range(100):
        with contextlib.suppress(Exception):
            if await redis_client.ping():
                break
        await asyncio.sleep(0.05)
    assert r.status == 503
    # the change was made all the same
    got = await (await client.get("/v1/admin/packages/p", headers=admin())).json()
    assert got["credits"] == 1000
    r = await client.put("/v1/admin/packages/p", json=new, headers=admin())
    assert r.status == 200
    e = [e for e in await audits(redis_client) if e["action"] == "package.put"][-1]
    assert e["before"]["credits"] == 10  # what it was before the change


async def test_a_replayed_refund_leaves_a_second_entry_marked_replayed(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client)
    grant = {"grant_id": "p", "credits": 5, "source": "purchase"}
    assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status
    check = {"account": "acme", "cost": 2, "idempotency_key": "k"}
    used = await (await client.post("/v1/check", json=check, headers=service())).json()
    refund = {
        "account": "acme",
        "refund_id": "r",
        "transaction_id": used["transaction_id"],
        "reason": "outage",
    }
    for _ in range(2):
        assert (await client.post("/v1/refunds", json=refund, headers=admin())).status < 300
    entries = [e for e in await audits(redis) if e["action"] == "refund.create"]
    assert [(e["target"], e["replayed"]) for e in entries] == [("r", False), ("r", True)]


async def test_unicode_and_escapes_in_before_and_after_round_trip_through_sql_and_verify(
    client: Client, redis: RedisClient
) -> None:
    name = 'ünïcødé \u2028 \U0001f389 "quoted" \\ back \x01\x1b[31m' + "x" * 150
    plan = {"name": name, "allowance": {"credits": 10, "interval": "month"}}
    assert (await client.put("/v1/plans/pro", json=plan, headers=admin())).status == 201
    plan["name"] = name[::-1]
    assert (await client.put("/v1/plans/pro", json=plan, headers=admin())).status == 200
    t = await token(client, "read")
    r = await client.post(f"/v1/tokens/{t['token_id']}/rotate", json={}, headers=admin())
    assert r.status == 200
    await to_sql(client)
    rows = await walk(client.app[BILLING].sql.engine)
    assert rows[1].body["before"]["name"] == name and rows[1].body["after"]["name"] == name[::-1]
    assert verify(rows, await head(redis)) == []


async def test_an_entry_edited_and_the_chain_recomputed_after_it_is_found_by_the_head(
    client: Client, redis: RedisClient
) -> None:
    await changes(client, 4)
    await to_sql(client)
    engine = client.app[BILLING].sql.engine
    rows = await walk(engine)
    prev = rows[1].prev_hash
    async with engine.begin() as conn:
        for row in rows[1:]:
            body = dict(row.body)
            if row.seq == 2:
                body["reason"] = "nothing to see"
            digest = chain_hash(prev, row.seq, body)
            await conn.execute(
                text(
                    "UPDATE audit_log SET reason = :reason, prev_hash = :prev, hash = :hash"
                    " WHERE seq = :seq"
                ),
                {"reason": body["reason"], "prev": prev, "hash": digest, "seq": row.seq},
            )
            prev = digest
    problems = verify(await walk(engine), await head(redis))
    assert problems == ["seq 4: does not match the head recorded in Redis"]


async def test_concurrent_identical_plan_puts_each_leave_an_entry(
    client: Client, redis: RedisClient
) -> None:
    plan = {"name": "Pro", "allowance": {"credits": 10, "interval": "month"}}
    rs = await asyncio.gather(
        *(client.put("/v1/plans/pro", json=plan, headers=admin()) for _ in range(10))
    )
    assert sorted(r.status for r in rs).count(201) >= 1
    entries = [e for e in await audits(redis) if e["action"] == "plan.put"]
    assert len(entries) == 10 and {e["target"] for e in entries} == {"pro"}
    await to_sql(client)
    assert verify(await walk(client.app[BILLING].sql.engine), await head(redis)) == []


# -- the CLI ---------------------------------------------------------------------------------


async def test_the_cli_verifies_the_trail_and_exits_1_naming_what_was_deleted(
    client: Client, settings: Settings
) -> None:
    await changes(client, 3)
    await to_sql(client)
    assert settings.redis_url is not None
    env = {
        "SIDECAR_REDIS_URL": settings.redis_url,
        "SIDECAR_DATA_DIR": str(settings.data_dir),
        "SIDECAR_ADMIN_TOKEN": ADMIN,
    }
    if "SIDECAR_DATABASE_URL" in os.environ:
        env["SIDECAR_DATABASE_URL"] = os.environ["SIDECAR_DATABASE_URL"]
    out = await asyncio.to_thread(cli, env, "audit", "verify")
    assert out.returncode == 0 and "intact: 3 entries" in out.stdout, out
    listed = await asyncio.to_thread(cli, env, "audit", "list", "--json", "--limit", "2")
    assert [e["seq"] for e in orjson.loads(listed.stdout)["entries"]] == [3, 2]
    await tamper(client, "DELETE FROM audit_log WHERE seq = 3")
    out = await asyncio.to_thread(cli, env, "audit", "verify", "--json")
    assert out.returncode == 1
    assert orjson.loads(out.stdout)["problems"] == ["seq 3..3: missing at the end (deleted?)"]


async def test_a_reason_header_given_twice_is_a_422_naming_it_and_changes_nothing(
    client: Client, redis: RedisClient
) -> None:
    before = await snapshot(redis)
    headers = CIMultiDict(admin())
    headers.add("X-Audit-Reason", "the real reason")
    headers.add("X-Audit-Reason", "another one")
    r = await client.put("/v1/accounts/acme", json={}, headers=headers)
    assert r.status == 422 and (await r.json())["error"]["field"] == "X-Audit-Reason"
    assert await snapshot(redis) == before


async def test_revoking_twice_leaves_a_second_entry_whose_before_shows_it_revoked(
    client: Client, redis: RedisClient
) -> None:
    t = await token(client, "read")
    for _ in range(2):
        r = await client.delete(f"/v1/tokens/{t['token_id']}", headers=admin())
        assert r.status == 200
    first, second = [e for e in await audits(redis) if e["action"] == "token.revoke"]
    assert first["before"]["revoked_at"] is None
    assert second["before"]["revoked_at"] is not None
    assert second["before"]["revoked_at"] == second["after"]["revoked_at"]


@pytest.mark.xfail(
    strict=True,
    reason="design: when a grant's audit append is lost (the documented window between the "
    "change and its XADD, or the XADD failing: the client gets a 503 for a grant that was "
    "made), the client's retry is recorded as replayed, 'nothing changed': the trail then "
    "holds no entry saying the grant was made",
)
async def test_a_grant_whose_entry_was_lost_is_recorded_as_made_on_retry(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client)
    grant = {"grant_id": "g", "credits": 5, "reason": "goodwill"}
    assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status
    # the entry lost between the change and its XADD
    raw: Any = await redis.xrange(KeySpace().outbox(0))
    (lost,) = [i for i, f in raw if orjson.loads(f[FIELD.encode()]).get("action") == "grant.create"]
    await redis.xdel(KeySpace().outbox(0), lost)
    r = await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())
    assert r.status == 200
    entries = [e for e in await audits(redis) if e["action"] == "grant.create"]
    assert [e["replayed"] for e in entries] == [False]


async def test_a_large_before_and_after_reach_sql_whole_and_verify(
    client: Client, redis: RedisClient
) -> None:
    await setup_account(client)
    for i in range(200):  # 200 buckets: the balance view (before and after) lists each
        grant = {"grant_id": f"g{i}", "credits": 1, "source": "purchase", "priority": i}
        assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status
    r = await client.patch("/v1/accounts/acme", json={"overdraft_limit": 3}, headers=admin())
    assert r.status == 200
    await to_sql(client)
    rows = await walk(client.app[BILLING].sql.engine)
    patch = rows[-1].body
    assert patch["action"] == "account.patch"
    assert len(orjson.dumps(patch["before"])) > 10_000
    assert patch["before"] != patch["after"]
    assert verify(rows, await head(redis)) == []
