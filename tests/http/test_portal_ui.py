"""The customer portal in a browser (the system's Chromium, driven by Playwright) against the
real app on a real port, its SQL writer and billing worker running, Stripe played by the fake
(tests/billing/fakestripe) and webhooks signed as Stripe signs them.

The story, on a desktop and on a phone-sized screen: the business creates a portal session
with the API -> the customer opens its URL -> sees the balance and the expiry of each bucket
-> buys a package (double-clicked: one Checkout Session) in a new window -> is back from
Checkout: "payment received, your credits are on their way" until the signed webhook is
processed, then the new balance -> creates an API key (copied with the Copy button) -> the key
is accepted -> splits the usage by API key (the key's name) and by route -> revokes the key
(Escape cancels the confirmation first) -> it is refused -> signs out. The same story by
keyboard alone (Tab, Enter, arrow keys, Escape). The branding (accent colour, logo
from its own origin) under the page's CSP. The forms: errors next to their field, a key's
spending limit in a dialog, the account's limit and alert, auto top-up with a card saved
through Checkout in setup mode, transactions paged, filtered and downloaded as CSV, a session
revoked by the business. Data that looks like HTML (a bucket's metadata, a key's name) stays
text; axe-core (from npm) finds no serious or critical accessibility violation. Screenshots go
to .artifacts/portal-*.png (portal.png is docs/img/portal.png).

One browser, one app and one fake Stripe for the module (the suite has a time budget)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)
from pydantic import SecretStr

from sidecar.http.app import create_app
from sidecar.redis.client import connect
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.billing.conftest import PRICE, SECRET
from tests.billing.fakestripe import FakeStripe, sign_webhook
from tests.conftest import ADMIN, SERVICE, admin, premigrated, service
from tests.http.test_console import chromium
from tests.ports import free_port

# sql_bystander: its subject is the pages in a browser (what they show, the forms, the keyboard,
# the audit); the portal API they call runs on both SQL backends in its own tests
pytestmark = [
    pytest.mark.browser,
    pytest.mark.sql_bystander,
    pytest.mark.asyncio(loop_scope="module"),
]

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
HTML_LIKE = "<img src=x onerror=alert(1)>"
RETURN_URL = "https://app.test/dashboard"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 375, "height": 667}
LOGO_URL = "https://cdn.acme.test/logo.svg"
LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32" viewBox="0 0 32 32">'
    '<circle cx="16" cy="16" r="14" fill="#fff"/><path d="M9 22 16 8l7 14z" fill="#0f766e"/></svg>'
)
ACCENT = "#0f766e"
# axe-core, installed from npm once per machine (not a dependency of the project).
AXE_DIR = Path.home() / ".cache" / "credit-sidecar" / "axe-core"


@dataclass
class Portal:
    base: str
    fake: FakeStripe
    http: aiohttp.ClientSession
    browser: Browser
    settings: Settings

    async def call(self, method: str, path: str, body: Any = None, auth: Any = None) -> Any:
        async with self.http.request(method, path, json=body, headers=auth or admin()) as r:
            assert r.status < 300, (method, path, r.status, await r.text())
            return await r.json()

    async def customer(self, account: str, checks: int = 3, note: str = HTML_LIKE) -> str:
        """An account with 1,000 purchased and 100 promo credits (expiring, ``note`` in its
        metadata: HTML unless told), ``checks`` requests of 10 credits made; the URL of a new
        portal session for it."""
        await self.call("PUT", f"/v1/accounts/{account}", {})
        grants = [
            {"grant_id": "order-1", "credits": 1000, "source": "purchase"},
            {
                "grant_id": "welcome",
                "credits": 100,
                "source": "promo",
                "priority": -1,
                "expires_at": "2031-03-01T12:00:00Z",
                "metadata": {"note": note},
            },
        ]
        for g in grants:
            await self.call("POST", f"/v1/accounts/{account}/grants", g)
        for i in range(checks):  # usage for the chart, the promo credits first
            check = {"account": account, "cost": 10, "idempotency_key": f"use-{i}"}
            await self.call("POST", "/v1/check", check, service())
        # in SQL (the writer runs on the app's loop), where the portal lists transactions from
        path = f"/v1/accounts/{account}/transactions"
        for _ in range(200):
            async with self.http.get(path, headers=admin()) as r:  # 404 until written
                if r.status == 200 and len((await r.json())["transactions"]) == 2 + checks:
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{account}'s transactions never reached SQL")
        session = await self.call(
            "POST",
            f"/v1/accounts/{account}/portal-sessions",
            {"return_url": RETURN_URL, "locale": "en-GB"},
        )
        assert session["url"].startswith(f"{self.base}/portal/s/")
        return str(session["url"])

    async def pay(self, session_id: str) -> None:
        """The customer pays on Stripe's page; Stripe's webhook arrives, signed."""
        self.fake.events.clear()
        self.fake.complete_session(session_id)
        for e in [e for e in self.fake.events if e["type"] == "checkout.session.completed"]:
            body = orjson.dumps(e | {"created": int(time.time())})
            headers = {"Stripe-Signature": sign_webhook(body, SECRET)}
            async with self.http.post("/webhooks/stripe", data=body, headers=headers) as r:
                assert r.status == 200, await r.text()

    async def usage_of(self, account: str, by: str, key: str) -> dict[str, int]:
        """The account's usage in the last day by ``by`` for one group, once SQL has it (the
        writer's lag): its credits and checks."""
        path = f"/v1/accounts/{account}/usage?interval=day&by={by}"
        for _ in range(200):
            usage = await self.call("GET", path)
            found = [g for p in usage["points"] for g in p["groups"] if g["key"] == key]
            if found:
                return {n: sum(g[n] for g in found) for n in ("credits", "checks")}
            await asyncio.sleep(0.05)
        raise AssertionError(f"no usage by {by} {key} for {account} in SQL: {usage}")

    async def key_status(self, key: str) -> int:
        """What the gate answers a request with this API key (a proxy's ForwardAuth)."""
        headers = {"Authorization": f"Bearer {key}", "X-Forwarded-Uri": "/v1/things"}
        async with self.http.get("/auth/forward", headers=headers) as r:
            return r.status

    async def context(self, viewport: ViewportSize, **more: Any) -> BrowserContext:
        ctx = await self.browser.new_context(viewport=viewport, **more)
        await ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.base)

        # Stripe's hosted Checkout page (the fake's URL): a stand-in the new window opens.
        async def stripe_page(route: Any) -> None:
            await route.fulfill(
                status=200,
                content_type="text/html",
                body="<!doctype html><title>Checkout</title><h1>Stripe Checkout (fake)</h1>",
            )

        await ctx.route("https://checkout.stripe.test/**", stripe_page)

        # The logo (SIDECAR_PORTAL_LOGO_URL), from its own origin: the CSP lets it in.
        async def logo(route: Any) -> None:
            await route.fulfill(status=200, content_type="image/svg+xml", body=LOGO)

        await ctx.route(LOGO_URL, logo)
        return ctx


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def portal(
    redis_server: RedisServer, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Portal]:
    data_dir = premigrated(sqlite_template, tmp_path_factory.mktemp("portal-ui"))
    # a named route, for the usage split by route (a key's requests go to /v1/things)
    pricing = tmp_path_factory.mktemp("portal-pricing") / "pricing.toml"
    pricing.write_text('[[route]]\nname = "things"\npath = "/v1/things"\ncost = 1\n')
    redis = connect(redis_server.url)
    await redis.flushall()
    await redis.aclose()
    async with FakeStripe() as fake, async_playwright() as pw:
        fake.add_price(PRICE, 500)
        fake.add_price("price_pro", 2000)
        settings = Settings(
            redis_url=redis_server.url,
            admin_token=SecretStr(ADMIN),
            service_token=SecretStr(SERVICE),
            data_dir=data_dir,
            writer="inline",  # the transactions the portal lists are SQL's
            stripe_api_key=SecretStr(fake.api_key),
            stripe_api_base=fake.url,
            stripe_webhook_secrets=SecretStr(SECRET),
            portal_product_name="Acme API",
            portal_logo_url=LOGO_URL,
            portal_accent_color=ACCENT,
            portal_support_url="https://acme.test/help",
            pricing_file=pricing,
        )
        server = TestServer(create_app(settings), host="127.0.0.1", port=free_port())
        await server.start_server()
        browser = await pw.chromium.launch(executable_path=chromium())
        base = f"http://127.0.0.1:{server.port}"
        try:
            async with aiohttp.ClientSession(base) as http:
                p = Portal(base, fake, http, browser, settings)
                for package, name, credits, price, price_id in (
                    ("starter", "Starter", 1000, 500, PRICE),
                    ("pro", "Pro", 5000, 2000, "price_pro"),
                ):
                    body = {"name": name, "credits": credits, "price": price}
                    body["stripe_price_id"] = price_id
                    await p.call("PUT", f"/v1/admin/packages/{package}", body)
                yield p
        finally:
            await browser.close()
            await server.close()


