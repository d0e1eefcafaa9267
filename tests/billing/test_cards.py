"""Saving a card for auto top-up: Checkout that keeps the card when the customer opts in, a
setup-mode Checkout that saves one without buying, and the saved cards listed from Stripe."""

from __future__ import annotations

from typing import Any

from tests.billing.conftest import Rig
from tests.billing.test_topup import arm, auto_topup
from tests.conftest import admin, service


async def test_checkout_saves_the_card_for_auto_topup_when_the_customer_opts_in(
    rig: Rig,
) -> None:
    """Issue 17 #7: save_card asks Stripe to keep the card for off-session use; once paid,
    it is the auto top-up's card."""
    await rig.account("acme")
    await rig.package()
    await arm(rig, "acme")
    plain = await rig.checkout("acme")
    saving = await rig.checkout("acme", save_card=True)
    assert rig.fake._pi_data[plain["id"]]["setup_future_usage"] is None
    assert rig.fake._pi_data[saving["id"]]["setup_future_usage"] == "off_session"
    rig.take_events()
    rig.fake.complete_session(saving["id"], payment_method="pm_new_card")
    await rig.deliver(*rig.take_events("checkout.session.completed"))
    await rig.settle()
    assert await rig.balance("acme") == 1000
    assert (await auto_topup(rig, "acme"))["payment_method"] == "pm_new_card"
    customer = rig.fake.sessions[saving["id"]]["customer"]
    assert rig.fake.payment_methods["pm_new_card"]["customer"] == customer


async def test_a_setup_mode_checkout_saves_a_card_without_buying(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    await arm(rig, "acme")
    r = await rig.client.post(
        "/v1/checkout/setup",
        json={"account": "acme", "success_url": "https://app.test/saved", "currency": "eur"},
        headers=service(),
    )
    assert r.status == 201, await r.text()
    session: dict[str, Any] = await r.json()
    stored = rig.fake.sessions[session["id"]]
    assert (stored["mode"], stored["currency"], stored["amount_total"]) == ("setup", "eur", None)
    rig.take_events()
    rig.fake.complete_session(session["id"], payment_method="pm_saved")
    await rig.deliver(*rig.take_events())
    await rig.settle()
    assert await rig.balance("acme") == 0  # nothing bought
    assert (await auto_topup(rig, "acme"))["payment_method"] == "pm_saved"
    r = await rig.client.get("/v1/admin/accounts/acme/payment-methods", headers=admin())
    listed = await r.json()
    assert {m["id"] for m in listed["payment_methods"]} == {"pm_saved", "pm_card_visa"}
    assert {m["label"] for m in listed["payment_methods"]} == {"visa 4242"}


async def test_setup_checkout_refuses_bad_requests_without_calling_stripe(rig: Rig) -> None:
    await rig.account("acme")
    for body, status in (
        ({"account": "ghost", "success_url": "https://a.test/ok"}, 404),
        ({"account": "acme", "success_url": "ftp://x"}, 422),
        ({"account": "acme", "success_url": "https://a.test/ok", "currency": "EURO"}, 422),
        ({"account": "acme", "success_url": "https://a.test/ok", "email": "no-at-sign"}, 422),
    ):
        r = await rig.client.post("/v1/checkout/setup", json=body, headers=service())
        assert r.status == status, (body, await r.text())
    assert rig.fake.sessions == {}
