"""The operator console (GET /console): served with a strict Content-Security-Policy and its
assets with the right types; then, in headless Chromium (the system's, driven by Playwright)
against the real app on a real port with its data written to SQL: a wrong token shows the
API's error, the admin token opens the account list (prefix filter, paging), an account shows
its balance, buckets, holds, transactions and usage chart, then packages and both kinds of dead
letters; data that looks like HTML stays text. A screenshot goes to .artifacts/console.png."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Page, async_playwright, expect
from sqlalchemy import text

from sidecar.http.app import create_app
from sidecar.http.state import BILLING, LEDGER
from sidecar.ledger.arguments import (
    wall_clock_ms,
)
from sidecar.settings import Settings
from tests.conftest import ADMIN, SERVICE, admin, service
from tests.persistence.test_writer import drain, make_writer
from tests.ports import free_port

pytestmark = pytest.mark.browser

Client = TestClient[web.Request, web.Application]
ARTIFACT = Path(__file__).resolve().parents[2] / ".artifacts" / "console.png"
TOKEN_KEY = "credit-sidecar.admin-token"
HTML_LIKE = "<img src=x onerror=alert(1)>"


# -- plain HTTP ------------------------------------------------------------------------------


async def test_console_page_is_served_without_a_token_under_a_strict_csp(client: Client) -> None:
    r = await client.get("/console")
    assert r.status == 200
    assert r.content_type == "text/html" and r.charset == "utf-8"
    csp = r.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    page = await r.text()
    assert '<script type="module" src="console/console.js"></script>' in page
    assert '<link rel="stylesheet" href="console/console.css">' in page
    # No inline script or style: the CSP would block it.
    assert page.count("<script") == 1 and "<style" not in page and "style=" not in page


async def test_console_assets_have_their_content_types(client: Client) -> None:
    for path, ctype in (
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ):
        r = await client.get(path)
        assert r.status == 200, path
        assert r.content_type == ctype
        assert "Content-Security-Policy" in r.headers
    js = await (await client.get("/console/console.js")).text()
    # Data reaches the page as text only.
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js


async def test_console_serves_nothing_else(client: Client) -> None:
    for path in ("/console/index.html", "/console/app.js", "/console/..%2fapp.py"):
        r = await client.get(path)
        assert r.status == 404, path
        assert (await r.json())["error"]["code"] == "not_found"
    r = await client.get("/console/", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "../console"


# -- in the browser --------------------------------------------------------------------------


@dataclass
class Served:
    base: str
    balance: dict[str, Any]  # acme's balance as the API gives it
    transactions: int  # acme's transactions in SQL
    read_token: str  # a named token with the read scope only (docs/tokens.md)


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any, auth: Any) -> Any:
    async with http.request(method, path, json=body, headers=auth) as r:
        assert r.status < 300, (path, r.status, await r.text())
        return await r.json()


@pytest.fixture
async def served(settings: Settings, redis: Any) -> AsyncIterator[Served]:
    """The app on a real port (the wall clock, so usage falls in the chart's last 24 hours)
    with acme (grants, checks, a settled and an active hold), 53 more accounts, a package, an
    outbox dead letter and a dead Stripe event; the outbox drained into SQL."""
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession(base) as http:
            names = ["acme", "acme-labs", "beta", "ghost"] + [f"zz-{i:02}" for i in range(50)]
            await asyncio.gather(
                *(call(http, "PUT", f"/v1/accounts/{a}", {}, admin()) for a in names)
            )
            grants = [
                {"grant_id": "order-1001", "credits": 1000, "source": "purchase"},
                {
                    "grant_id": "welcome",
                    "credits": 100,
                    "source": "promo",
                    "priority": -1,
                    "expires_at": "2030-01-01T00:00:00Z",
                    "description": "<b>welcome</b>",
                    "metadata": {"note": HTML_LIKE},
                },
            ]
            for g in grants:
                await call(http, "POST", "/v1/accounts/acme/grants", g, admin())
            await call(
                http,
                "POST",
                "/v1/accounts/ghost/grants",
                {"grant_id": "g", "credits": 10, "reason": "test"},
                admin(),
            )
            for i in range(6):
                check = {"account": "acme", "cost": 10, "idempotency_key": f"req-{i}"}
                await call(http, "POST", "/v1/check", check, service())
            await call(
                http,
                "POST",
                "/v1/holds",
                {"account": "acme", "hold_id": "job-0", "amount": 20},
                service(),
            )
            await call(
                http, "POST", "/v1/holds/job-0/settle", {"account": "acme", "amount": 15}, service()
            )
            await call(
                http,
                "POST",
                "/v1/holds",
                {"account": "acme", "hold_id": "job-1", "amount": 50},
                service(),
            )
            package = {
                "name": "Starter",
                "credits": 1000,
                "price": 500,
                "stripe_price_id": "price_1",
            }
            await call(http, "PUT", "/v1/admin/packages/starter", package, admin())

            ledger, billing = app[LEDGER], app[BILLING]
            engine = billing.sql.engine
            await drain(make_writer(ledger, engine))
            # An entry SQL refuses (a stray row holds ghost's next seq) becomes a dead letter.
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO credit_transactions (id, account, seq, type, amount,"
                        " balance_after, debt_after, description, created_ms, created_at,"
                        " details) VALUES ('stray', 'ghost', 2, 'grant', 0, 0, 0, '', 0,"
                        " '2026-01-01 00:00:00', '{}')"
                    )
                )
            await call(
                http,
                "POST",
                "/v1/check",
                {"account": "ghost", "cost": 1, "idempotency_key": "r"},
                service(),
            )
            await drain(make_writer(ledger, engine, max_attempts=2))
            # A Stripe event the billing worker gave up on, recorded as the worker does.
            now = wall_clock_ms()
            await billing.events.store(
                "evt_dead", "checkout.session.completed", {"id": "evt_dead"}, now
            )
            claimed = await billing.events.claim("evt_dead", now, 60_000)
            assert claimed is not None
            await billing.events.finish(
                "evt_dead", "dead", now, attempt=claimed[2], error="no package for price price_gone"
            )

            balance = await call(http, "GET", "/v1/accounts/acme/balance", None, admin())
            txns = await call(http, "GET", "/v1/accounts/acme/transactions", None, admin())
            dead = await call(http, "GET", "/v1/admin/outbox/dead-letters", None, admin())
            assert len(dead["entries"]) == 1
            made = await call(
                http, "POST", "/v1/tokens", {"name": "console", "scopes": ["read"]}, admin()
            )
        yield Served(base, balance, len(txns["transactions"]), made["token"])
    finally:
        await server.close()


def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return found


async def sign_in(page: Page, token: str) -> None:
    await page.locator("#token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def test_console_in_a_browser(served: Served) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium())
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []  # script errors, CSP violations, dialogs (injected script)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
            await run_console(page, served)
            assert problems == []
        finally:
            await browser.close()


async def run_console(page: Page, served: Served) -> None:
    await page.goto(f"{served.base}/console")
    login_error = page.locator("#login-error")

    # A wrong token, then the service token: the API's message, nothing kept.
    await sign_in(page, "not-the-token")
    await expect(login_error).to_have_text("invalid token (unauthorized)")
    await sign_in(page, SERVICE)
    await expect(login_error).to_contain_text("needs a token with the `read` scope (or `admin`)")
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

    # A read-only token (the console needs no more): the account list, 50 a page, kept in
    # sessionStorage, not in the URL.
    await sign_in(page, served.read_token)
    rows = page.locator("#accounts-table tbody tr")
    await expect(rows).to_have_count(50)
    await expect(rows.first).to_contain_text("acme")
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == served.read_token
    assert served.read_token not in page.url
    await page.locator("#accounts-next").click()
    await expect(rows).to_have_count(4)
    await expect(rows.last).to_contain_text("zz-49")
    await page.locator("#account-prefix").fill("acme")
    await page.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(2)
    await expect(rows.nth(1)).to_contain_text("acme-labs")

    # One account: balance, buckets, holds, transactions, usage chart.
    await page.get_by_role("link", name="acme", exact=True).click()
    b = served.balance
    stats = page.locator("#balance-stats")
    await expect(stats).to_contain_text(f"Balance{b['balance']:,}")
    await expect(stats).to_contain_text(f"Held{b['held']:,}")
    buckets = page.locator("#buckets-table tbody tr")
    await expect(buckets).to_have_count(2)
    await expect(buckets.first).to_contain_text("welcome")  # priority -1 burns first
    await expect(buckets.first).to_contain_text(HTML_LIKE)  # shown as text
    holds = page.locator("#holds-table tbody tr")
    await expect(holds).to_have_count(2)
    await expect(page.locator("#holds-table")).to_contain_text("job-1active")
    await expect(page.locator("#holds-table")).to_contain_text("job-0settled")
    txns = page.locator("#transactions-table tbody tr")
    await expect(txns).to_have_count(served.transactions)
    await expect(page.locator("#transactions-table")).to_contain_text("<b>welcome</b>")
    await expect(page.locator("#usage-total")).to_have_text("60 credits in 6 checks (times in UTC)")
    assert await page.locator("#usage-chart circle.point").count() >= 1
    line = await page.locator("#usage-chart polyline.line").get_attribute("points")
    assert line is not None and len(line.split()) >= 24
    # Nothing the data holds became markup.
    assert await page.locator("main img, main b").count() == 0
    ARTIFACT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACT), full_page=True)
    assert ARTIFACT.stat().st_size > 0

    await page.locator("#transaction-type").select_option("usage")
    await expect(txns).to_have_count(6)
    await expect(txns.first).to_contain_text("-10")
    async with page.expect_download() as info:
        await page.locator("#transactions-csv").click()
    download = await info.value
    assert download.suggested_filename == "acme-transactions.csv"
    csv_lines = (await asyncio.to_thread(Path(await download.path()).read_text)).splitlines()
    assert csv_lines[0].startswith("id,seq,type,amount") and len(csv_lines) == 1 + 6

    # Packages and dead letters.
    await page.get_by_role("link", name="Packages").click()
    package = page.locator("#packages-table tbody tr")
    await expect(package).to_have_count(1)
    await expect(package).to_contain_text("Starter")
    await expect(package).to_contain_text("$5.00")
    await page.get_by_role("link", name="Dead letters").click()
    dead = page.locator("#outbox-dead-table tbody tr")
    await expect(dead).to_have_count(1)
    await expect(dead).to_contain_text("ghost")
    await expect(page.locator("#outbox-stats")).to_contain_text("Dead letters1")
    billing = page.locator("#billing-dead-table tbody tr")
    await expect(billing).to_have_count(1)
    await expect(billing).to_contain_text("evt_dead")
    await expect(billing).to_contain_text("no package for price price_gone")

    # The audit trail needs the admin scope: the read token is told so and stays signed in;
    # the admin token sees the seed's admin changes, newest first, the package last made, the
    # details opening on before / after.
    await page.get_by_role("link", name="Audit").click()
    await expect(page.locator("#audit-forbidden")).to_contain_text("admin scope")
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == served.read_token
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, ADMIN)
    await page.get_by_role("link", name="Audit").click()
    changes = page.locator("#audit-table tbody tr")
    await expect(changes.first).to_contain_text("package.put")
    await expect(page.locator("#audit-table")).to_contain_text("grant.create")
    await expect(page.locator("#audit-table")).to_contain_text("SIDECAR_ADMIN_TOKEN")
    await changes.first.get_by_text("before / after").click()
    await expect(changes.first).to_contain_text('"credits":1000')

    # Signing out forgets the token.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#login")).to_be_visible()
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