def watch(page: Page) -> list[str]:
    """Script errors, CSP violations and dialogs (an injected script would open one)."""
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    return problems


async def portal_session(page: Page) -> Any:
    """GET /v1/portal/session as the page would (its cookie)."""
    return await page.evaluate(
        "fetch('../v1/portal/session', {credentials: 'same-origin'}).then((r) => r.json())"
    )


# -- the story -------------------------------------------------------------------------------


@dataclass
class Driver:
    """How the customer acts: with the mouse (click) or the keyboard alone (Tab to, Enter)."""

    page: Page
    keyboard: bool

    async def press(self, target: Any) -> None:
        if self.keyboard:
            await tab_to(self.page, target)
            await self.page.keyboard.press("Enter")
        else:
            await target.click()

    async def fill(self, target: Any, text: str) -> None:
        if self.keyboard:
            await tab_to(self.page, target)
            await self.page.keyboard.type(text)
        else:
            await target.fill(text)

    async def choose(self, select: Any, value: str) -> None:
        """Picks an option of a <select>: by keyboard, Tab to it and arrow keys (Chromium
        changes a closed select's value with them, a change event each)."""
        if not self.keyboard:
            await select.select_option(value)
            return
        await tab_to(self.page, select)
        values = await select.evaluate("(el) => [...el.options].map((o) => o.value)")
        now = values.index(await select.input_value())
        step = "ArrowDown" if values.index(value) > now else "ArrowUp"
        for _ in range(abs(values.index(value) - now)):
            await self.page.keyboard.press(step)
        await expect(select).to_have_value(value)

    async def double_press(self, target: Any) -> None:
        if self.keyboard:
            await tab_to(self.page, target)
            await self.page.keyboard.press("Enter")
            await self.page.keyboard.press("Enter")
        else:
            await target.dblclick()


