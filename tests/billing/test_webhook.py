"""The Stripe webhook receiver: only correctly signed, fresh events are accepted (several
secrets during a rotation); accepted events are stored once and acknowledged at once."""

from __future__ import annotations

import asyncio
import time

import orjson

from tests.billing.conftest import OLD_SECRET, SECRET, MakeRig, Rig
from tests.billing.fakestripe import API_VERSION, FakeStripe, event, sign_webhook
from tests.conftest import admin


async def test_a_correctly_signed_event_is_stored_once_and_acknowledged(rig: Rig) -> None:
    r = await rig.webhook("customer.created", {"id": "cus_1"}, event_id="evt_1")
    assert r.status == 200
    assert (await r.json()) == {"received": True, "id": "evt_1", "duplicate": False}
    again = await rig.webhook("customer.created", {"id": "cus_1"}, event_id="evt_1")
    assert (await again.json())["duplicate"] is True
    await rig.settle()
    (stored,) = await rig.billing.events.listing(None, 10)
    assert stored["status"] == "ignored" and stored["attempts"] == 1


async def test_the_previous_secret_is_accepted_during_a_rotation(rig: Rig) -> None:
    r = await rig.webhook("customer.created", {"id": "cus_1"}, secret=OLD_SECRET)
    assert r.status == 200


async def _refused(rig: Rig, body: bytes, header: str | None) -> str:
    headers = {"Stripe-Signature": header} if header is not None else {}
    r = await rig.client.post("/webhooks/stripe", data=body, headers=headers)
    assert r.status == 400, await r.text()
    err = (await r.json())["error"]
    assert await rig.billing.events.listing(None, 10) == []
    return str(err["code"]) + ": " + str(err["message"])


async def test_tampered_body_wrong_secret_stale_and_future_timestamps_are_refused(
    rig: Rig,
) -> None:
    body = orjson.dumps(event("checkout.session.completed", {"id": "cs_1"}))
    now = int(time.time())
    tampered = body.replace(b"cs_1", b"cs_2")
    assert "no signature matches" in await _refused(rig, tampered, sign_webhook(body, SECRET))
    assert "invalid_signature" in await _refused(rig, body, sign_webhook(body, "whsec_wrong"))
    stale = sign_webhook(body, SECRET, now - 3600)
    assert "tolerance" in await _refused(rig, body, stale)
    future = sign_webhook(body, SECRET, now + 3600)
    assert "future" in await _refused(rig, body, future)
    assert "missing" in await _refused(rig, body, None)
    assert "timestamp" in await _refused(rig, body, "v1=abc")
    sig = sign_webhook(body, SECRET, now + 3600).split(",")[1]  # v1=… over a future time
    smuggled = f"{sig}, t={now},t={now + 3600}"  # the library verifies the first exact "t"
    assert "future" in await _refused(rig, body, smuggled)
    assert "malformed" in await _refused(rig, body, f"t=\u00b2,{sig}")
    not_event = b'{"hello": "world"}'
    assert "not a Stripe event" in await _refused(rig, not_event, sign_webhook(not_event, SECRET))


async def test_without_configured_secrets_every_webhook_is_refused(make_rig: MakeRig) -> None:
    rig = await make_rig(stripe_webhook_secrets=None)
    body = orjson.dumps(event("customer.created", {"id": "cus_1"}))
    r = await rig.client.post(
        "/webhooks/stripe", data=body, headers={"Stripe-Signature": sign_webhook(body, SECRET)}
    )
    assert r.status == 503
    assert (await r.json())["error"]["code"] == "billing_not_configured"


async def test_events_larger_than_64_kib_are_accepted_up_to_the_documented_bound(
    make_rig: MakeRig,
) -> None:
    """Issue 17 #6: Stripe documents no small size for events; a 300 KiB one is stored, and
    only what exceeds SIDECAR_STRIPE_WEBHOOK_MAX_BYTES is refused (413)."""
    rig = await make_rig()
    big = {"id": "cs_big", "object": "checkout.session", "padding": "x" * 300_000}
    r = await rig.webhook("customer.updated", big, event_id="evt_big")
    assert r.status == 200, await r.text()
    small = await make_rig(stripe_webhook_max_bytes=100_000)
    r = await small.webhook("customer.updated", big, event_id="evt_big2")
    assert r.status == 413
    assert (await r.json())["error"]["code"] == "request_too_large"
    # other routes keep their own bound
    r = await rig.client.put("/v1/accounts/x", data=b"{" + b" " * 70_000 + b"}", headers=admin())
    assert r.status == 413


async def test_an_event_in_another_api_version_is_a_dead_letter_never_misread(
    make_rig: MakeRig, fake: FakeStripe
) -> None:
    """Issue 17 #14: Stripe renders events in the endpoint's API version; one billing acts on
    in another version than the pinned one is refused with both versions named, while the
    webhook endpoints' versions read at start are shown by the billing status."""
    basil = "2025-03-31.basil"
    fake.add_webhook_endpoint("https://api.acme.test/webhooks/stripe", api_version=basil)
    fake.add_webhook_endpoint("https://other.test/hooks", api_version=API_VERSION)
    rig = await make_rig(event_max_attempts=5)  # reads them at start
    await rig.account("acme")
    await rig.package()
    session = await rig.checkout("acme")
    done = rig.fake.complete_session(session["id"])
    body = orjson.dumps(
        event("checkout.session.completed", done, event_id="evt_v", api_version=basil)
        | {"created": rig.clock() // 1000}
    )
    r = await rig.client.post(
        "/webhooks/stripe", data=body, headers={"Stripe-Signature": sign_webhook(body, SECRET)}
    )
    assert r.status == 200
    await rig.settle()
    r = await rig.client.get("/v1/admin/billing/events?status=dead", headers=admin())
    (dead,) = (await r.json())["events"]
    assert basil in dead["error"] and API_VERSION in dead["error"]
    assert dead["attempts"] == 1 and await rig.balance("acme") == 0
    # ignored types are still only ignored
    await rig.webhook("customer.updated", {"id": "cus_1"})
    await rig.settle()
    for _ in range(200):
        r = await rig.client.get("/v1/admin/billing/status", headers=admin())
        status = await r.json()
        if status["webhook_endpoints"] is not None:
            break
        await asyncio.sleep(0.02)
    assert status["api_version"] == API_VERSION
    endpoints = {e["url"]: e for e in status["webhook_endpoints"]}
    ours = endpoints["https://api.acme.test/webhooks/stripe"]
    assert (ours["matches"], ours["sidecar"]) == (False, True)
    assert endpoints["https://other.test/hooks"]["matches"] is True
