"""Buying credits: Checkout Sessions, the grants that follow a paid session, and taking
credits back after a refund or a dispute.

Grants are idempotent by bucket id, ``purchase:<session>:<line item>``, with parameters fixed
by the session (its creation time, the package), so any number of deliveries of any of the
session's events grant each line item once. Refunds and disputes move a cumulative target
(``revoke.lua``), so duplicates and reordering take back the right credits once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.billing.context import Billing, NotYet, Permanent
from sidecar.billing.gateway import IDEMPOTENCY, Session, StripeRefused, StripeTransient
from sidecar.billing.store import Package
from sidecar.errors import (
    IdempotencyConflict,
    InvalidInput,
    PaymentProviderError,
    UnknownAccount,
    UnknownPackage,
)

PAID = ("paid", "no_payment_required")


@dataclass(frozen=True, slots=True)
class Item:
    package_id: str
    quantity: int


async def checkout(
    b: Billing,
    account: str,
    items: list[Item],
    success_url: str,
    cancel_url: str,
    idempotency_key: str | None,
) -> Session:
    """A Checkout Session (mode payment) for ``items``, for the account's Stripe customer."""
    gateway = b.stripe()
    await b.ledger.balance(account)  # UnknownAccount before anything is created at Stripe
    line_items = []
    for item in items:
        p = await b.store.package(item.package_id)
        if p is None or not p.active:
            raise UnknownPackage(f"no active package {item.package_id}", field="package_id")
        if not p.stripe_price_id:
            raise InvalidInput(f"package {p.id} has no Stripe price", field="package_id")
        line_items.append({"price": p.stripe_price_id, "quantity": item.quantity})
    try:
        customer = await b.customer(account)
        return await gateway.create_checkout_session(
            account=account,
            customer=customer,
            line_items=line_items,
            success_url=success_url,
            cancel_url=cancel_url,
            idempotency_key=f"credit-sidecar-checkout-{account}-{idempotency_key}"
            if idempotency_key
            else None,
        )
    except StripeRefused as e:
        if e.code == IDEMPOTENCY:
            raise IdempotencyConflict(
                "idempotency_key was used before with other parameters", field="idempotency_key"
            ) from None
        raise PaymentProviderError(f"Stripe: {e}") from None
    except StripeTransient as e:
        raise PaymentProviderError(f"Stripe: {e}") from None


def _account_of(session: dict[str, Any]) -> str | None:
    account = session.get("client_reference_id") or (session.get("metadata") or {}).get("account")
    return account if isinstance(account, str) and account else None


async def session_event(
    b: Billing, event_id: str, etype: str, session: dict[str, Any], paid_at_s: int = 0
) -> str:
    """checkout.session.completed / async_payment_succeeded / async_payment_failed;
    ``paid_at_s``: when the event was created (credit expiry counts from the payment)."""
    account = _account_of(session)
    sid = session.get("id")
    if account is None or not isinstance(sid, str):
        return "ignored: the session names no account"
    now = b.clock()
    base = {
        "id": sid,
        "kind": "checkout",
        "account": account,
        "payment_intent": session.get("payment_intent") or None,
        "amount_total": session.get("amount_total"),
        "currency": session.get("currency"),
    }
    if etype == "checkout.session.async_payment_failed":
        await b.store.record_purchase(base | {"status": "failed"}, now)
        return "payment failed: nothing granted"
    paid = etype == "checkout.session.async_payment_succeeded" or (
        session.get("payment_status") in PAID
    )
    if not paid:
        # (A purchase already paid or failed keeps its status: see record_purchase.)
        await b.store.record_purchase(base | {"status": "awaiting_payment"}, now)
        return f"payment {session.get('payment_status')}: waiting for async_payment_succeeded"
    granted, buckets = await grant_session(b, account, sid, paid_at_s, event_id)
    await b.store.record_purchase(
        base | {"status": "paid", "credits": granted, "buckets": {"ids": buckets}}, now
    )
    return f"granted {granted} credits in {len(buckets)} bucket(s) to {account}"