async def tab_to(page: Page, target: Any, limit: int = 120) -> None:
    """Presses Tab until ``target`` has the focus (the keyboard's way there)."""
    handle = await target.element_handle()
    for _ in range(limit):
        if await page.evaluate("(el) => document.activeElement === el", handle):
            # what has the focus is visibly marked (:focus-visible)
            assert await page.evaluate("(el) => el.matches(':focus-visible')", handle)
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {target}")


async def story(
    portal: Portal, ctx: BrowserContext, account: str, *, keyboard: bool, note: str = HTML_LIKE
) -> Page:
    url = await portal.customer(account, note=note)
    page = await ctx.new_page()
    problems = watch(page)
    exchanges = overheard(ctx)
    do = Driver(page, keyboard)

    # The link opens the session (once) and lands on the portal: the balance, en-GB.
    await page.goto(url)
    assert page.url == f"{portal.base}/portal/"
    await expect(page.locator("#balance-amount")).to_have_text("1,070 credits")
    assert await page.evaluate("document.documentElement.lang") == "en-GB"
    await expect(page.locator("#product")).to_have_text("Acme API")
    await expect(page.locator("#account-name")).to_have_text(f"Account {account}")
    # The branding: the accent colour (set by the script, as the CSP allows) and the logo.
    header = await page.evaluate("getComputedStyle(document.querySelector('.top')).backgroundColor")
    assert header == "rgb(15, 118, 110)", header
    await expect(page.locator("#logo")).to_be_visible()
    assert await page.evaluate("document.getElementById('logo').naturalWidth") == 32
    await expect(page.locator("#buckets")).to_contain_text(
        "70 promo credits expire on 1 March 2031"
    )
    await expect(page.locator("#buckets")).to_contain_text(note)  # as text
    await expect(page.locator("#back")).to_have_attribute("href", RETURN_URL)
    await expect(page.locator("#usage-total")).to_have_text(
        "30 credits used in 3 requests (times in UTC)"
    )
    await expect(page.locator("#transactions-table tbody tr")).to_have_count(5)

    # Buy Starter, pressed twice: one Checkout Session, opened in a new window.
    sessions_before = len(portal.fake.sessions)
    buy = page.locator("#packages button[data-package=starter]")
    async with page.expect_popup() as opened:
        await do.double_press(buy)
    checkout = await opened.value
    await expect(checkout.locator("h1")).to_have_text("Stripe Checkout (fake)")
    await expect(page.locator("#buy-status")).to_contain_text("Complete your payment")
    assert len(portal.fake.sessions) == sessions_before + 1
    session_id = list(portal.fake.sessions)[-1]
    success_url = portal.fake.sessions[session_id]["success_url"]
    assert success_url == f"{portal.base}/portal/?purchase={{CHECKOUT_SESSION_ID}}"

    # Paid: Stripe sends the window back to the portal before its webhook has arrived.
    await checkout.goto(success_url.replace("{CHECKOUT_SESSION_ID}", session_id))
    await expect(checkout.locator("#notices")).to_contain_text(
        "Payment received, your credits are on their way."
    )
    await portal.pay(session_id)
    await expect(checkout.locator("#notices")).to_contain_text(
        "Your 1,000 credits have arrived.", timeout=15_000
    )
    await expect(checkout.locator("#balance-amount")).to_have_text("2,070 credits")
    assert "purchase=" not in checkout.url
    # Now a Stripe customer: "Billing details" opens Stripe's own portal in a new window.
    await expect(checkout.locator("#section-billing")).to_be_visible()
    async with checkout.expect_popup() as opened:
        await Driver(checkout, keyboard).press(checkout.locator("#billing-portal"))
    stripe_portal = await opened.value
    await expect(stripe_portal.locator("h1")).to_have_text("Stripe customer portal (fake)")
    await expect(stripe_portal.locator("#return")).to_have_attribute(
        "href", f"{portal.base}/portal/"
    )
    await stripe_portal.close()
    await checkout.close()
    # The window that started it follows too.
    await expect(page.locator("#balance-amount")).to_have_text("2,070 credits", timeout=15_000)

    # A key, named with HTML: its secret shown once, copied with the button.
    name = f"ci {HTML_LIKE}"
    await do.fill(page.locator("#new-key-name"), name)
    if keyboard:
        await do.press(page.locator("#create-key"))
    else:  # pressed twice: one key
        await do.double_press(page.locator("#create-key"))
    secret = page.locator("#new-key-secret")
    await expect(page.locator("#new-key")).to_be_visible()
    key = (await secret.text_content()) or ""
    assert key.startswith("csk_"), key
    await do.press(page.locator("#copy-key"))
    await expect(page.locator("#copy-status")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == key
    row = page.locator("#keys-table tbody tr", has_text=name)
    await expect(row).to_have_count(1)
    keys = await portal.call("GET", f"/v1/accounts/{account}/keys")
    assert [k["name"] for k in keys["keys"]] == [name]
    await expect(row).to_contain_text("active")
    assert await portal.key_status(key) == 200

    # Usage split by API key: the key's name (HTML-like: as text) with its id, beside the
    # checks made without a key; then by route. Totals of the period, under the chart.
    key_id = keys["keys"][0]["key_id"]
    used = await portal.usage_of(account, "key", key_id)
    await portal.usage_of(account, "route", "things")
    await do.choose(page.locator("#usage-by"), "key")
    split = page.locator("#usage-split tbody tr")
    await expect(split).to_have_count(2)
    await expect(page.locator("#usage-split-title")).to_have_text("Usage by API key")
    await expect(split.nth(0)).to_have_text("Without a key3097%3")
    await expect(split.nth(1)).to_have_text(f"{name} {key_id}{used['credits']}3%{used['checks']}")
    await do.choose(page.locator("#usage-by"), "route")
    await expect(page.locator("#usage-split-title")).to_have_text("Usage by route")
    await expect(split).to_have_count(2)
    await expect(split.nth(0)).to_have_text("Without a route3097%3")
    await expect(split.nth(1)).to_have_text(f"things{used['credits']}3%{used['checks']}")
    await expect(page.locator("#usage-total")).to_have_text(
        "31 credits used in 4 requests (times in UTC)"
    )

    # Revoke: Escape cancels the confirmation, then it is confirmed.
    revoke = row.get_by_role("button", name=f"Revoke {name}")
    dialog = page.locator("#revoke-dialog")
    await do.press(revoke)
    await expect(dialog).to_be_visible()
    await expect(page.locator("#revoke-cancel")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(revoke).to_be_focused()  # back where the customer was
    assert await portal.key_status(key) == 200
    await do.press(revoke)
    await expect(dialog).to_be_visible()
    await do.press(page.locator("#revoke-confirm"))
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#keys-status")).to_contain_text("revoked")
    await expect(row).to_contain_text("revoked")
    assert await portal.key_status(key) == 401

    # Nothing the data holds became markup.
    assert await page.locator("main img, main b").count() == 0
    assert problems == []
    # The sidecar's own tokens never reached the browser: not in what it was sent, not in what
    # it sent (the session is a cookie; no Authorization header is ever made by the page).
    heard = await asyncio.gather(*exchanges)
    assert len(heard) > 20
    assert any(b'"csrf_token"' in received for _, _, received in heard)  # bodies were read
    for url, sent, received in heard:
        if url.startswith(portal.base):
            assert "authorization" not in sent, url
            for token in (ADMIN, SERVICE):
                assert token.encode() not in received, url
    return page


def overheard(ctx: BrowserContext) -> list[asyncio.Task[tuple[str, dict[str, str], bytes]]]:
    """Every exchange of the context's pages, read as it comes (a popup may be closed by the
    end): its URL, the request's headers, and the response's headers and body."""
    seen: list[asyncio.Task[tuple[str, dict[str, str], bytes]]] = []

    async def read(r: Any) -> tuple[str, dict[str, str], bytes]:
        sent: dict[str, str] = {}
        body = b""
        with contextlib.suppress(Exception):  # a redirect or a closed page keeps no body
            sent = await r.request.all_headers()
            body = str(await r.all_headers()).encode() + await r.body()
        return r.url, sent, body

    ctx.on("response", lambda r: seen.append(asyncio.ensure_future(read(r))))
    return seen


async def test_the_story_on_a_desktop(portal: Portal) -> None:
    ctx = await portal.context(DESKTOP)
    try:
        # (a plain note: this one's screenshot is the docs')
        page = await story(portal, ctx, "acme-desktop", keyboard=False, note="Welcome offer")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "portal-desktop.png"), full_page=True)
        # what docs/img/portal.png is copied from: the top of the page
        await page.evaluate("window.scrollTo(0, 0)")
        await page.screenshot(path=str(ARTIFACTS / "portal.png"))

        # Signing out ends the session; the page then says so, with the way back.
        await page.locator("#sign-out").click()
        await expect(page.locator("#ended-title")).to_have_text("You have signed out")
        await page.reload()
        await expect(page.locator("#ended-title")).to_have_text("Your session has ended")
        await expect(page.locator("#ended-back")).to_have_attribute("href", RETURN_URL)
        await expect(page.locator("#ended-back")).to_have_text("Back to Acme API")
    finally:
        await ctx.close()


