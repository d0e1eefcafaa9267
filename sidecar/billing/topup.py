"""Auto top-up: when a debit takes an account's balance below its threshold, one off-session
PaymentIntent for its package with its saved payment method.

The trigger is an ``auto_topup`` event the debit itself appends (sidecar/lua/_lib.lua); starting a
charge is one conditional UPDATE (enabled, not paused, not waiting for the customer, none
pending, cooldown passed), so triggers racing each other start one charge. Credits are granted
once per PaymentIntent (bucket ``topup:<payment intent>``), when it succeeds, whether that is
seen in the reply, in ``payment_intent.succeeded`` or by the stuck-charge sweep. After
``auto_topup_max_failures`` failures in a row the auto top-up is paused (and disarmed in
Redis) until it is configured again.

Idempotency keys (https://docs.stripe.com/api/idempotent_requests): a charge slot's key is
reused only when Stripe's reply was lost (it may have charged: the retry gets that charge);
Stripe keeps a server error under its key for 24 hours, so after one the slot first looks for
a PaymentIntent it made (its ``slot`` metadata) and otherwise moves to a new key.

A card that needs its holder (``authentication_required``,
https://docs.stripe.com/payments/save-and-reuse#charge-saved-payment-method) is not a decline:
the charge waits for the customer, with a Checkout link for the package (which saves the card
they use for the next off-session charges) sent to the account's notification endpoint
(``auto_topup.action_required``); no off-session charge is tried and no failure counted until
the customer pays it or the auto top-up is configured again. A charge left processing or
awaiting action for ``auto_topup_pending_timeout_s`` is looked up at Stripe by the worker's
sweep: granted if it succeeded, canceled (a failure) if it can be, its slot freed either way.

Counted in the metrics (``credit_sidecar_auto_topups_total``): a charge claimed is
``started``, its credits granted ``succeeded``, a refusal or failed payment ``failed`` (once,
whichever of the reply and the webhook sees it first).
"""

from __future__ import annotations

import logging
from typing import Any

from sidecar.billing import notify
from sidecar.billing.context import Billing, Permanent
from sidecar.billing.gateway import (
    Payment,
    StripeRefused,
    StripeTransient,
    idempotency_key,
)
from sidecar.billing.stores import Package
from sidecar.errors import IdempotencyConflict, InvalidInput, PaymentProviderError, UnknownAccount
from sidecar.ledger import units
from sidecar.runtime import metrics

log = logging.getLogger(__name__)
# A charge slot left "starting" this long (its worker died mid-charge) is taken over by the
# next trigger, with the same idempotency key. Shorter than a retried event's lease.
STALE_MS = 120_000
NEEDS_CUSTOMER = "authentication_required"
# PaymentIntent statuses that will not succeed without someone doing something.
FAILED = ("failed", "requires_payment_method", "canceled")


async def configure(
    b: Billing,
    account: str,
    *,
    threshold: int,
    package_id: str,
    payment_method: str,
    enabled: bool,
) -> None:
    """Saves the auto top-up, after checking with Stripe that ``payment_method`` is saved on
    the account's customer (Stripe would refuse an off-session charge with it otherwise)."""
    gateway = b.stripe()
    try:
        customer = await b.customer(account)
        pm = await gateway.payment_method(payment_method)
    except (StripeTransient, StripeRefused) as e:
        raise PaymentProviderError(f"Stripe: {e}") from None
    if pm is None:
        raise InvalidInput(f"Stripe has no payment method {payment_method}", field="payment_method")
    if pm.customer != customer:
        raise InvalidInput(
            f"payment method {payment_method} is not saved on the account's Stripe customer "
            f"{customer}: save it with POST /v1/checkout/setup (or Checkout with save_card)",
            field="payment_method",
        )
    await b.topups.put(
        account,
        threshold=threshold,
        package_id=package_id,
        payment_method=payment_method,
        enabled=enabled,
        now_ms=b.clock(),
    )
    await b.ledger.set_auto_topup_threshold(account, threshold if enabled else None)


async def disable(b: Billing, account: str) -> bool:
    existed = await b.topups.delete(account)
    await b.ledger.set_auto_topup_threshold(account, None)
    return existed


