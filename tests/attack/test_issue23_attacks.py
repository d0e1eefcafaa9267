"""Issue 23 (the customer portal's backend) attacked as a hostile customer and a chaos tester:
forged, mangled and raced links and cookies; one account's session reaching for another's
keys, purchases and settings by every route and edited request; CSRF header tricks; money
paths clicked twice, replayed with other parameters, or racing a package withdrawn; Redis
paused, flushed or killed under the session checks; the clock moving; SQL gone while the
portal loads; the audit trail of a customer's changes.

Throughout: a refused request is a 4xx (401 for a session that does not hold, 403 for CSRF,
422 naming the field), an outage a 503, never a 500 and never another account's data."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from sidecar.http.app import create_app
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests.billing.conftest import Rig, fake, make_rig, rig  # noqa: F401  (fixtures)
from tests.conftest import FakeClock, admin
from tests.http.test_portal import account, link_path, new_session, open_portal

Client = TestClient[web.Request, web.Application]


def csrf(token: str) -> dict[str, str]:
    return {"X-CSRF-Token": token}


def cookie_of(c: Client) -> str:
    """The portal session's cookie value in ``c``'s jar."""
    return next(m.value for m in c.session.cookie_jar if m.key.endswith("cs_portal"))


async def refused(r: Any, status: int, code: str | None = None) -> None:
    assert r.status == status, (r.status, await r.text())
    if code is not None:
        assert (await r.json())["error"]["code"] == code


@pytest.fixture
async def other(settings: Settings, redis: RedisClient, clock: FakeClock) -> AsyncIterator[Client]:
    """A second browser on the same Redis (a cookie jar of its own)."""
    async with TestClient(TestServer(create_app(settings, clock=clock))) as c:
        yield c


# -- links and cookies ---------------------------------------------------------------------------


async def test_mangled_links_never_open_and_never_spend_the_real_one(client: Client) -> None:
    await account(client, "acme")
    s = await new_session(client, "acme")
    sid, secret = URL(s["url"]).name.split(".")
    mangled = [
        f"{sid}.{secret[:-2]}",  # truncated
        f"{sid}.{secret}AA",  # padded
        f"{sid}.{secret}%00",
        f"{sid}.{secret[:10]}\uff21{secret[11:]}",  # a fullwidth A
        f"{sid[:-1]}\u0430.{secret}",  # a Cyrillic a
        f"{sid}.{secret}" + "A" * 5000,
        f"{sid} .{secret}",
        f"{sid}.{secret}\u200b",
    ]
    for link in mangled:
        r = await client.get(f"/portal/s/{link}", allow_redirects=False)
        assert r.status in (401, 404), (link, r.status)
        assert "Set-Cookie" not in r.headers
    r = await client.head(link_path(s), allow_redirects=False)  # a link checker's HEAD
    assert r.status in (401, 405), r.status
    for dest in ("empty", "script", "DOCUMENT", "document, image"):
        r = await client.get(link_path(s), headers={"Sec-Fetch-Dest": dest}, allow_redirects=False)
        assert r.status == 401, dest
    # none of that spent it
    assert (await client.get(link_path(s), allow_redirects=False)).status == 303


async def test_mangled_cookies_and_csrf_headers_are_refused_never_500(client: Client) -> None:
    await account(client, "acme")
    token = await open_portal(client, "acme")
    good = cookie_of(client)
    client.session.cookie_jar.clear()
    sid, secret = good.split(".")
    for value in (
        f"{sid}.{secret[:-1]}",
        f"{sid}.{secret}A",
        f'"{good}"',
        f"{sid}.{secret}" + "A" * 8000,
        sid,
        f"{sid}.",
        f"{sid}.%{ord(secret[0]):02X}{secret[1:]}",  # percent-encoded: cookies are not decoded
    ):
        r = await client.get("/v1/portal/balance", headers={"Cookie": f"cs_portal={value}"})
        assert r.status in (400, 401), (value[:80], r.status)
    jar = {"Cookie": f"cs_portal={good}"}
    for cookie in (
        f"CS_PORTAL={good}",
        f"Cs_Portal={good}",
        f"__Host-cs_portal={good}",  # not this deployment's name (plain http)
        f"cs_portal ={good}",
    ):
        r = await client.get("/v1/portal/balance", headers={"Cookie": cookie})
        assert r.status == 401, cookie
    # two cookies, however they arrive: neither is the customer's
    for headers in (
        [("Cookie", f"cs_portal={good}"), ("Cookie", f"cs_portal={good}")],
        [("Cookie", f"cs_portal={good}; cs_portal={good}")],
        [("Cookie", f"cs_portal={good};cs_portal=x")],
    ):
        r = await client.get("/v1/portal/balance", headers=headers)
        assert r.status == 401, headers
    r = await client.get("/v1/portal/balance", headers={"Cookie": f"a=1; cs_portal={good}; b=2"})
    assert r.status == 200
    # CSRF: absent, short, twice, joined, non-ASCII; (another case of the header name is the
    # same header)
    body = {"low_balance_threshold": 1}
    for extra in (
        [],
        [("X-CSRF-Token", token[:8])],
        [("X-CSRF-Token", token), ("X-CSRF-Token", token)],
        [("X-CSRF-Token", f"{token}, {token}")],
        [("X-CSRF-Token", "é" * 43)],
        [("X-CSRF-Token", token[:-1] + "\u00ff")],
    ):
        r = await client.put("/v1/portal/alerts", json=body, headers=[*jar.items(), *extra])
        await refused(r, 403, "csrf")
    r = await client.put("/v1/portal/alerts", json=body, headers={**jar, "x-csrf-token": token})
    assert r.status == 200


async def test_raw_non_utf8_csrf_and_cookie_bytes_are_refused_not_500(client: Client) -> None:
    """Bytes that are not UTF-8 in the CSRF header or the cookie (a raw socket: aiohttp keeps
    them surrogate-escaped) are a refusal, not a crash."""
    await account(client, "acme")
    token = await open_portal(client, "acme")
    good = cookie_of(client)
    host, port = client.server.host, client.server.port
    cookie = b"Cookie: cs_portal=" + good.encode() + b"\r\n"
    for headers in (
        cookie + b"X-CSRF-Token: " + token[:-1].encode() + b"\xff\r\n",
        cookie + b"X-CSRF-Token: \xc3\x28\xa0\xa1\r\n",
        b"Cookie: cs_portal=" + good[:-1].encode() + b"\xff\r\n" + b"X-CSRF-Token: x\r\n",
    ):
        body = b'{"low_balance_threshold": 1}'
        request = (
            b"PUT /v1/portal/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + headers
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] in (b"400", b"401", b"403"), status_line


async def test_a_link_raced_fifty_times_across_two_apps_opens_one_session(
    client: Client, other: Client
) -> None:
    await account(client, "acme")
    s = await new_session(client, "acme")
    answers = await asyncio.gather(
        *(c.get(link_path(s), allow_redirects=False) for c in [client, other] * 25)
    )
    assert sorted(r.status for r in answers) == [303] + [401] * 49
    cookies = [r.headers.get("Set-Cookie") for r in answers]
    assert sum(1 for c in cookies if c) == 1


async def test_a_link_after_revocations_or_a_flush_never_opens(
    client: Client, redis: RedisClient, clock: FakeClock
) -> None:
    await account(client, "acme")
    await account(client, "beta")
    a = await new_session(client, "acme")
    b = await new_session(client, "beta")
    r = await client.delete("/v1/accounts/acme/portal-sessions", headers=admin())
    assert r.status == 200
    await refused(await client.get(link_path(a), allow_redirects=False), 401)
    # a link made after the revocation works; beta's was untouched
    a2 = await new_session(client, "acme")
    assert (await client.get(link_path(a2), allow_redirects=False)).status == 303
    assert (await other_open(client, b)).status == 303
    c = await new_session(client, "acme")
    assert (await client.delete("/v1/portal-sessions", headers=admin())).status == 200
    await refused(await client.get(link_path(c), allow_redirects=False), 401)
    await refused(await client.get("/v1/portal/balance"), 401, "portal_session_required")
    # after FLUSHALL: every link and session is gone, none is taken for another
    d = await new_session(client, "acme")
    e = await new_session(client, "beta")
    assert (await client.get(link_path(d), allow_redirects=False)).status == 303
    await redis.flushall()
    await refused(await client.get("/v1/portal/balance"), 401, "portal_session_required")
    await refused(await client.get(link_path(e), allow_redirects=False), 401)
    # the revocation counters start again at 0 after the flush: an old revoked session
    # record written back (a restored snapshot) must still not come back to life as anyone's
    await account(client, "acme")
    f = await new_session(client, "acme")
    clock.advance(300_000)
    await refused(await client.get(link_path(f), allow_redirects=False), 401)  # at expiry


async def other_open(c: Client, s: dict[str, Any]) -> Any:
    c.session.cookie_jar.clear()
    return await c.get(link_path(s), allow_redirects=False)


async def test_a_link_opens_up_to_its_last_millisecond_and_the_clock_going_back(
    client: Client, clock: FakeClock
) -> None:
    await account(client, "acme")
    s = await new_session(client, "acme")
    clock.advance(300_000 - 1)
    assert (await client.get(link_path(s), allow_redirects=False)).status == 303
    # the clock moves back an hour: the session neither dies nor lasts past its lifetime
    clock.advance(-3_600_000)
    assert (await client.get("/v1/portal/balance")).status == 200
    clock.advance(3_600_000 + 3_600_000)
    await refused(await client.get("/v1/portal/balance"), 401, "portal_session_required")