async def test_the_story_on_a_phone(portal: Portal) -> None:
    ctx = await portal.context(PHONE, is_mobile=True, has_touch=True)
    try:
        page = await story(portal, ctx, "acme-phone", keyboard=False)
        # Nothing wider than the screen: no sideways scrolling.
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], width
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "portal-phone.png"), full_page=True)
    finally:
        await ctx.close()


async def test_the_story_by_keyboard_alone(portal: Portal) -> None:
    ctx = await portal.context(DESKTOP)
    try:
        await story(portal, ctx, "acme-keyboard", keyboard=True)
    finally:
        await ctx.close()


async def test_the_forms_and_their_errors(portal: Portal) -> None:
    ctx = await portal.context(DESKTOP)
    try:
        page = await ctx.new_page()
        await page.goto(await portal.customer("acme-forms", checks=28))

        # Transactions: 30, 25 a page; by type; as CSV (the link downloads it, cookie and all).
        rows = page.locator("#transactions-table tbody tr")
        await expect(rows).to_have_count(25)
        await page.locator("#transactions-older").click()
        await expect(rows).to_have_count(5)
        await page.locator("#transactions-newer").click()
        await expect(rows).to_have_count(25)
        await page.locator("#transaction-type").select_option("grant")
        await expect(rows).to_have_count(1)
        await expect(rows).to_contain_text("+100")
        async with page.expect_download() as info:
            await page.locator("#transactions-csv").click()
        download = await info.value
        assert download.suggested_filename == "acme-forms-transactions.csv"  # the API names it
        text = await asyncio.to_thread(Path(await download.path()).read_text)
        assert text.splitlines()[0].startswith("id,seq,type,amount") and len(text.splitlines()) == 2

        await page.locator("#create-key").click()
        name = page.locator("#new-key-name")
        await expect(page.locator("#new-key-name-error")).to_have_text("Enter a name for the key.")
        await expect(name).to_have_attribute("aria-invalid", "true")
        await expect(name).to_have_attribute("aria-describedby", "new-key-name-error")
        await expect(name).to_be_focused()
        # The API's own refusal, next to the field it names.
        await name.fill("x" * 129)
        await page.locator("#create-key").click()
        await expect(page.locator("#new-key-name-error")).to_contain_text("128")
        await name.fill("ok")
        await page.locator("#new-key-credits").fill("lots")
        await page.locator("#create-key").click()
        await expect(page.locator("#new-key-credits-error")).to_have_text("Enter a whole number.")
        await expect(page.locator("#new-key-name")).not_to_have_attribute("aria-invalid", "true")

        # The network loses the answer to the first try (the key was made): the retry of the
        # same intent carries the same idempotency key (and the session's CSRF token), so no
        # second key is made, and the page says the secret was shown once.
        sent: list[tuple[dict[str, str], Any]] = []
        dropped: list[str] = []

        async def flaky(route: Any) -> None:
            request = route.request
            if request.method == "POST":
                sent.append((await request.all_headers(), request.post_data_json))
                if not dropped:
                    dropped.append(request.url)
                    await route.fetch()  # it reaches the sidecar; its answer is lost
                    await route.abort("connectionreset")
                    return
            await route.continue_()

        await page.route("**/v1/portal/keys", flaky)
        await page.locator("#new-key-credits").fill("")
        await page.locator("#create-key").click()
        await expect(page.locator("#key-form .form-error")).to_contain_text("did not answer")
        await page.locator("#create-key").click()
        await expect(page.locator("#new-key-text")).to_contain_text(
            "was already created; its secret was shown only once"
        )
        await expect(page.locator("#copy-key")).to_be_hidden()
        await page.unroute("**/v1/portal/keys")
        csrf = (await portal_session(page))["csrf_token"]
        assert [h["x-csrf-token"] for h, _ in sent] == [csrf, csrf]
        first, second = (body["idempotency_key"] for _, body in sent)
        assert first == second and len(first) >= 32
        keys = await portal.call("GET", "/v1/accounts/acme-forms/keys")
        assert [k["name"] for k in keys["keys"]] == ["ok"]

        # A key's own spending limit, in a dialog: refused empty, then set.
        row = page.locator("#keys-table tbody tr", has_text="ok")
        await expect(row).to_contain_text("no limit")
        await row.get_by_role("button", name="Set the spending limit of ok").click()
        dialog = page.locator("#key-limit-dialog")
        await expect(dialog).to_be_visible()
        await page.locator("#key-limit-credits").fill("")
        await page.locator("#key-limit-save").click()
        await expect(page.locator("#key-limit-credits-error")).to_have_text(
            "Enter a limit, or remove it."
        )
        await page.locator("#key-limit-credits").fill("50")
        await page.locator("#key-limit-interval").select_option("day")
        await page.locator("#key-limit-save").click()
        await expect(dialog).to_be_hidden()
        await expect(row).to_contain_text("0 of 50 credits per day spent this period")
        keys = await portal.call("GET", "/v1/accounts/acme-forms/keys")
        assert keys["keys"][0]["spend_limit"]["credits"] == 50

        # Back from a Checkout that is not this account's: said so, no waiting.
        await page.goto(f"{portal.base}/portal/?purchase=cs_test_someone_elses")
        await expect(page.locator("#notices")).to_have_text(
            "This purchase was not found for your account."
        )

        # The account's own spending limit: set, shown with what was spent, removed.
        current = page.locator("#spend-limit-current")
        await expect(current).to_have_text(
            "No spending limit: requests are limited only by your balance."
        )
        await page.locator("#spend-limit-credits").fill("500")
        await page.locator("#spend-limit-interval").select_option("week")
        await page.locator("#spend-limit-save").click()
        await expect(current).to_contain_text("Spending limit: 0 of 500 credits per week spent")
        await expect(page.locator("#balance-spend")).to_contain_text("500 credits per week")
        balance = await portal.call("GET", "/v1/accounts/acme-forms/balance")
        assert balance["spend"]["spend_limit"]["credits"] == 500
        await page.locator("#spend-limit-remove").click()
        await expect(current).to_contain_text("No spending limit")
        # The low-balance alert: refused below zero by the page, then set.
        alert = page.locator("#alert-threshold")
        await alert.fill("-5")
        await page.locator("#alert-save").click()
        await expect(page.locator("#alert-threshold-error")).to_have_text(
            "Enter a whole number, 0 or more."
        )
        await alert.fill("100")
        await page.locator("#alert-save").click()
        await expect(page.locator("#alert-current")).to_have_text("Alert below 100 credits.")
        balance = await portal.call("GET", "/v1/accounts/acme-forms/balance")
        assert balance["low_balance_threshold"] == 100

        # Auto top-up: a card saved through Checkout in setup mode (a new window), then on.
        status = page.locator("#auto-topup-status")
        await expect(status).to_have_text("Off.")
        await expect(page.locator("#auto-topup-card")).to_be_hidden()  # no card to pick yet
        async with page.expect_popup() as opened:
            await page.locator("#save-card").click()
        setup = await opened.value
        await setup.wait_for_url("https://checkout.stripe.test/**")
        session_id = list(portal.fake.sessions)[-1]
        assert portal.fake.sessions[session_id]["mode"] == "setup"
        portal.fake.complete_session(session_id)
        await setup.goto(portal.fake.sessions[session_id]["success_url"])
        await expect(setup.locator("#notices")).to_have_text("Your card is saved.")
        await expect(setup.locator("#card-status")).to_have_text(
            "One card is saved for automatic top-ups."
        )
        await setup.locator("#auto-topup-enabled").check()
        await setup.locator("#auto-topup-package").select_option("starter")
        await setup.locator("#auto-topup-threshold").fill("200")
        await setup.locator("#auto-topup-save").click()
        await expect(setup.locator("#auto-topup-status")).to_have_text(
            "On: buys Starter when the balance falls below 200 credits."
        )
        topup = await portal.call("GET", "/v1/admin/accounts/acme-forms/auto-topup")
        assert (topup["enabled"], topup["package_id"], topup["threshold"]) == (True, "starter", 200)
        await setup.locator("#auto-topup-enabled").uncheck()
        await setup.locator("#auto-topup-save").click()
        await expect(setup.locator("#auto-topup-status")).to_have_text("Off.")

        # The business signs the customer out: the next change says the session has ended.
        await portal.call("DELETE", "/v1/accounts/acme-forms/portal-sessions")
        await page.locator("#alert-save").click()
        await expect(page.locator("#ended-title")).to_have_text("Your session has ended")
        await expect(page.locator("#ended-title")).to_be_focused()
        await expect(page.locator("#ended-back")).to_have_attribute("href", RETURN_URL)
        await expect(page.locator("#sections")).to_be_empty()
    finally:
        await ctx.close()


