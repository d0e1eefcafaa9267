"""Customer-portal sessions and the portal API (docs/portal.md), over HTTP against the real app:
a session's link opens once and sets an HttpOnly cookie; the cookie reaches the portal API and
only its account; expired, reused and forged links and sessions are refused; every change needs
the session's CSRF token; sessions end by sign-out and by revocation (per account, all); and a
portal session walks every route the router serves without reaching anything of another
account or any admin or service route."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from sidecar.http.api import API
from sidecar.http.app import create_app
from sidecar.http.auth import PORTAL_SESSION
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, outbox_entries, service, snapshot

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.sql_free  # the routes it calls read Redis only (writer off)


async def account(c: Client, name: str, credits: int = 0) -> None:
    r = await c.put(f"/v1/accounts/{name}", json={}, headers=admin())
    assert r.status in (200, 201), await r.text()
    if credits:
        r = await c.post(
            f"/v1/accounts/{name}/grants",
            json={"grant_id": f"g-{name}", "credits": credits, "reason": "test"},
            headers=admin(),
        )
        assert r.status == 201, await r.text()


async def new_session(c: Client, name: str, **body: Any) -> dict[str, Any]:
    r = await c.post(f"/v1/accounts/{name}/portal-sessions", json=body, headers=admin())
    assert r.status == 201, await r.text()
    return dict(await r.json())


def link_path(session: dict[str, Any]) -> str:
    return URL(session["url"]).path


async def open_portal(c: Client, name: str, **body: Any) -> str:
    """Opens a new session's link in ``c`` (its cookie jar keeps the cookie); the CSRF token."""
    s = await new_session(c, name, **body)
    r = await c.get(link_path(s), allow_redirects=False)
    assert r.status == 303, await r.text()
    r = await c.get("/v1/portal/session")
    assert r.status == 200, await r.text()
    return str((await r.json())["csrf_token"])


