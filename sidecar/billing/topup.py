"""Auto top-up: when a debit takes an account's balance below its threshold, one off-session
PaymentIntent for its package with its saved payment method.

The trigger is an ``auto_topup`` event the debit itself appends (lua/_lib.lua); starting a
charge is one conditional UPDATE (enabled, not paused, none pending, cooldown passed), so
triggers racing each other start one charge. Credits are granted once per PaymentIntent
(bucket ``topup:<payment intent>``), when it succeeds, whether that is seen in the reply or in
the ``payment_intent.succeeded`` webhook. After ``auto_topup_max_failures`` failures in a row
the auto top-up is paused (and disarmed in Redis) until it is configured again.

Counted in the metrics (``credit_sidecar_auto_topups_total``): a charge claimed is
``started``, its credits granted ``succeeded``, a refusal or failed payment ``failed``.
"""

from __future__ import annotations

import logging
from typing import Any

from sidecar import metrics
from sidecar.billing.context import Billing, Permanent
from sidecar.billing.gateway import StripeRefused
from sidecar.errors import IdempotencyConflict, UnknownAccount

log = logging.getLogger(__name__)
# A charge slot left "starting" this long (its worker died mid-charge) is taken over by the
# next trigger, with the same idempotency key. Shorter than a retried event's lease.
STALE_MS = 120_000


async def configure(
    b: Billing,
    account: str,
    *,
    threshold: int,
    package_id: str,
    payment_method: str,
    enabled: bool,
) -> None:
    await b.store.put_topup(
        account,
        threshold=threshold,
        package_id=package_id,
        payment_method=payment_method,
        enabled=enabled,
        now_ms=b.clock(),
    )
    await b.ledger.set_auto_topup_threshold(account, threshold if enabled else None)


async def disable(b: Billing, account: str) -> bool:
    existed = await b.store.delete_topup(account)
    await b.ledger.set_auto_topup_threshold(account, None)
    return existed


async def trigger(b: Billing, account: str) -> str:
    """Starts a charge if one is due; returns what happened."""
    now = b.clock()
    cooldown_ms = b.settings.auto_topup_cooldown_s * 1000
    cfg = await b.store.claim_topup(account, now, cooldown_ms, STALE_MS)
    if cfg is None:
        return "skipped: disabled, paused, pending or cooling down"
    metrics.TOPUPS.labels("started").inc()
    slot = str(cfg["pending_payment_intent"])  # "starting:<key>"
    package = await b.store.package(cfg["package_id"])
    if package is None or not package.active:
        await _failed(b, account, slot, f"package {cfg['package_id']} is not available")
        return "failed: package not available"
    gateway = b.stripe()
    try:
        customer = await b.customer(account)
        payment = await gateway.charge_off_session(
            account=account,
            customer=customer,
            payment_method=cfg["payment_method"],
            amount=package.price,
            currency=package.currency,
            package_id=package.id,
            # One key per slot: a retry after a lost reply replays the same PaymentIntent.
            idempotency_key=f"credit-sidecar-topup-{account}-{slot.partition(':')[2]}",
        )
    except StripeRefused as e:
        await _failed(b, account, slot, str(e))
        return f"failed: {e}"
    except Exception:
        # Transient (Stripe unreachable; it may or may not have charged): the slot keeps its
        # key and the retry of this trigger takes it over, without counting a failure.
        await b.store.topup_release(account, slot)
        raise
    if payment.id:
        await b.store.record_purchase(
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
        await b.store.topup_pending(account, slot, payment.id)
    if payment.status == "succeeded":
        return await succeeded(b, account, payment.id, package.id, 0)
    if payment.status in ("failed", "requires_payment_method", "canceled"):
        await _failed(b, account, payment.id or slot, payment.error or payment.status)
        return f"failed: {payment.error or payment.status}"
    return f"charge {payment.id} is {payment.status}: waiting for its webhook"


async def _failed(b: Billing, account: str, pending: str, error: str) -> None:
    """A charge failed: ``pending`` is its PaymentIntent, or its ``starting:`` slot. Counted
    once, by whichever of Stripe's reply and its webhook clears the slot."""
    cleared, paused = await b.store.topup_done(
        account,
        pending,
        ok=False,
        error=error,
        max_failures=b.settings.auto_topup_max_failures,
        now_ms=b.clock(),
    )
    if cleared:
        metrics.TOPUPS.labels("failed").inc()
    if not pending.startswith("starting:"):
        purchase = await b.store.purchase(pending)
        if purchase is not None and purchase["status"] != "paid":
            await b.store.update_purchase(pending, b.clock(), status="failed")
    if paused:
        log.warning("auto top-up of %s paused after repeated failures: %s", account, error)
        await b.ledger.set_auto_topup_threshold(account, None)


async def succeeded(b: Billing, account: str, pi: str, package_id: str, created_s: int) -> str:
    """Grants the package's credits for a successful auto top-up charge (once per charge)."""
    package = await b.store.package(package_id)
    if package is None:
        raise Permanent(f"package {package_id} of payment {pi} does not exist")
    purchase = await b.store.purchase(pi)
    if purchase is not None and purchase["status"] == "paid":
        await b.store.topup_done(account, pi, ok=True, error=None, max_failures=0, now_ms=b.clock())
        return f"payment {pi} already granted"
    bucket = f"topup:{pi}"
    expires = None
    if package.credit_expiry_s:
        base = created_s or b.clock() // 1000
        expires = (base + package.credit_expiry_s) * 1000
    try:
        await b.ledger.grant(
            account,
            bucket,
            package.credits,
            expires_at=expires,
            source="purchase",
            metadata={"package": package.id, "payment_intent": pi, "auto_topup": True},
            description=f"auto top-up: {package.name}",
        )
    except IdempotencyConflict:
        pass  # granted already (the reply and the webhook both saw the success)
    except UnknownAccount:
        raise Permanent(f"account {account} does not exist") from None
    else:
        metrics.TOPUPS.labels("succeeded").inc()
    await b.store.record_purchase(
        {
            "id": pi,
            "kind": "auto_topup",
            "account": account,
            "payment_intent": pi,
            "status": "paid",
            "amount_total": package.price,
            "currency": package.currency,
            "credits": package.credits,
            "buckets": {"ids": [bucket]},
        },
        b.clock(),
    )
    await b.store.topup_done(account, pi, ok=True, error=None, max_failures=0, now_ms=b.clock())
    return f"auto top-up {pi}: granted {package.credits} credits"


async def payment_event(b: Billing, etype: str, pi: dict[str, Any]) -> str:
    """payment_intent.succeeded / payment_intent.payment_failed of an auto top-up charge."""
    meta = pi.get("metadata") or {}
    if meta.get("kind") != "auto_topup" or not isinstance(meta.get("account"), str):
        return "ignored: not an auto top-up charge"
    account, pid = meta["account"], str(pi.get("id"))
    if etype == "payment_intent.succeeded":
        return await succeeded(
            b, account, pid, str(meta.get("package_id")), int(pi.get("created") or 0)
        )
    error = (pi.get("last_payment_error") or {}).get("message") or "payment failed"
    await _failed(b, account, pid, str(error))
    return f"auto top-up {pid} failed: {error}"
