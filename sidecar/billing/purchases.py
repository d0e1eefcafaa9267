"""Buying credits: Checkout Sessions and the grants that follow a paid session (refunds
and disputes: clawback.py).

Grants are idempotent by bucket id, ``purchase:<session>:<line item>``, with parameters fixed
by the session (its creation time, the package), so any number of deliveries of any of the
session's events grant each line item once.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from sidecar.billing import topup
from sidecar.billing.context import Billing, Permanent
from sidecar.billing.gateway import (
    IDEMPOTENCY,
    Session,
    StripeRefused,
    StripeTransient,
    idempotency_key,
)
from sidecar.billing.stores import Package
from sidecar.errors import (
    IdempotencyConflict,
    InvalidInput,
    NoBillingCustomer,
    PaymentProviderError,
    UnknownAccount,
    UnknownPackage,
)
from sidecar.ledger.units import (
    MAX_CREDITS,
)

PAID = ("paid", "no_payment_required")


@dataclass(frozen=True, slots=True)
class Item:
    package_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Started:
    session: Session
    # False: the session an earlier call made (the same idempotency key: a double click)
    new: bool


async def checkout(
    b: Billing,
    account: str,
    items: list[Item],
    success_url: str,
    cancel_url: str,
    key: str | None,
    *,
    save_card: bool = False,
    email: str | None = None,
) -> Started:
    """A Checkout Session (mode payment) for ``items``, for the account's Stripe customer;
    ``save_card``: the customer agrees to keep the card for auto top-up (off-session use).
    With ``key`` a repeat makes no second session: it is Stripe's replay of the first."""
    gateway = b.stripe()
    await b.ledger.balance(account)  # UnknownAccount before anything is created at Stripe
    line_items = []
    total = 0
    for item in items:
        p = await b.packages.get(item.package_id)
        if p is None or not p.active:
            raise UnknownPackage(f"no active package {item.package_id}", field="package_id")
        if not p.stripe_price_id:
            raise InvalidInput(f"package {p.id} has no Stripe price", field="package_id")
        # Refused now, not once paid: a grant above the ledger's bound would fail after the
        # customer's money was taken.
        total += p.credits * item.quantity
        if total > MAX_CREDITS:
            raise InvalidInput(
                f"the purchase would grant more than {MAX_CREDITS} credits", field="quantity"
            )
        line_items.append({"price": p.stripe_price_id, "quantity": item.quantity})
    async with _stripe_call():
        customer = await _customer_with(b, account, email)
        session = await gateway.create_checkout_session(
            account=account,
            customer=customer,
            line_items=line_items,
            success_url=success_url,
            cancel_url=cancel_url,
            idempotency_key=idempotency_key("checkout", account, key) if key else None,
            save_card=save_card,
            invoices=b.settings.stripe_invoices,
            automatic_tax=b.settings.stripe_automatic_tax,
            metadata={"save_card": "true"} if save_card else None,
        )
    # Known as this account's from now on (checkout_status: pending until its webhook).
    new = await b.purchases.started(session.id, "checkout", account, b.clock())
    return Started(session, new)


@dataclass(frozen=True, slots=True)
class CheckoutStatus:
    session_id: str
    # pending: started (or paid, its credits not granted yet); granted: the webhook granted
    # them; failed: a delayed payment failed; expired: Stripe expired it unpaid; unknown: not
    # a purchase this account started (another account's, or none at all: the same answer)
    status: Literal["pending", "granted", "failed", "expired", "unknown"]
    credits: int | None  # granted: what the purchase granted


_SESSION_ID = re.compile(r"[A-Za-z0-9_]{1,255}")


async def checkout_status(b: Billing, account: str, session_id: str) -> CheckoutStatus:
    """Where the account's Checkout Session ``session_id`` stands, from our own SQL only (no
    Stripe call: a page polls this): what checkout() recorded when it made the session and
    what its webhooks recorded since. A session of another account, of no account, an auto
    top-up's PaymentIntent, or an id nobody made all answer ``unknown`` alike, so no one learns
    of another account's purchase. InvalidInput (field ``session_id``) for a malformed id."""
    if not _SESSION_ID.fullmatch(session_id):
        raise InvalidInput(
            "session_id must be 1-255 characters of [A-Za-z0-9_]", field="session_id"
        )
    row = await b.purchases.get(session_id)
    if row is None or row["account"] != account or row["kind"] != "checkout":
        return CheckoutStatus(session_id, "unknown", None)
    status = row["status"]
    if status == "paid":
        return CheckoutStatus(session_id, "granted", int(row["credits"] or 0))
    if status in ("failed", "expired"):
        return CheckoutStatus(session_id, status, None)
    return CheckoutStatus(session_id, "pending", None)  # pending, awaiting_payment


async def setup_checkout(
    b: Billing,
    account: str,
    success_url: str,
    cancel_url: str | None,
    currency: str,
    key: str | None,
    *,
    email: str | None = None,
) -> Session:
    """A Checkout Session in setup mode: the customer saves a card without paying; once done,
    it becomes the auto top-up's card (if the account has one)."""
    gateway = b.stripe()
    await b.ledger.balance(account)  # UnknownAccount
    async with _stripe_call():
        customer = await _customer_with(b, account, email)
        return await gateway.create_checkout_session(
            account=account,
            customer=customer,
            success_url=success_url,
            cancel_url=cancel_url,
            currency=currency,
            idempotency_key=idempotency_key("setup", account, key) if key else None,
            metadata={"kind": "setup"},
        )