async def grant_session(
    b: Billing, account: str, session_id: str, paid_at_s: int, event_id: str
) -> tuple[int, list[str]]:
    """Grants every line item of a paid session (each once); returns the credits its buckets
    hold and their ids."""
    items = await b.stripe().line_items(session_id)
    plan: list[tuple[str, Package, int]] = []
    for li in items:
        p = await b.store.package_by_price(li.price)
        if p is None:
            raise Permanent(f"price {li.price} of line item {li.id} is no credit package")
        plan.append((li.id, p, li.quantity))
    total, buckets = 0, []
    now_s = b.clock() // 1000
    for li_id, p, quantity in plan:
        bucket = f"purchase:{session_id}:{li_id}"
        credits = p.credits * quantity
        expires = None
        if p.credit_expiry_s:
            # From the payment; from now if that moment has already passed (a late retry):
            # a second grant of the bucket is refused by its id whatever its expiry.
            base = paid_at_s if paid_at_s and paid_at_s + p.credit_expiry_s > now_s else now_s
            expires = (base + p.credit_expiry_s) * 1000
        try:
            await b.ledger.grant(
                account,
                bucket,
                credits,
                expires_at=expires,
                source="purchase",
                metadata={
                    "package": p.id,
                    "session": session_id,
                    "line_item": li_id,
                    "quantity": quantity,
                },
                description=f"{p.name} x{quantity} (Stripe event {event_id})",
            )
        except IdempotencyConflict:
            # Granted before (another event, or the package as it was then): once is enough.
            credits = await _bucket_credits(b, account, bucket, credits)
        except UnknownAccount:
            raise Permanent(f"account {account} does not exist") from None
        total += credits
        buckets.append(bucket)
    return total, buckets


async def _bucket_credits(b: Billing, account: str, bucket: str, default: int) -> int:
    for held in (await b.ledger.balance(account)).buckets:
        if held.id == bucket:
            return held.credits
    return default


async def clawback(
    b: Billing, purchase: dict[str, Any], *, refunded: int | None, disputed: int | None
) -> str:
    """Takes back the share of the purchase's credits that was refunded or disputed."""
    row = await b.store.raise_clawback(
        purchase["id"], refunded=refunded, disputed=disputed, now_ms=b.clock()
    )
    if row is None:
        raise NotYet(f"purchase {purchase['id']} vanished")
    amount_total = int(row["amount_total"] or 0)
    credits = int(row["credits"] or 0)
    if row["status"] != "paid" or amount_total <= 0 or credits <= 0:
        raise NotYet(f"purchase {row['id']} has not been granted yet")
    # Stripe refunds and disputes cover different money (a disputed amount cannot be refunded).
    money = min(amount_total, int(row["amount_refunded"]) + int(row["amount_disputed"]))
    target = credits * money // amount_total
    policy = b.settings.refund_policy
    what = f"refunded {row['amount_refunded']}, disputed {row['amount_disputed']} of {amount_total}"
    if policy == "flag":
        note = f"{what}: {target} credits would be taken back (refund_policy=flag)"
        await b.store.update_purchase(row["id"], b.clock(), flagged=note)
        return "flagged: " + note
    r = await b.ledger.revoke(
        row["account"],
        row["id"],
        target,
        buckets=list((row["buckets"] or {}).get("ids", [])),
        policy="unspent" if policy == "revoke_unspent" else "negative",
        description=f"Stripe {what}",
    )
    await b.store.update_purchase(row["id"], b.clock(), clawback_target=target)
    if r.transaction_id is None:
        return f"{what}: nothing more to take back (target {target} reached)"
    return (
        f"{what}: took back {r.taken} credits, added {r.debt_added} to debt, "
        f"{r.unrecovered} already spent"
    )


async def charge_event(b: Billing, etype: str, obj: dict[str, Any]) -> str:
    """charge.refunded (cumulative amount_refunded) and charge.dispute.created."""
    pi = obj.get("payment_intent")
    if not isinstance(pi, str):
        return "ignored: no payment intent"
    purchase = await b.store.purchase_by_payment_intent(pi)
    if purchase is None:
        raise NotYet(f"no purchase with payment intent {pi} (yet)")
    if etype == "charge.refunded":
        return await clawback(
            b, purchase, refunded=int(obj.get("amount_refunded") or 0), disputed=None
        )
    return await clawback(b, purchase, refunded=None, disputed=int(obj.get("amount") or 0))
