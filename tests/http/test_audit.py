"""The audit trail (docs/audit.md): every admin change declares its audit action (the route
registry walked); each change leaves exactly one entry naming the token that made it, its
request id, before and after with secrets masked, and why; manual grants and refunds need a
reason; the writer chains the entries in SQL and `verify` finds an entry edited or deleted
there (the first, a middle one, the last); GET /v1/audit reads them back filtered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import text

from sidecar.http.api import API
from sidecar.http.auth import PORTAL_SESSION
from sidecar.http.state import BILLING, LEDGER
from sidecar.ledger.audit import verify
from sidecar.ledger.keyspace import KeySpace
from sidecar.persistence.audit_store import walk
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _text
from tests.conftest import admin, outbox_entries, service, snapshot
from tests.persistence.test_writer import drain, make_writer

Client = TestClient[web.Request, web.Application]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def audits(redis: RedisClient) -> list[dict[str, Any]]:
    return [e for e in await outbox_entries(redis) if e.get("kind") == "audit"]


async def to_sql(client: Client) -> None:
    app = client.app
    await drain(make_writer(app[LEDGER], app[BILLING].sql.engine))


async def head(redis: RedisClient) -> tuple[int, str] | None:
    raw: Any = await redis.get(KeySpace().audit_head())
    if raw is None:
        return None
    seq, _, digest = _text(raw).partition(":")
    return int(seq), digest


def test_every_admin_change_declares_its_audit_action_and_is_tried_here_or_with_stripe() -> None:
    missing = [
        f"{op.method} {op.path}"
        for op in API.operations
        if op.auth.scopes == ("admin",) and op.method != "GET" and op.audit is None
    ]
    assert missing == []
    declared = {op.audit.action for op in API.operations if op.audit is not None}
    # the Stripe ones in tests/billing/test_audit_billing.py (billing_event.retry: untried)
    stripe = {"billing_profile.put", "auto_topup.put", "auto_topup.delete", "billing_event.retry"}
    # a customer's, in a portal session: tests/http/test_portal.py
    portal = {op.audit.action for op in API.operations if op.audit and op.auth is PORTAL_SESSION}
    assert declared - stripe - portal == {c[0] for c in CHANGES}


def test_every_declared_action_is_in_the_docs() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    declared = {op.audit.action for op in API.operations if op.audit is not None}
    assert [a for a in sorted(declared) if f"`{a}`" not in docs] == []


# The admin changes that need no Stripe, each as one call: (method, path, body).
CHANGES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("account.put", "PUT", "/v1/accounts/acme", {"overdraft_limit": 5}),
    ("account.patch", "PATCH", "/v1/accounts/acme", {"overdraft_limit": 7}),
    (
        "grant.create",
        "POST",
        "/v1/accounts/acme/grants",
        {"grant_id": "g2", "credits": 5, "reason": "goodwill"},
    ),
    ("key.create", "POST", "/v1/accounts/acme/keys", {"name": "k"}),
    (
        "plan.put",
        "PUT",
        "/v1/plans/pro",
        {"name": "Pro", "allowance": {"credits": 10, "interval": "month"}},
    ),
    ("plan.delete", "DELETE", "/v1/plans/pro", None),
    ("token.create", "POST", "/v1/tokens", {"name": "app", "scopes": ["read"]}),
    ("key.patch", "PATCH", "/v1/keys/{key_id}", {"spend_limit": None}),
    ("key.revoke", "DELETE", "/v1/keys/{key_id}", None),
    ("token.rotate", "POST", "/v1/tokens/{token_id}/rotate", {"grace_seconds": 0}),
    ("token.revoke", "DELETE", "/v1/tokens/{token_id}", None),
    (
        "refund.create",
        "POST",
        "/v1/refunds",
        {"account": "acme", "refund_id": "r", "transaction_id": "{txid}", "reason": "sorry"},
    ),
    ("dead_letters.retry", "POST", "/v1/admin/outbox/dead-letters/retry", {}),
    ("package.put", "PUT", "/v1/admin/packages/starter", {"name": "S", "credits": 10, "price": 5}),
    (
        "notifications.put",
        "PUT",
        "/v1/admin/accounts/acme/notifications",
        {"url": "https://example.com/hook"},
    ),
    ("notifications.delete", "DELETE", "/v1/admin/accounts/acme/notifications", None),
    ("portal_session.create", "POST", "/v1/accounts/acme/portal-sessions", {}),
    ("portal_session.revoke", "DELETE", "/v1/accounts/acme/portal-sessions", None),
    ("portal_session.revoke_all", "DELETE", "/v1/portal-sessions", None),
]


@pytest.mark.parametrize(("action", "method", "path", "body"), CHANGES, ids=[c[0] for c in CHANGES])
async def test_a_change_leaves_exactly_one_entry_naming_its_token(
    client: Client,
    redis: RedisClient,
    action: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    assert (await client.put("/v1/accounts/acme", json={}, headers=admin())).status == 201
    grant = {"grant_id": "g", "credits": 100, "source": "purchase"}
    assert (await client.post("/v1/accounts/acme/grants", json=grant, headers=admin())).status
    if action == "plan.delete":
        plan = {"name": "Pro", "allowance": {"credits": 10, "interval": "month"}}
        assert (await client.put("/v1/plans/pro", json=plan, headers=admin())).status == 201
    if action == "notifications.delete":
        hook = {"url": "https://example.com/hook"}
        r = await client.put("/v1/admin/accounts/acme/notifications", json=hook, headers=admin())
        assert r.status == 200
    r = await client.post("/v1/accounts/acme/keys", json={"name": "k"}, headers=admin())
    key_id = (await r.json())["key_id"]
    r = await client.post("/v1/tokens", json={"name": "t", "scopes": ["read"]}, headers=admin())
    token_id = (await r.json())["token_id"]
    check = {"account": "acme", "cost": 2, "idempotency_key": "c"}
    txid = (await (await client.post("/v1/check", json=check, headers=service())).json())[
        "transaction_id"
    ]
    path = path.replace("{key_id}", key_id).replace("{token_id}", token_id)
    if body is not None and body.get("transaction_id") == "{txid}":
        body = body | {"transaction_id": txid}
    r = await client.post("/v1/tokens", json={"name": "ops", "scopes": ["admin"]}, headers=admin())
    ops = await r.json()
    before = len(await audits(redis))
    headers = bearer(ops["token"]) | {"X-Request-Id": "req-42"}
    r = await client.request(method, path, json=body, headers=headers)
    assert r.status < 300, await r.text()
    new = (await audits(redis))[before:]
    assert len(new) == 1
    e = new[0]
    assert e["action"] == action and e["token_id"] == ops["token_id"] and e["token_name"] == "ops"
    assert e["request_id"] == "req-42"
    made = await r.json() if r.status != 204 else {}
    if action in ("token.create", "key.create"):  # what a creation made is its target
        assert e["target"] == made.get("token_id", made.get("key_id"))


async def test_the_entry_says_before_after_and_why(client: Client, redis: RedisClient) -> None:
    plan = {"name": "Pro", "allowance": {"credits": 10, "interval": "month"}}
    assert (await client.put("/v1/plans/pro", json=plan, headers=admin())).status == 201
    changed = plan | {"name": "Pro 2"}
    r = await client.put(
        "/v1/plans/pro", json=changed, headers=admin() | {"X-Audit-Reason": "renamed"}
    )
    assert r.status == 200
    e = (await audits(redis))[-1]
    assert e["before"]["name"] == "Pro" and e["after"]["name"] == "Pro 2"
    assert e["reason"] == "renamed" and e["target"] == "pro"
    assert e["token_id"] == "bootstrap:admin"


async def test_secrets_never_reach_the_trail(client: Client, redis: RedisClient) -> None:
    assert (await client.put("/v1/accounts/acme", json={}, headers=admin())).status == 201
    r = await client.post("/v1/tokens", json={"name": "t", "scopes": ["read"]}, headers=admin())
    token = (await r.json())["token"]
    r = await client.post(f"/v1/tokens/{(await r.json())['token_id']}/rotate", headers=admin())
    rotated = (await r.json())["token"]
    r = await client.post("/v1/accounts/acme/keys", json={"name": "k"}, headers=admin())
    key = (await r.json())["key"]
    hook = {"url": "https://example.com/hook"}
    r = await client.put("/v1/admin/accounts/acme/notifications", json=hook, headers=admin())
    secret = (await r.json())["secret"]
    trail = repr(await audits(redis))
    for s in (token, rotated, key, secret):
        assert s not in trail
    assert trail.count("'***'") >= 4
    await to_sql(client)
    rows = await walk(client.app[BILLING].sql.engine)
    assert rows and not any(s in repr(rows) for s in (token, rotated, key, secret))


async def test_a_manual_grant_or_a_refund_without_a_reason_is_refused(
    client: Client, redis: RedisClient
) -> None:
    assert (await client.put("/v1/accounts/acme", json={}, headers=admin())).status == 201
    before = await snapshot(redis)
    r = await client.post(
        "/v1/accounts/acme/grants", json={"grant_id": "g", "credits": 5}, headers=admin()
    )
    assert r.status == 422 and (await r.json())["error"]["field"] == "reason"
    assert await snapshot(redis) == before
    purchase = {"grant_id": "p", "credits": 5, "source": "purchase"}
    assert (await client.post("/v1/accounts/acme/grants", json=purchase, headers=admin())).status
    check = {"account": "acme", "cost": 1, "idempotency_key": "k"}
    used = await (await client.post("/v1/check", json=check, headers=service())).json()
    refund = {"account": "acme", "refund_id": "r", "transaction_id": used["transaction_id"]}
    before = await snapshot(redis)
    r = await client.post("/v1/refunds", json=refund, headers=admin())
    assert r.status == 422 and (await r.json())["error"]["field"] == "reason"
    assert await snapshot(redis) == before
    r = await client.post("/v1/refunds", json=refund | {"reason": "outage #12"}, headers=admin())
    assert r.status == 201
    assert (await audits(redis))[-1]["reason"] == "outage #12"


async def test_a_bad_reason_header_is_a_422_naming_it(client: Client, redis: RedisClient) -> None:
    before = await snapshot(redis)
    r = await client.put(
        "/v1/accounts/acme", json={}, headers=admin() | {"X-Audit-Reason": "x" * 501}
    )
    assert r.status == 422 and (await r.json())["error"]["field"] == "X-Audit-Reason"
    assert await snapshot(redis) == before


async def changes(client: Client, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        r = await client.put(f"/v1/accounts/a{i}", json={}, headers=admin())
        assert r.status == 201


async def test_the_writer_chains_the_trail_and_verify_finds_it_intact(
    client: Client, redis: RedisClient
) -> None:
    await changes(client, 5)
    await to_sql(client)
    await changes(client, 3, first=5)
    await to_sql(client)
    await to_sql(client)  # nothing new: nothing appended twice
    engine = client.app[BILLING].sql.engine
    rows = await walk(engine)
    assert [r.seq for r in rows] == list(range(1, 9))
    assert verify(rows, await head(redis)) == []


@pytest.mark.parametrize(
    ("statement", "found"),
    [
        ("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 3", "seq 3: hash"),
        ("UPDATE audit_log SET after = '{}' WHERE seq = 1", "seq 1: hash"),
        ("DELETE FROM audit_log WHERE seq = 2", "seq 2..2: missing"),
        ("DELETE FROM audit_log WHERE seq = 1", "seq 1..1: missing"),
        ("DELETE FROM audit_log WHERE seq >= 4", "seq 4..5: missing at the end"),
    ],
)
async def test_verify_finds_an_entry_edited_or_deleted_in_sql(
    client: Client, redis: RedisClient, statement: str, found: str
) -> None:
    await changes(client, 5)
    await to_sql(client)
    engine = client.app[BILLING].sql.engine
    async with engine.begin() as conn:
        await conn.execute(text(statement))
    problems = verify(await walk(engine), await head(redis))
    assert any(p.startswith(found) for p in problems), problems


async def test_the_trail_is_read_back_newest_first_and_filtered(client: Client) -> None:
    await changes(client, 3)
    r = await client.post("/v1/tokens", json={"name": "ops", "scopes": ["admin"]}, headers=admin())
    ops = await r.json()
    r = await client.patch(
        "/v1/accounts/a1", json={"overdraft_limit": 3}, headers=bearer(ops["token"])
    )
    assert r.status == 200
    await to_sql(client)
    r = await client.get("/v1/audit", headers=admin())
    entries = (await r.json())["entries"]
    assert [e["action"] for e in entries] == [
        "account.patch",
        "token.create",
        "account.put",
        "account.put",
        "account.put",
    ]
    r = await client.get("/v1/audit?account=a1", headers=admin())
    assert [e["action"] for e in (await r.json())["entries"]] == ["account.patch", "account.put"]
    r = await client.get(f"/v1/audit?token_id={ops['token_id']}", headers=admin())
    assert [e["account"] for e in (await r.json())["entries"]] == ["a1"]
    r = await client.get("/v1/audit?action=account.put&limit=2", headers=admin())
    page = await r.json()
    assert [e["account"] for e in page["entries"]] == ["a2", "a1"]
    r = await client.get(f"/v1/audit?action=account.put&before={page['next']}", headers=admin())
    assert [e["account"] for e in (await r.json())["entries"]] == ["a0"]
    r = await client.get("/v1/audit", headers=bearer(ops["token"]))
    assert r.status == 200