async def trigger(b: Billing, account: str) -> str:
    """Starts a charge if one is due; returns what happened."""
    now = b.clock()
    cooldown_ms = b.settings.auto_topup_cooldown_s * 1000
    cfg = await b.topups.claim(account, now, cooldown_ms, STALE_MS)
    if cfg is None:
        return "skipped: disabled, paused, waiting for the customer, pending or cooling down"
    metrics.TOPUPS.labels("started").inc()
    slot = str(cfg["pending_payment_intent"])  # "starting:<uuid>"
    uuid = slot.partition(":")[2]
    package = await b.packages.get(cfg["package_id"])
    if package is None or not package.active:
        await _failed(b, account, slot, f"package {cfg['package_id']} is not available")
        return "failed: package not available"
    gateway = b.stripe()
    try:
        customer = await b.customer(account)
        payment = None
        if cfg["key_attempt"]:
            # Stripe answered an earlier try with an error: did that try charge anyway?
            payment = await gateway.find_topup(customer, uuid)
        if payment is None:
            payment = await gateway.charge_off_session(
                account=account,
                customer=customer,
                payment_method=cfg["payment_method"],
                amount=package.price,
                currency=package.currency,
                package_id=package.id,
                slot=uuid,
                idempotency_key=idempotency_key("topup", account, uuid, cfg["key_attempt"]),
                receipt_email=await b.customers.billing_email(account),
            )
    except StripeRefused as e:
        await _failed(b, account, slot, str(e))
        return f"failed: {e}"
    except StripeTransient as e:
        # Not a failure of the charge: the retry of this trigger takes the slot over, with the
        # same key if the reply was lost (Stripe may have charged), a new one if Stripe keeps
        # this error under it.
        await b.topups.release(account, slot, new_key=e.stored)
        raise
    except Exception:
        await b.topups.release(account, slot, new_key=False)
        raise
    return await _outcome(b, account, slot, package, payment)


async def _outcome(b: Billing, account: str, slot: str, package: Package, payment: Payment) -> str:
    pending = slot
    if payment.id:
        await b.purchases.record(
            {
                "id": payment.id,
                "kind": "auto_topup",
                "account": account,
                "payment_intent": payment.id,
                "status": "pending",
                "amount_total": package.price,
                "currency": package.currency,
            },
            b.clock(),
        )
        await b.topups.pending(account, slot, payment.id)
        pending = payment.id
    if payment.status == "succeeded":
        return await succeeded(b, account, payment.id, package.id, 0)
    if payment.code == NEEDS_CUSTOMER:
        return await needs_customer(b, account, pending, package, payment.error)
    if payment.status in FAILED:
        await _failed(b, account, pending, payment.error or payment.status)
        return f"failed: {payment.error or payment.status}"
    return f"charge {payment.id} is {payment.status}: waiting for its webhook"


async def needs_customer(
    b: Billing, account: str, pending: str, package: Package | None, error: str | None
) -> str:
    """The charge ``pending`` (a PaymentIntent) needs the customer: a Checkout link for the
    package, recorded and sent to the account's endpoint; the charge slot is freed without a
    failure."""
    url = None
    if package is not None and package.stripe_price_id and b.settings.auto_topup_action_url:
        try:
            session = await b.stripe().create_checkout_session(
                account=account,
                customer=await b.customer(account),
                success_url=b.settings.auto_topup_action_url,
                cancel_url=None,
                idempotency_key=idempotency_key("topup-action", account, pending),
                line_items=[{"price": package.stripe_price_id, "quantity": 1}],
                save_card=True,
                invoices=b.settings.stripe_invoices,
                automatic_tax=b.settings.stripe_automatic_tax,
                metadata={"kind": "auto_topup_action", "payment_intent": pending},
            )
            url = session.url
        except (StripeTransient, StripeRefused) as e:
            log.warning("auto top-up of %s: no Checkout link for the customer: %s", account, e)
    reason = error or "the card needs its holder's authentication"
    await b.topups.needs_customer(account, pending, pending, url, reason, b.clock())
    purchase = await b.purchases.get(pending)
    if purchase is not None and purchase["status"] != "paid":
        await b.purchases.update(pending, b.clock(), status="failed")
    sent = await notify.enqueue(
        b,
        account,
        {
            "id": f"auto_topup_action:{pending}",
            "type": "auto_topup.action_required",
            "account": account,
            "reason": NEEDS_CUSTOMER,
            "message": reason,
            "payment_intent": pending,
            "package_id": package.id if package else None,
            "amount": package.price if package else None,
            "currency": package.currency if package else None,
            "url": url,
            "created_at": units.iso(b.clock()),
            "created": b.clock() // 1000,  # deprecated: unix s; use created_at
        },
    )
    return f"needs the customer ({reason}); link {url or 'none'}; notification {sent}"


async def customer_acted(b: Billing, account: str, payment_method: str | None) -> bool:
    """The customer paid an action link or saved a card: the wait ends (with that card, if
    one was saved) and the trigger is armed again."""
    cfg = await b.topups.get(account)
    if cfg is None:
        return False
    await b.topups.customer_acted(account, payment_method, b.clock())
    if cfg["enabled"]:
        await b.ledger.set_auto_topup_threshold(account, int(cfg["threshold"]))
    return True


