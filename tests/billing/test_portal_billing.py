"""The portal's Stripe half (docs/portal.md), against the fake Stripe with signed webhooks:
a customer buys through Checkout from their portal session (a double click is one session),
the purchase reads pending until the webhook grants it, then granted with its credits; another
account's session cannot see it; Stripe's customer portal opens for an account with a Stripe
customer only; sections and features follow what the deployment has."""

from __future__ import annotations

import asyncio
from typing import Any

from yarl import URL

from tests.billing.conftest import Rig
from tests.conftest import admin


async def open_portal(rig: Rig, account: str) -> dict[str, str]:
    """Opens a portal session for ``account`` in the rig's client; its CSRF header."""
    c = rig.client
    r = await c.post(f"/v1/accounts/{account}/portal-sessions", json={}, headers=admin())
    assert r.status == 201, await r.text()
    link = URL((await r.json())["url"]).path
    c.session.cookie_jar.clear()
    r = await c.get(link, allow_redirects=False)
    assert r.status == 303
    view = await (await c.get("/v1/portal/session")).json()
    return {"X-CSRF-Token": view["csrf_token"]}


async def test_a_purchase_from_the_portal_is_pending_until_the_webhook_grants_it(
    rig: Rig,
) -> None:
    await rig.account("acme")
    await rig.package()
    c = rig.client
    h = await open_portal(rig, "acme")
    view = await (await c.get("/v1/portal/session")).json()
    assert "buy" in view["sections"] and view["features"]["billing"] is True
    assert "billing" not in view["sections"]  # no Stripe customer yet
    packages = await (await c.get("/v1/portal/packages")).json()
    assert [p["id"] for p in packages["packages"]] == ["starter"]

    body = {"package_id": "starter", "idempotency_key": "click-1"}
    answers = await asyncio.gather(
        *(c.post("/v1/portal/checkout", json=body, headers=h) for _ in range(3))
    )
    assert {r.status for r in answers} == {201}
    sessions = {(await r.json())["id"] for r in answers}
    assert len(sessions) == 1  # a double (triple) click is one Checkout Session
    sid = sessions.pop()
    success = str(rig.fake.sessions[sid]["success_url"])
    assert success.endswith("/portal/?purchase={CHECKOUT_SESSION_ID}")  # Stripe fills it in

    status = await (await c.get(f"/v1/portal/purchases/{sid}")).json()
    assert status == {"session_id": sid, "status": "pending", "credits": None}

    paid = rig.fake.complete_session(sid, "paid")
    r = await rig.webhook("checkout.session.completed", paid)
    assert r.status == 200
    await rig.settle()
    status = await (await c.get(f"/v1/portal/purchases/{sid}")).json()
    assert status["status"] == "granted" and status["credits"] == 1000
    bal = await (await c.get("/v1/portal/balance")).json()
    assert bal["balance"] == 1000

    # now the account has a Stripe customer: billing details open Stripe's own portal
    view = await (await c.get("/v1/portal/session")).json()
    assert "billing" in view["sections"] and view["features"]["billing_portal"] is True
    r = await c.post("/v1/portal/billing-portal", headers=h)
    assert r.status == 201, await r.text()
    link: Any = (await r.json())["url"]
    assert link.startswith(rig.fake.url)

    # another account's session cannot read this purchase
    await rig.account("beta")
    await open_portal(rig, "beta")
    other = await (await c.get(f"/v1/portal/purchases/{sid}")).json()
    assert other["status"] == "unknown" and other["credits"] is None


async def test_billing_details_need_a_stripe_customer(rig: Rig) -> None:
    await rig.account("acme")
    h = await open_portal(rig, "acme")
    r = await rig.client.post("/v1/portal/billing-portal", headers=h)
    assert r.status == 409 and (await r.json())["error"]["code"] == "no_billing_customer"
    r = await rig.client.post("/v1/portal/billing-portal")  # no CSRF token
    assert r.status == 403


async def test_saving_a_card_from_the_portal_is_a_setup_checkout_back_to_the_portal(
    rig: Rig,
) -> None:
    await rig.account("acme")
    await rig.package()
    h = await open_portal(rig, "acme")
    body = {"idempotency_key": "card-1"}
    r = await rig.client.post("/v1/portal/payment-method", json=body, headers=h)
    assert r.status == 201, await r.text()
    again = await rig.client.post("/v1/portal/payment-method", json=body, headers=h)
    assert (await again.json())["id"] == (await r.json())["id"]
    methods = await (await rig.client.get("/v1/portal/payment-methods")).json()
    assert methods["account"] == "acme"
    topup = await (await rig.client.get("/v1/portal/auto-topup")).json()
    assert topup == {"account": "acme", "auto_topup": None}