# -- accessibility -----------------------------------------------------------------------------


def axe_script() -> Path:
    """axe-core's script, installed from npm into a cache dir the first time."""
    script = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
    if script.exists():
        return script
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the accessibility audit needs axe-core from npm")
    AXE_DIR.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(AXE_DIR), "axe-core@4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and script.exists(), done.stderr
    return script


async def audit(page: Page, script: Path) -> list[dict[str, Any]]:
    await page.add_script_tag(path=str(script))
    result: dict[str, Any] = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [v for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def test_accessibility_audit(portal: Portal) -> None:
    script = await asyncio.to_thread(axe_script)
    # Only this context lets the test inject axe-core past the page's CSP.
    for viewport in (DESKTOP, PHONE):
        ctx = await portal.context(viewport, bypass_csp=True)
        try:
            page = await ctx.new_page()
            account = f"acme-a11y-{viewport['width']}"
            url = await portal.customer(account)
            # on a plan: its name and next renewal under the balance
            plan = {"name": "Pro", "allowance": {"credits": 500, "interval": "month"}}
            await portal.call("PUT", "/v1/plans/pro", plan)
            await portal.call("PATCH", f"/v1/accounts/{account}", {"plan": "pro"})
            await page.goto(url)
            await expect(page.locator("#plan")).to_contain_text("Plan pro, renews on ")
            await expect(page.locator("#keys-table, #keys-list .empty")).to_be_visible()
            await expect(page.locator("#usage-chart")).to_be_visible()
            await page.locator("#usage-by").select_option("key")  # with the split's table
            await expect(page.locator("#usage-split")).to_be_visible()
            await expect(page.locator("#transactions-table")).to_be_visible()
            found = await audit(page, script)
            assert found == [], json.dumps(
                [(v["id"], v["help"], [n["target"] for n in v["nodes"]]) for v in found], indent=1
            )
            # and with a form's error and the confirmation dialog open
            await page.locator("#create-key").click()
            await page.locator("#new-key-name").fill("a11y")
            await page.locator("#create-key").click()
            await page.get_by_role("button", name="Revoke a11y").click()
            found = await audit(page, script)
            assert found == [], json.dumps(
                [(v["id"], v["help"], [n["target"] for n in v["nodes"]]) for v in found], indent=1
            )
        finally:
            await ctx.close()


# -- embedded ----------------------------------------------------------------------------------


async def test_embedded_in_the_apps_iframe(portal: Portal) -> None:
    """With SIDECAR_PORTAL_FRAME_ANCESTORS set, the business's page (another site:
    http://127.0.0.1:<port>) frames the portal (http://localhost:<port>): the session cookie
    (SameSite=None, Partitioned) works inside the cross-site frame, and Checkout, which cannot
    be framed, opens in a new top-level window."""
    embedder = web.Application()
    port = free_port()
    frame_src: list[str] = []

    async def app_page(request: web.Request) -> web.Response:
        body = (
            '<!doctype html><html lang="en"><title>Acme app</title><h1>Acme app</h1>'
            f'<iframe title="Billing" src="{frame_src[0]}" width="1000" height="700"></iframe>'
        )
        return web.Response(text=body, content_type="text/html")

    embedder.router.add_get("/", app_page)
    app_server = TestServer(embedder, host="127.0.0.1", port=port)
    settings = portal.settings.model_copy(
        update={
            "portal_frame_ancestors": f"http://127.0.0.1:{port}",
            "writer": "off",  # the module's app writes SQL; this one shares its ledger
            "billing_worker": "off",
        }
    )
    framed = TestServer(create_app(settings), host="127.0.0.1", port=free_port())
    await app_server.start_server()
    await framed.start_server()
    ctx = await portal.context(DESKTOP)
    try:
        url = await portal.customer("acme-embedded")  # on the module's app, then opened on:
        async with aiohttp.ClientSession(f"http://localhost:{framed.port}") as http:
            r = await http.post(
                "/v1/accounts/acme-embedded/portal-sessions",
                json={"return_url": RETURN_URL},
                headers=admin(),
            )
            assert r.status == 201, await r.text()
            frame_src.append((await r.json())["url"])
        assert url.startswith(portal.base) and frame_src[0].startswith("http://localhost:")
        page = await ctx.new_page()
        problems = watch(page)
        await page.goto(f"http://127.0.0.1:{port}/")
        frame = page.frame_locator("iframe")
        await expect(frame.locator("#balance-amount")).to_have_text("1,070 credits")
        # the way back leaves the frame
        await expect(frame.locator("#back")).to_have_attribute("target", "_top")
        cookies = await ctx.cookies(f"http://localhost:{framed.port}")
        assert [(c["sameSite"], c["secure"], c["httpOnly"]) for c in cookies] == [
            ("None", True, True)
        ]
        assert cookies[0].get("partitionKey") == "http://127.0.0.1"  # this embedding's only
        async with ctx.expect_page() as opened:
            await frame.locator("#packages button[data-package=starter]").click()
        checkout = await opened.value
        await checkout.wait_for_url("https://checkout.stripe.test/**")
        assert checkout.main_frame.parent_frame is None  # a window of its own, not the frame
        await expect(frame.locator("#buy-status")).to_contain_text("Complete your payment")
        assert problems == []
    finally:
        await ctx.close()
        await framed.close()
        await app_server.close()