async def _failed(
    b: Billing, account: str, pending: str, error: str, *, count: bool = True
) -> None:
    """A charge failed: ``pending`` is its PaymentIntent, or its ``starting:`` slot. Counted
    once, by whichever of Stripe's reply and its webhook clears the slot."""
    cleared, paused = await b.topups.done(
        account,
        pending,
        ok=False,
        error=error,
        max_failures=b.settings.auto_topup_max_failures if count else 10**9,
        now_ms=b.clock(),
        count=count,
    )
    if cleared and count:
        metrics.TOPUPS.labels("failed").inc()
    if not pending.startswith("starting:"):
        purchase = await b.purchases.get(pending)
        if purchase is not None and purchase["status"] != "paid":
            await b.purchases.update(pending, b.clock(), status="failed")
    if paused:
        log.warning("auto top-up of %s paused after repeated failures: %s", account, error)
        await b.ledger.set_auto_topup_threshold(account, None)


async def succeeded(b: Billing, account: str, pi: str, package_id: str, created_s: int) -> str:
    """Grants the package's credits for a successful auto top-up charge (once per charge)."""
    package = await b.packages.get(package_id)
    if package is None:
        raise Permanent(f"package {package_id} of payment {pi} does not exist")
    now = b.clock()
    purchase = await b.purchases.get(pi)
    if purchase is not None and purchase["status"] == "paid":
        await b.topups.done(account, pi, ok=True, error=None, max_failures=0, now_ms=now)
        return f"payment {pi} already granted"
    bucket = f"topup:{pi}"
    expires = None
    if package.credit_expiry_s:
        base = created_s or now // 1000
        expires = (base + package.credit_expiry_s) * 1000
    credits = package.credits
    try:
        await b.ledger.grant(
            account,
            bucket,
            credits,
            expires_at=expires,
            source="purchase",
            metadata={"package": package.id, "payment_intent": pi, "auto_topup": True},
            description=f"auto top-up: {package.name}",
        )
    except IdempotencyConflict:
        # Granted already (the reply and the webhook both saw the success), maybe with the
        # package as it was then: the purchase records what the bucket holds.
        credits = await b.granted(account, bucket)
    except UnknownAccount:
        raise Permanent(f"account {account} does not exist") from None
    else:
        metrics.TOPUPS.labels("succeeded").inc()
    await b.purchases.record(
        {
            "id": pi,
            "kind": "auto_topup",
            "account": account,
            "payment_intent": pi,
            "status": "paid",
            "amount_total": package.price,
            "currency": package.currency,
            "credits": credits,
            "buckets": {"ids": [bucket]},
        },
        b.clock(),
    )
    await b.topups.done(account, pi, ok=True, error=None, max_failures=0, now_ms=b.clock())
    return f"auto top-up {pi}: granted {credits} credits"


async def payment_event(b: Billing, etype: str, pi: dict[str, Any]) -> str:
    """payment_intent.succeeded / .payment_failed / .canceled of an auto top-up charge."""
    meta = pi.get("metadata") or {}
    if meta.get("kind") != "auto_topup" or not isinstance(meta.get("account"), str):
        return "ignored: not an auto top-up charge"
    account, pid = meta["account"], str(pi.get("id"))
    package_id = str(meta.get("package_id"))
    if etype == "payment_intent.succeeded":
        return await succeeded(b, account, pid, package_id, int(pi.get("created") or 0))
    if etype == "payment_intent.canceled":
        await _failed(b, account, pid, "the payment was canceled", count=False)
        return f"auto top-up {pid} canceled: its slot is free"
    last = pi.get("last_payment_error") or {}
    if last.get("code") == NEEDS_CUSTOMER:
        return await needs_customer(
            b, account, pid, await b.packages.get(package_id), last.get("message")
        )
    error = last.get("message") or "payment failed"
    await _failed(b, account, pid, str(error))
    return f"auto top-up {pid} failed: {error}"


async def sweep_stuck(b: Billing) -> int:
    """Charges pending longer than ``auto_topup_pending_timeout_s``: settled from what Stripe
    says now; one still processing or awaiting action is canceled if it can be (a failure),
    else left to its webhook; its slot is freed either way. Returns how many were looked at."""
    timeout_ms = b.settings.auto_topup_pending_timeout_s * 1000
    stuck = await b.topups.stuck(b.clock() - timeout_ms)
    for account, pid in stuck:
        payment = await b.stripe().payment_intent(pid)
        package_id = (payment.metadata or {}).get("package_id", "")
        if payment.status == "succeeded":
            await succeeded(b, account, pid, package_id, 0)
            continue
        if payment.code == NEEDS_CUSTOMER and payment.status in FAILED:
            await needs_customer(b, account, pid, await b.packages.get(package_id), payment.error)
            continue
        if payment.status in FAILED:
            await _failed(b, account, pid, payment.error or payment.status)
            continue
        waited = f"still {payment.status} after {b.settings.auto_topup_pending_timeout_s} s"
        try:
            await b.stripe().cancel_payment_intent(pid)
        except StripeRefused as e:  # processing: Stripe finishes it; its webhook still grants
            await _failed(b, account, pid, f"{waited}; not canceled ({e})")
        else:
            await _failed(b, account, pid, f"{waited}: canceled")
        log.warning("auto top-up %s of %s: %s", pid, account, waited)
    return len(stuck)