async def has_billing_customer(b: Billing, account: str) -> bool:
    """Whether the account has a Stripe customer (what Stripe's customer portal needs); SQL
    only, no Stripe call."""
    return bool(await b.customers.customer(account))


async def billing_portal_url(b: Billing, account: str, return_url: str) -> str:
    """The URL of a new session of Stripe's customer portal for the account's Stripe
    customer (payment methods, invoices and receipts: what Stripe hosts, not rebuilt here),
    linking back to ``return_url``. BillingNotConfigured without Stripe; UnknownAccount;
    NoBillingCustomer for an account that has none (it never started a Checkout): none is
    made here, as a portal of an empty customer has nothing to show."""
    gateway = b.stripe()
    customer = await b.customers.customer(account)
    if not customer:
        await b.ledger.balance(account)  # UnknownAccount first
        raise NoBillingCustomer(f"account {account} has no Stripe customer yet")
    async with _stripe_call():
        return await gateway.billing_portal_session(customer, return_url)


async def _customer_with(b: Billing, account: str, email: str | None) -> str:
    """The account's Stripe customer. A Checkout call's ``email`` is the caller's input: it
    becomes the billing email (and the customer's at Stripe) only of an account that has
    none. One set by an admin (PUT .../billing) or read from Stripe's record of a payment
    (the session's ``customer_details.email``: see session_event) stays."""
    if email is not None and await b.customers.claim_billing_email(account, email) == email:
        existing = await b.customers.customer(account)
        if existing:
            await b.stripe().set_customer_email(existing, email)
    return await b.customer(account)


@contextlib.asynccontextmanager
async def _stripe_call() -> AsyncIterator[None]:
    """Stripe's refusals and outages as the API answers them."""
    try:
        yield
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
    """checkout.session.completed / async_payment_succeeded / async_payment_failed / expired;
    ``paid_at_s``: when the event was created (credit expiry counts from the payment)."""
    account = _account_of(session)
    sid = session.get("id")
    if account is None or not isinstance(sid, str):
        return "ignored: the session names no account"
    await _email_from_stripe(b, account, session)
    if session.get("mode") == "setup":
        return await _card_saved(b, account, session)
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
        await b.purchases.record(base | {"status": "failed"}, now)
        return "payment failed: nothing granted"
    if etype == "checkout.session.expired":
        # (a session that was paid never expires: record() keeps paid anyway)
        await b.purchases.record(base | {"status": "expired"}, now)
        return "session expired unpaid: nothing granted"
    paid = etype == "checkout.session.async_payment_succeeded" or (
        session.get("payment_status") in PAID
    )
    if not paid:
        # (A purchase already paid or failed keeps its status: see record_purchase.)
        await b.purchases.record(base | {"status": "awaiting_payment"}, now)
        return f"payment {session.get('payment_status')}: waiting for async_payment_succeeded"
    granted, buckets = await grant_session(b, account, sid, paid_at_s, event_id)
    await b.purchases.record(
        base | {"status": "paid", "credits": granted, "buckets": {"ids": buckets}}, now
    )
    done = f"granted {granted} credits in {len(buckets)} bucket(s) to {account}"
    meta = session.get("metadata") or {}
    if meta.get("kind") == "auto_topup_action" or meta.get("save_card") == "true":
        # The customer paid an auto top-up's link, or saved the card for it: auto top-up
        # charges that card from now on.
        pi = session.get("payment_intent")
        pm = (await b.stripe().payment_intent(pi)).payment_method if isinstance(pi, str) else None
        if await topup.customer_acted(b, account, pm):
            done += f"; auto top-up uses {pm}"
    return done


async def _email_from_stripe(b: Billing, account: str, session: dict[str, Any]) -> None:
    """The email Stripe's Checkout recorded for the payer (``customer_details.email``, which
    is the customer's at Stripe when the session has one) is the account's billing email from
    now on: Stripe's object before what a caller once passed as ``email``."""
    details = session.get("customer_details")
    email = details.get("email") if isinstance(details, dict) else None
    if isinstance(email, str) and email and email != await b.customers.billing_email(account):
        await b.customers.set_billing_email(account, email)


async def _card_saved(b: Billing, account: str, session: dict[str, Any]) -> str:
    """A setup-mode session completed: its card becomes the auto top-up's card."""
    if session.get("status") != "complete":
        return f"setup session {session.get('status')}: nothing saved"
    si = session.get("setup_intent")
    if not isinstance(si, str):
        return "ignored: the setup session has no SetupIntent"
    pm = await b.stripe().setup_intent_payment_method(si)
    if pm is None:
        return f"setup intent {si} saved no payment method"
    if await topup.customer_acted(b, account, pm):
        return f"card {pm} saved: auto top-up uses it"
    return f"card {pm} saved (no auto top-up configured)"


async def grant_session(
    b: Billing, account: str, session_id: str, paid_at_s: int, event_id: str
) -> tuple[int, list[str]]:
    """Grants every line item of a paid session (each once); returns the credits its buckets
    hold and their ids."""
    items = await b.stripe().line_items(session_id)
    plan: list[tuple[str, Package, int]] = []
    for li in items:
        p = await b.packages.by_price(li.price)
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
            # Granted before (another event, or the package as it was then): once is enough,
            # and the purchase holds what the bucket was granted, as the first grant recorded.
            credits = await b.granted(account, bucket)
        except UnknownAccount:
            raise Permanent(f"account {account} does not exist") from None
        total += credits
        buckets.append(bucket)
    return total, buckets