@pytest.fixture
async def other(settings: Settings, redis: RedisClient, clock: FakeClock) -> AsyncIterator[Client]:
    """A second browser: the same app's server, a cookie jar of its own."""
    app = create_app(settings, clock=clock)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_a_session_link_opens_once_and_sets_an_httponly_lax_cookie(client: Client) -> None:
    await account(client, "acme", 100)
    s = await new_session(client, "acme", return_url="https://app.example.com/billing")
    assert s["account"] == "acme" and s["return_url"] == "https://app.example.com/billing"
    assert re.fullmatch(r"http://[^/]+/portal/s/[a-z0-9]{16}\.[A-Za-z0-9_-]{43}", s["url"])
    r = await client.get(link_path(s), allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/portal/"
    assert (
        r.headers["Referrer-Policy"] == "no-referrer" and r.headers["Cache-Control"] == "no-store"
    )
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("cs_portal=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and "Path=/" in cookie and "Max-Age=3600" in cookie
    # The link's secret is not the cookie's: the link is spent.
    assert URL(s["url"]).name.split(".")[1] not in cookie
    r = await client.get("/v1/portal/balance")
    assert r.status == 200 and (await r.json())["balance"] == 100
    again = await client.get(link_path(s), allow_redirects=False)
    assert again.status == 401 and again.content_type == "text/html"
    assert "expired" in await again.text()


async def test_a_session_view_carries_csrf_branding_and_only_servable_sections(
    client: Client,
) -> None:
    await account(client, "acme")
    await open_portal(client, "acme", locale="en-GB", sections=["balance", "buy", "keys"])
    view = await (await client.get("/v1/portal/session")).json()
    assert view["account"] == "acme" and view["locale"] == "en-GB"
    assert view["sections"] == ["balance", "keys"]  # no Stripe here: nothing to buy with
    assert view["features"] == {"billing": False, "billing_portal": False, "plans": False}
    assert view["branding"]["product_name"] == "Credits"
    assert len(view["csrf_token"]) >= 32


async def test_forged_expired_and_prefetched_links_are_refused(
    client: Client, clock: FakeClock
) -> None:
    await account(client, "acme")
    s = await new_session(client, "acme")
    sid, secret = URL(s["url"]).name.split(".")
    forged = [
        f"{sid}.{secret[:-1]}A" if secret[-1] != "A" else f"{sid}.{secret[:-1]}B",
        f"{'a' * 16}.{secret}",
        sid,
        f"{sid}.{secret}.x",
        f"{sid}.%00{secret}",
        f"{sid.upper()}.{secret}",
    ]
    for link in forged:
        r = await client.get(f"/portal/s/{link}", allow_redirects=False)
        assert r.status == 401, link
        assert "Set-Cookie" not in r.headers
    # An <img> or a script loading the link does not open it (nor spend it).
    r = await client.get(link_path(s), headers={"Sec-Fetch-Dest": "image"}, allow_redirects=False)
    assert r.status == 401
    clock.advance(300_000)  # the link's five minutes
    r = await client.get(link_path(s), allow_redirects=False)
    assert r.status == 401
    assert (await client.get("/v1/portal/balance")).status == 401


async def test_a_session_ends_after_its_lifetime(client: Client, clock: FakeClock) -> None:
    await account(client, "acme")
    await open_portal(client, "acme")
    clock.advance(3_600_000 - 1)
    assert (await client.get("/v1/portal/balance")).status == 200
    clock.advance(1)
    r = await client.get("/v1/portal/balance")
    assert r.status == 401
    body = await r.json()
    assert body["error"]["code"] == "portal_session_required"
    assert "WWW-Authenticate" not in r.headers  # a cookie, not a bearer token


async def test_a_change_needs_the_session_csrf_token_and_not_another_site(client: Client) -> None:
    await account(client, "acme")
    csrf = await open_portal(client, "acme")
    limit = {"spend_limit": {"credits": 50, "interval": "day"}}
    for headers in (
        {},
        {"X-CSRF-Token": "x" * 43},
        {"X-CSRF-Token": csrf + "x"},
        {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
    ):
        r = await client.put("/v1/portal/spend-limit", json=limit, headers=headers)
        assert r.status == 403, headers
        assert (await r.json())["error"]["code"] == "csrf"
    bal = await (await client.get("/v1/portal/balance")).json()
    assert bal["spend"] is None  # nothing changed
    r = await client.put(
        "/v1/portal/spend-limit",
        json=limit,
        headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["spend_limit"]["credits"] == 50


async def test_sign_out_and_revocations_end_sessions(client: Client, other: Client) -> None:
    await account(client, "acme")
    await account(client, "beta")
    csrf = await open_portal(client, "acme")
    r = await client.delete("/v1/portal/session", headers={"X-CSRF-Token": csrf})
    assert r.status == 200 and (await r.json()) == {"ended": True}
    assert (await client.get("/v1/portal/balance")).status == 401

    await open_portal(client, "acme")
    await open_portal(other, "beta")
    unopened = await new_session(client, "acme")
    r = await client.delete("/v1/accounts/acme/portal-sessions", headers=admin())
    assert r.status == 200
    assert (await client.get("/v1/portal/balance")).status == 401
    assert (await other.get("/v1/portal/balance")).status == 200  # beta's untouched
    assert (await client.get(link_path(unopened), allow_redirects=False)).status == 401
    await open_portal(client, "acme")  # a new one works
    assert (await client.get("/v1/portal/balance")).status == 200

    r = await client.delete("/v1/portal-sessions", headers=service())
    assert r.status == 403  # every account's: admin only
    r = await client.delete("/v1/portal-sessions", headers=admin())
    assert r.status == 200
    assert (await client.get("/v1/portal/balance")).status == 401
    assert (await other.get("/v1/portal/balance")).status == 401


async def test_two_session_cookies_are_refused(client: Client, other: Client) -> None:
    await account(client, "acme")
    await account(client, "beta")
    await open_portal(client, "acme")
    await open_portal(other, "beta")
    a = next(iter(client.session.cookie_jar)).value
    b = next(iter(other.session.cookie_jar)).value
    client.session.cookie_jar.clear()
    r = await client.get("/v1/portal/balance", headers={"Cookie": f"cs_portal={a}; cs_portal={b}"})
    assert r.status == 401
    r = await client.get("/v1/portal/balance", headers={"Cookie": f"cs_portal={a}"})
    assert r.status == 200 and (await r.json())["account"] == "acme"


async def test_session_creation_is_validated_scoped_and_audited(
    client: Client, redis: RedisClient
) -> None:
    await account(client, "acme")
    r = await client.post("/v1/accounts/nobody/portal-sessions", json={}, headers=admin())
    assert r.status == 404
    for body, field in (
        ({"return_url": "javascript:alert(1)"}, "return_url"),
        ({"locale": "<b>"}, "locale"),
        ({"sections": ["balance", "admin"]}, "sections"),
        ({"sections": []}, "sections"),
        ({"account": "beta"}, "account"),
    ):
        r = await client.post("/v1/accounts/acme/portal-sessions", json=body, headers=admin())
        assert r.status == 422, body
        assert (await r.json())["error"]["field"].startswith(field), body
    r = await client.post("/v1/accounts/acme/portal-sessions", json={}, headers=service())
    assert r.status == 403  # the service token has no `portal` scope
    r = await client.post("/v1/tokens", json={"name": "app", "scopes": ["portal"]}, headers=admin())
    token = (await r.json())["token"]
    r = await client.post(
        "/v1/accounts/acme/portal-sessions", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status == 201, await r.text()
    made = await r.json()
    audit = [e for e in await outbox_entries(redis) if e.get("kind") == "audit"]
    entry = next(e for e in audit if e["action"] == "portal_session.create")
    assert entry["target"] == made["id"] and entry["account"] == "acme"
    assert entry["after"]["url"] == "***"  # the link opens the session: never kept


async def test_portal_keys_are_the_session_accounts_only(client: Client, other: Client) -> None:
    await account(client, "acme", 10)
    await account(client, "beta", 10)
    csrf = await open_portal(client, "acme")
    beta_csrf = await open_portal(other, "beta")
    r = await client.post(
        "/v1/portal/keys",
        json={"name": "<b>ci</b>", "idempotency_key": "k1"},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status == 201, await r.text()
    created = await r.json()
    assert created["account"] == "acme" and created["key"].startswith("csk_")
    r = await client.post(
        "/v1/check",
        json={"account": "acme", "cost": 1, "idempotency_key": "c1"},
        headers=service(),
    )
    assert r.status == 200
    # beta's session can neither see, limit nor revoke acme's key
    listed = await (await other.get("/v1/portal/keys")).json()
    assert listed["account"] == "beta" and listed["keys"] == []
    kid = created["key_id"]
    r = await other.delete(f"/v1/portal/keys/{kid}", headers={"X-CSRF-Token": beta_csrf})
    assert r.status == 404
    r = await other.patch(
        f"/v1/portal/keys/{kid}", json={"spend_limit": None}, headers={"X-CSRF-Token": beta_csrf}
    )
    assert r.status == 404
    # acme's can
    r = await client.delete(f"/v1/portal/keys/{kid}", headers={"X-CSRF-Token": csrf})
    assert r.status == 200 and (await r.json())["revoked_at"] is not None
    # a portal key takes no rate limit (the business's to set)
    r = await client.post(
        "/v1/portal/keys",
        json={
            "name": "x",
            "rate_limit": {"requests": 1, "period_ms": 1000},
            "idempotency_key": "k2",
        },
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status == 422 and (await r.json())["error"]["field"].startswith("rate_limit")


async def test_no_request_of_a_portal_session_names_another_account(
    client: Client, other: Client
) -> None:
    await account(client, "acme", 10)
    await account(client, "beta", 99)
    csrf = await open_portal(client, "acme")
    h = {"X-CSRF-Token": csrf}
    for path in (
        "/v1/portal/balance?account=beta",
        "/v1/portal/transactions?account=beta",
        "/v1/portal/usage?account=beta",
    ):
        r = await client.get(path)
        assert r.status == 422, path
    r = await client.put(
        "/v1/portal/spend-limit", json={"spend_limit": None, "account": "beta"}, headers=h
    )
    assert r.status == 422
    r = await client.put(
        "/v1/portal/alerts", json={"low_balance_threshold": 5, "account": "beta"}, headers=h
    )
    assert r.status == 422
    beta = await (await other.get("/v1/portal/balance")).json()
    assert beta["error"]["code"] == "portal_session_required"  # `other` has no session


async def test_a_portal_session_reaches_no_admin_or_service_route(client: Client) -> None:
    """Every route the router serves (not only the documented ones), with the session's cookie
    and CSRF token but no bearer token: nothing outside the portal answers 2xx but the public
    pages and probes."""
    await account(client, "acme", 10)
    await account(client, "beta", 10)
    csrf = await open_portal(client, "acme")
    public = {
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/metrics",
        "/console",
        "/console/",
        "/console/{name}",
        "/portal",
        "/portal/",
        "/portal/{name}",
        "/ui/{name}",
        "/portal/s/{link}",
    }
    values = {"account": "beta", "key_id": "key_x", "hold_id": "h1", "plan": "pro"}
    checked = 0
    for resource in client.app.router.resources():
        info = resource.get_info()
        template = info.get("formatter") or info.get("path") or ""
        if not template or template.startswith("/v1/portal/") or template in public:
            continue
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: values.get(m[1], "x"), template)
        for route in resource:
            method = route.method
            if method == "HEAD":
                continue
            m = "POST" if method == "*" else method
            r = await client.request(
                m, path, json={"account": "beta"}, headers={"X-CSRF-Token": csrf}
            )
            # 401 mostly; a 404 or 405 of the route itself, the webhook's 400/503: never 2xx
            assert 400 <= r.status < 500 or r.status == 503, (m, template, r.status)
            checked += 1
    assert checked > 50


async def test_embedding_makes_the_cookie_host_only_secure_samesite_none_and_partitioned(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    embedded = settings.model_copy(
        update={"portal_frame_ancestors": "https://app.example.com", "portal_url": None}
    )
    async with TestClient(TestServer(create_app(embedded, clock=clock))) as c:
        await account(c, "acme")
        s = await new_session(c, "acme")
        r = await c.get(link_path(s), allow_redirects=False)
        assert r.status == 303
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith("__Host-cs_portal=")
        for attribute in ("HttpOnly", "Secure", "SameSite=None", "Partitioned", "Path=/"):
            assert attribute in cookie, attribute
        assert "Domain" not in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
        # the unprefixed name is not the session (a sibling subdomain could plant that one)
        r = await c.get("/v1/portal/balance", headers={"Cookie": f"cs_portal={value}"})
        assert r.status == 401
        r = await c.get("/v1/portal/balance", headers={"Cookie": f"__Host-cs_portal={value}"})
        assert r.status == 200


async def test_the_session_url_starts_with_the_configured_public_url(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    public = settings.model_copy(update={"portal_url": "https://billing.example.com/credits/"})
    async with TestClient(TestServer(create_app(public, clock=clock))) as c:
        await account(c, "acme")
        s = await new_session(c, "acme")
        assert s["url"].startswith("https://billing.example.com/credits/portal/s/")


async def test_a_link_opened_many_times_at_once_opens_one_session(client: Client) -> None:
    await account(client, "acme")
    s = await new_session(client, "acme")
    answers = await asyncio.gather(
        *(client.get(link_path(s), allow_redirects=False) for _ in range(20))
    )
    assert sorted(r.status for r in answers) == [303] + [401] * 19


def test_every_portal_change_but_sign_out_declares_an_audit_action() -> None:
    changes = [op for op in API.operations if op.auth is PORTAL_SESSION and op.method != "GET"]
    assert len(changes) >= 9
    unaudited = [f"{op.method} {op.path}" for op in changes if op.audit is None]
    assert unaudited == ["DELETE /v1/portal/session"]


async def test_a_customer_change_is_audited_as_the_portal_session(
    client: Client, redis: RedisClient
) -> None:
    await account(client, "acme")
    csrf = await open_portal(client, "acme")
    found = (await redis.keys("cs:{0}:portal:session:*"))[0]
    sid = (found.decode() if isinstance(found, bytes) else found).rsplit(":", 1)[1]
    h = {"X-CSRF-Token": csrf}
    r = await client.put("/v1/portal/alerts", json={"low_balance_threshold": 7}, headers=h)
    assert r.status == 200 and (await r.json())["low_balance_threshold"] == 7
    r = await client.put(
        "/v1/portal/spend-limit",
        json={"spend_limit": {"credits": 9, "interval": "week"}},
        headers=h,
    )
    assert r.status == 200
    entries = [
        e
        for e in await outbox_entries(redis)
        if e.get("kind") == "audit" and e["action"].startswith("portal.")
    ]
    assert [e["action"] for e in entries] == ["portal.alerts.put", "portal.spend_limit.put"]
    for e in entries:
        assert e["token_id"] == f"portal:{sid}" and e["token_name"] == "portal session"
        assert e["account"] == "acme"
    assert entries[0]["before"]["low_balance_threshold"] is None
    assert entries[0]["after"]["low_balance_threshold"] == 7


async def test_a_double_clicked_create_key_makes_one_key_shown_once(client: Client) -> None:
    await account(client, "acme")
    csrf = await open_portal(client, "acme")
    body = {"name": "ci", "idempotency_key": "click-1"}
    answers = await asyncio.gather(
        *(
            client.post("/v1/portal/keys", json=body, headers={"X-CSRF-Token": csrf})
            for _ in range(5)
        )
    )
    made = [await r.json() for r in answers]
    assert sorted(r.status for r in answers) == [200, 200, 200, 200, 201]
    assert len({m["key_id"] for m in made}) == 1
    assert [m["key"] is not None for m in made].count(True) == 1  # the secret: once
    listed = await (await client.get("/v1/portal/keys")).json()
    assert len(listed["keys"]) == 1
    r = await client.post("/v1/portal/keys", json={"name": "ci"}, headers={"X-CSRF-Token": csrf})
    assert r.status == 422 and (await r.json())["error"]["field"] == "idempotency_key"


async def test_the_portal_creates_keys_up_to_the_cap_of_active_ones(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    capped = settings.model_copy(update={"portal_max_keys": 2})
    async with TestClient(TestServer(create_app(capped, clock=clock))) as c:
        await account(c, "acme")
        csrf = await open_portal(c, "acme")
        h = {"X-CSRF-Token": csrf}
        made = []
        for i in range(2):
            r = await c.post("/v1/portal/keys", json={"idempotency_key": f"k{i}"}, headers=h)
            assert r.status == 201
            made.append((await r.json())["key_id"])
        r = await c.post("/v1/portal/keys", json={"idempotency_key": "k2"}, headers=h)
        assert r.status == 409 and (await r.json())["error"]["code"] == "too_many_keys"
        assert (await c.delete(f"/v1/portal/keys/{made[0]}", headers=h)).status == 200
        r = await c.post("/v1/portal/keys", json={"idempotency_key": "k2"}, headers=h)
        assert r.status == 201  # a revoked key makes room


async def test_revoking_the_sessions_of_an_unknown_account_is_a_404(client: Client) -> None:
    r = await client.delete("/v1/accounts/nobody/portal-sessions", headers=admin())
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_account"


async def test_every_portal_change_refuses_a_request_without_the_csrf_token(
    client: Client, redis: RedisClient
) -> None:
    """The registry walked: each state-changing portal operation, sent with the session's
    cookie but without its CSRF token (or from another site), is a 403 and writes nothing."""
    await account(client, "acme", 10)
    csrf = await open_portal(client, "acme")
    r = await client.post(
        "/v1/portal/keys", json={"idempotency_key": "k"}, headers={"X-CSRF-Token": csrf}
    )
    key_id = (await r.json())["key_id"]
    changes = [op for op in API.operations if op.auth is PORTAL_SESSION and op.method != "GET"]
    before = await snapshot(redis)
    for op in changes:
        path = op.spec_path.replace("{key_id}", key_id)
        for headers in ({}, {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}):
            r = await client.request(op.method, path, json={}, headers=headers)
            assert r.status == 403, (op.method, path, headers)
            assert (await r.json())["error"]["code"] == "csrf"
    assert await snapshot(redis) == before
    assert len(changes) >= 11
