"""Auto top-up: crossing the threshold charges the saved card once (off-session PaymentIntent
at the fake Stripe), the credits arrive once, concurrent triggers start one charge, and
repeated declines pause it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.billing import topup
from sidecar.ledger import units
from sidecar.runtime import metrics
from tests.billing.conftest import MakeRig, Rig
from tests.conftest import admin, service

PM = "pm_card_visa"


async def spend(rig: Rig, account: str, cost: int, key: str) -> None:
    r = await rig.client.post(
        "/v1/check",
        json={"account": account, "cost": cost, "idempotency_key": key},
        headers=service(),
    )
    assert r.status == 200, await r.text()


async def grant(rig: Rig, account: str, credits: int, grant_id: str) -> None:
    r = await rig.client.post(
        f"/v1/accounts/{account}/grants",
        json={"grant_id": grant_id, "credits": credits, "reason": "test"},
        headers=admin(),
    )
    assert r.status == 201, await r.text()


async def saved_card(rig: Rig, account: str, pm: str = PM) -> str:
    """A card the customer saved with Stripe (the account's Stripe customer is made now)."""
    customer = await rig.billing.customer(account)
    if pm not in rig.fake.payment_methods:
        rig.fake.add_payment_method(customer, pm)
    return pm


async def arm(rig: Rig, account: str, threshold: int = 100) -> None:
    await saved_card(rig, account)
    r = await rig.client.put(
        f"/v1/admin/accounts/{account}/auto-topup",
        json={"threshold": threshold, "package_id": "starter", "payment_method": PM},
        headers=admin(),
    )
    assert r.status == 200, await r.text()


async def wait_for(rig: Rig, predicate: object, timeout_s: float = 30.0) -> None:
    assert callable(predicate)
    for _ in range(int(timeout_s / 0.02)):
        await rig.settle()
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_crossing_the_threshold_charges_once_and_grants_the_package(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    await grant(rig, "acme", 150, "free")
    await arm(rig, "acme")
    await spend(rig, "acme", 100, "r1")  # 150 -> 50: crosses 100

    async def topped_up() -> bool:
        return await rig.balance("acme") == 1050

    await wait_for(rig, topped_up)
    (pi,) = rig.fake.payment_intents.values()
    assert pi["amount"] == 500 and pi["payment_method"] == PM and pi["status"] == "succeeded"
    assert pi["metadata"]["account"] == "acme" and pi["metadata"]["kind"] == "auto_topup"
    # Stripe's webhook for the same charge grants nothing more.
    await rig.webhook("payment_intent.succeeded", pi)
    await rig.settle()
    assert await rig.balance("acme") == 1050
    await spend(rig, "acme", 10, "r2")  # no crossing: no second charge
    await rig.settle()
    assert len(rig.fake.payment_intents) == 1
    r = await rig.client.get("/v1/admin/accounts/acme/auto-topup", headers=admin())
    body = await r.json()
    assert body["pending_payment_intent"] is None and body["failures"] == 0


async def test_auto_topup_racing_with_itself_starts_one_charge(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    await arm(rig, "acme")
    results = await asyncio.gather(*(topup.trigger(rig.billing, "acme") for _ in range(5)))
    assert sum(r.startswith("auto top-up") for r in results) == 1, results
    assert len(rig.fake.payment_intents) == 1
    assert await rig.balance("acme") == 1000
    # Within the cooldown a new crossing does not charge again.
    assert (await topup.trigger(rig.billing, "acme")).startswith("skipped")


def charge_posts(rig: Rig) -> list[str]:
    """The idempotency keys of the PaymentIntent creations, in order."""
    return [
        r.idempotency_key or ""
        for r in rig.fake.requests
        if r.method == "POST" and r.path == "/v1/payment_intents"
    ]


async def test_a_charge_whose_reply_was_lost_is_retried_with_its_idempotency_key(
    rig: Rig,
) -> None:
    """Stripe charged but its reply was lost: the retry sends the same key, so Stripe answers
    with that charge instead of charging twice."""
    await rig.account("acme")
    await rig.package()
    await arm(rig, "acme")
    await grant(rig, "acme", 150, "free")
    rig.fake.drop_reply_next(1)
    await spend(rig, "acme", 100, "r1")

    async def topped_up() -> bool:
        rig.clock.advance(5_000)  # the event's retry backoff
        return await rig.balance("acme") == 1050

    await wait_for(rig, topped_up)
    keys = charge_posts(rig)
    assert len(keys) >= 2 and len(set(keys)) == 1
    assert len(rig.fake.payment_intents) == 1


@pytest.mark.parametrize("ran", [False, True])
async def test_a_charge_stripe_answered_with_a_500_is_retried_under_a_new_key_once(
    rig: Rig, ran: bool
) -> None:
    """Issue 17 #11: Stripe keeps a 500 under its idempotency key for 24 hours, so a retry
    with that key can never succeed: the slot moves to a new key, after checking that the
    failed request did not charge anyway (ran=True: it did, and that charge is used)."""
    await rig.account("acme")
    await rig.package()
    await arm(rig, "acme")
    await grant(rig, "acme", 150, "free")
    rig.fake.fail_next(1, 500, ran=ran)
    await spend(rig, "acme", 100, "r1")

    async def topped_up() -> bool:
        rig.clock.advance(5_000)
        return await rig.balance("acme") == 1050

    await wait_for(rig, topped_up)
    assert len(rig.fake.payment_intents) == 1
    assert len(set(charge_posts(rig))) == (1 if ran else 2)
    await rig.settle()
    assert await rig.balance("acme") == 1050


async def test_repeated_declines_pause_the_auto_topup_and_disarm_it(make_rig: MakeRig) -> None:
    rig = await make_rig(auto_topup_cooldown_s=0, auto_topup_max_failures=2)
    await rig.account("acme")
    await rig.package()
    rig.fake.decline(PM)
    await arm(rig, "acme")
    for i in range(3):
        await grant(rig, "acme", 150, f"g{i}")
        await spend(rig, "acme", 150, f"r{i}")  # 150 -> 0: crosses 100 each time
        await rig.settle()
    r = await rig.client.get("/v1/admin/accounts/acme/auto-topup", headers=admin())
    body = await r.json()
    assert body["paused"] is True and body["failures"] == 2
    assert "declined" in body["last_error"]
    # Paused: the third crossing appended no trigger, and nothing was charged.
    assert len(rig.fake.payment_intents) == 2
    assert await rig.balance("acme") == 0
    # Configuring it again (a new card) lifts the pause.
    rig.fake.payment_intents.clear()
    await saved_card(rig, "acme", "pm_new")
    r = await rig.client.put(
        "/v1/admin/accounts/acme/auto-topup",
        json={"threshold": 100, "package_id": "starter", "payment_method": "pm_new"},
        headers=admin(),
    )
    body = await r.json()
    assert body["paused"] is False and body["failures"] == 0


async def test_auto_topup_settings_are_validated(rig: Rig) -> None:
    await rig.account("acme")
    await rig.package()
    cases = [
        ("ghost", {"threshold": 1, "package_id": "starter", "payment_method": PM}, 404),
        ("acme", {"threshold": 1, "package_id": "nope", "payment_method": PM}, 404),
        ("acme", {"threshold": 1, "package_id": "starter", "payment_method": "pm x"}, 422),
        ("acme", {"threshold": "1", "package_id": "starter", "payment_method": PM}, 422),
    ]
    for account, body, status in cases:
        r = await rig.client.put(
            f"/v1/admin/accounts/{account}/auto-topup", json=body, headers=admin()
        )
        assert r.status == status, (body, await r.text())
    r = await rig.client.delete("/v1/admin/accounts/acme/auto-topup", headers=admin())
    assert (await r.json())["deleted"] is False


def topups(result: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("credit_sidecar_auto_topups_total", {"result": result})
        or 0.0
    )


async def test_a_synchronous_decline_counts_one_failure(make_rig: MakeRig) -> None:
    """Issue 17 #15: the decline seen in Stripe's reply and in payment_intent.payment_failed
    is one failed charge."""
    rig = await make_rig(auto_topup_max_failures=5)
    await rig.account("acme")
    await rig.package()
    await arm(rig, "acme")
    rig.fake.decline(PM)
    before = topups("failed"), None
    assert (await topup.trigger(rig.billing, "acme")).startswith("failed")
    await rig.deliver(*rig.take_events("payment_intent.payment_failed"))
    await rig.settle()
    cfg = await rig.billing.topups.get("acme")
    assert cfg is not None and cfg["failures"] == 1 and "declined" in cfg["last_error"]
    assert topups("failed") - before[0] == 1


async def endpoint(rig: Rig, account: str) -> None:
    r = await rig.client.put(
        f"/v1/admin/accounts/{account}/notifications",
        json={"url": "https://business.test/hooks"},
        headers=admin(),
    )
    assert r.status == 200


async def auto_topup(rig: Rig, account: str) -> dict[str, Any]:
    r = await rig.client.get(f"/v1/admin/accounts/{account}/auto-topup", headers=admin())
    body: dict[str, Any] = await r.json()
    return body


async def notifications(rig: Rig, account: str) -> list[dict[str, Any]]:
    return [dict(d["payload"]) for d in await rig.billing.notifications.deliveries(account, 50)]


async def test_off_session_charges_cannot_redirect_so_stripe_needs_no_return_url(
    rig: Rig,
) -> None:
    """Issue 17 #8: automatic payment methods (on by default) may redirect, and Stripe then
    refuses a confirmation without return_url; an off-session charge turns redirects off."""
    await rig.account("acme")
    await rig.package()
    await arm(rig, "acme")
    assert (await topup.trigger(rig.billing, "acme")).startswith("auto top-up")
    (call,) = [
        r for r in rig.fake.requests if r.method == "POST" and r.path == "/v1/payment_intents"
    ]
    assert call.params["automatic_payment_methods"] == {
        "enabled": "true",
        "allow_redirects": "never",
    }
    assert "return_url" not in call.params and call.params["off_session"] == "true"


async def test_a_card_that_needs_authentication_waits_for_the_customer_without_failing(
    make_rig: MakeRig,
) -> None:
    """Issue 17 #9: authentication_required is not a decline: no failure is counted (so no
    pause), the business gets a notification with a Checkout link to forward, no off-session
    charge is tried meanwhile, and once the customer pays the link the credits arrive and the
    card they authenticated is the auto top-up's card."""
    rig = await make_rig(auto_topup_max_failures=1, auto_topup_action_url="https://app.test/back")
    await rig.account("acme")
    await rig.package()
    await endpoint(rig, "acme")
    await arm(rig, "acme")
    rig.fake.require_authentication(PM)
    await grant(rig, "acme", 150, "free")
    await spend(rig, "acme", 100, "r1")
    await rig.settle()
    cfg = await auto_topup(rig, "acme")
    assert (cfg["paused"], cfg["failures"], cfg["needs_customer"]) == (False, 0, True)
    url = cfg["action_url"]
    assert url and url.startswith("https://checkout.stripe.test/")
    (note,) = [n for n in await notifications(rig, "acme") if n["type"] != "balance.low"]
    assert note["type"] == "auto_topup.action_required" and note["url"] == url
    assert note["reason"] == "authentication_required" and note["amount"] == 500
    assert units.parse_rfc3339(note["created_at"]) // 1000 == note["created"]  # (s): deprecated
    # Stripe's payment_failed webhook for the same charge changes nothing
    await rig.deliver(*rig.take_events("payment_intent.payment_failed"))
    await rig.settle()
    assert (await auto_topup(rig, "acme"))["failures"] == 0
    assert len(await notifications(rig, "acme")) == 1
    # no off-session charge while the customer has the link
    await grant(rig, "acme", 100, "more")
    await spend(rig, "acme", 100, "r2")
    await rig.settle()
    assert len(rig.fake.payment_intents) == 1
    # the customer pays the link (3D Secure done on Stripe's page): credits, and their card
    rig.take_events()
    done = rig.fake.complete_session(url.rsplit("/", 1)[1], payment_method="pm_authenticated")
    await rig.deliver(*rig.take_events("checkout.session.completed"))
    await rig.settle()
    assert await rig.balance("acme") == 1050
    cfg = await auto_topup(rig, "acme")
    assert (cfg["needs_customer"], cfg["payment_method"]) == (False, "pm_authenticated")
    assert rig.fake.payment_methods["pm_authenticated"]["customer"] == done["customer"]


async def stuck_charge(rig: Rig) -> str:
    """A charge that stays processing (its PaymentIntent id)."""
    await rig.account("acme")
    await rig.package()
    await arm(rig, "acme")
    rig.fake.process_slowly(PM)
    assert "processing" in await topup.trigger(rig.billing, "acme")
    (pi,) = rig.fake.payment_intents
    assert (await auto_topup(rig, "acme"))["pending_payment_intent"] == pi
    return pi


async def test_a_charge_left_processing_is_settled_by_the_sweep_without_its_webhook(
    make_rig: MakeRig,
) -> None:
    """Issue 17 #10: past the timeout the worker asks Stripe: this one succeeded (its webhook
    was lost), so its credits are granted and the slot is free."""
    rig = await make_rig(auto_topup_pending_timeout_s=60, auto_topup_cooldown_s=0)
    pi = await stuck_charge(rig)
    rig.fake.finish_processing(pi)
    rig.clock.advance(120_000)

    async def granted() -> bool:
        rig.clock.advance(61_000)
        cfg = await auto_topup(rig, "acme")
        return cfg["pending_payment_intent"] is None and await rig.balance("acme") == 1000

    await wait_for(rig, granted)
    assert (await auto_topup(rig, "acme"))["failures"] == 0


async def test_a_charge_stuck_awaiting_action_is_canceled_and_the_next_crossing_charges(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(auto_topup_pending_timeout_s=60, auto_topup_cooldown_s=0)
    pi = await stuck_charge(rig)
    rig.fake.payment_intents[pi]["status"] = "requires_action"

    async def freed() -> bool:
        rig.clock.advance(61_000)
        return (await auto_topup(rig, "acme"))["pending_payment_intent"] is None

    await wait_for(rig, freed)
    assert rig.fake.payment_intents[pi]["status"] == "canceled"
    rig.fake._behaviours.clear()  # the card works again
    assert (await topup.trigger(rig.billing, "acme")).startswith("auto top-up")
    assert await rig.balance("acme") == 1000


async def test_payment_intent_canceled_frees_the_slot_without_a_failure(rig: Rig) -> None:
    pi = await stuck_charge(rig)
    obj = rig.fake.payment_intents[pi] | {"status": "canceled"}
    await rig.webhook("payment_intent.canceled", obj)
    await rig.settle()
    cfg = await auto_topup(rig, "acme")
    assert (cfg["pending_payment_intent"], cfg["failures"]) == (None, 0)


async def test_setting_the_auto_topup_again_frees_a_stuck_slot(make_rig: MakeRig) -> None:
    rig = await make_rig(auto_topup_cooldown_s=0)
    pi = await stuck_charge(rig)
    await saved_card(rig, "acme", "pm_other")
    r = await rig.client.put(
        "/v1/admin/accounts/acme/auto-topup",
        json={"threshold": 100, "package_id": "starter", "payment_method": "pm_other"},
        headers=admin(),
    )
    assert r.status == 200 and (await r.json())["pending_payment_intent"] is None
    assert (await topup.trigger(rig.billing, "acme")).startswith("auto top-up")
    assert await rig.balance("acme") == 1000
    # the old charge succeeding after all still grants its own credits (the customer paid)
    rig.fake.finish_processing(pi)
    await rig.deliver(*rig.take_events("payment_intent.succeeded"))
    await rig.settle()
    assert await rig.balance("acme") == 2000


async def test_an_auto_topup_card_must_be_saved_on_the_accounts_customer(rig: Rig) -> None:
    """Issue 17 #7: the payment method is checked with Stripe before it is kept."""
    await rig.account("acme")
    await rig.account("beta")
    await rig.package()
    theirs = await saved_card(rig, "beta", "pm_of_beta")
    await rig.billing.customer("acme")
    for pm, reason in ((theirs, "not saved on the account"), ("pm_unknown", "no payment method")):
        r = await rig.client.put(
            "/v1/admin/accounts/acme/auto-topup",
            json={"threshold": 100, "package_id": "starter", "payment_method": pm},
            headers=admin(),
        )
        assert r.status == 422, await r.text()
        err = (await r.json())["error"]
        assert err["field"] == "payment_method" and reason in err["message"]
    assert await rig.billing.topups.get("acme") is None


async def test_receipts_of_auto_topups_go_to_the_billing_email(rig: Rig) -> None:
    """Issue 17 #12: the account's billing email is on its Stripe customer and on each
    off-session charge (Stripe emails the receipt)."""
    await rig.account("acme")
    await rig.package()
    r = await rig.client.put(
        "/v1/admin/accounts/acme/billing", json={"email": "ops@acme.test"}, headers=admin()
    )
    assert r.status == 200
    await arm(rig, "acme")
    (customer,) = rig.fake.customers.values()
    assert customer["email"] == "ops@acme.test"
    await topup.trigger(rig.billing, "acme")
    (pi,) = rig.fake.payment_intents.values()
    assert pi["receipt_email"] == "ops@acme.test"
    r = await rig.client.put(
        "/v1/admin/accounts/acme/billing", json={"email": "billing@acme.test"}, headers=admin()
    )
    assert (await r.json())["customer"] == customer["id"]
    assert rig.fake.customers[customer["id"]]["email"] == "billing@acme.test"
