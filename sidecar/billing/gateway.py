"""Stripe, through the official library's async client: the few calls the billing flow makes,
and one mapping of Stripe's errors onto two kinds, transient (retry later) and refused (the
request itself was turned down: a declined card, an unknown price)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import stripe

# Pinned so that the shape of the objects we read does not move under us.
API_VERSION = "2024-06-20"
# The library logs every request at INFO; the worker logs what each event did instead.
logging.getLogger("stripe").setLevel(logging.WARNING)


IDEMPOTENCY = "idempotency_error"  # StripeRefused.code: an idempotency key reused differently


def idempotency_key(kind: str, *parts: str | int) -> str:
    """A Stripe idempotency key for one request of ``kind`` made of ``parts``: the SHA-256 of
    their JSON array, so keys always fit Stripe's 255 characters and no two different lists
    of parts give the same key (``"a", "b-c"`` and ``"a-b", "c"`` differ), stable across
    retries and processes."""
    digest = hashlib.sha256(orjson.dumps([kind, *parts])).hexdigest()
    return f"credit-sidecar-{kind}-{digest}"


class StripeTransient(Exception):
    """Stripe could not be reached, rate limited us or failed on its side: try again later."""


class StripeRefused(Exception):
    """Stripe refused the request; retrying the same request cannot help."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class LineItem:
    id: str
    price: str
    quantity: int
    amount_total: int
    currency: str


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    url: str | None


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    status: str
    error: str | None
    code: str | None = None  # the decline's code (authentication_required: needs the customer)


@dataclass(frozen=True, slots=True)
class Charge:
    id: str
    amount: int  # minor units of currency
    currency: str
    payment_intent: str | None


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    amount: int
    currency: str
    status: str  # pending | requires_action | succeeded | failed | canceled


def _map(e: stripe.StripeError) -> Exception:
    status = e.http_status or 0
    if isinstance(e, stripe.APIConnectionError | stripe.RateLimitError) or status >= 500:
        return StripeTransient(f"{type(e).__name__}: {e.user_message or e}")
    if status == 409:  # a request with the same idempotency key is still running
        return StripeTransient(f"{type(e).__name__}: {e.user_message or e}")
    if isinstance(e, stripe.IdempotencyError):  # the key was used with other parameters
        return StripeRefused(f"{type(e).__name__}: {e.user_message or e}", code=IDEMPOTENCY)
    return StripeRefused(f"{type(e).__name__}: {e.user_message or e}", code=e.code)


class StripeGateway:
    """One StripeClient (aiohttp transport) for the process; ``api_base`` points it elsewhere
    (stripe-mock, the tests' fake Stripe)."""

    def __init__(self, api_key: str, *, api_base: str | None = None, retries: int = 2) -> None:
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=stripe.AIOHTTPClient(),
            max_network_retries=retries,
            stripe_version=API_VERSION,
        )

    async def close(self) -> None:
        await self.client._requestor._client.close_async()  # type: ignore[union-attr]

    async def create_customer(self, account: str) -> str:
        try:
            c = await self.client.v1.customers.create_async(
                params={"metadata": {"account": account}, "description": f"account {account}"},
                options={"idempotency_key": idempotency_key("customer", account)},
            )
        except stripe.StripeError as e:
            raise _map(e) from None
        return str(c.id)

    async def create_checkout_session(
        self,
        *,
        account: str,
        customer: str,
        line_items: list[dict[str, Any]],
        success_url: str,
        cancel_url: str,
        idempotency_key: str | None,
    ) -> Session:
        params: dict[str, Any] = {
            "mode": "payment",
            "customer": customer,
            "client_reference_id": account,
            "metadata": {"account": account, "source": "credit-sidecar"},
            "payment_intent_data": {"metadata": {"account": account}},
            "line_items": line_items,
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        options: dict[str, Any] = {}
        if idempotency_key:
            options["idempotency_key"] = idempotency_key
        try:
            s = await self.client.v1.checkout.sessions.create_async(
                params=params,  # type: ignore[arg-type]
                options=options,  # type: ignore[arg-type]
            )
        except stripe.StripeError as e:
            raise _map(e) from None
        return Session(str(s.id), s.url)

    async def line_items(self, session_id: str) -> list[LineItem]:
        """Every line item of a Checkout Session (all pages)."""
        out: list[LineItem] = []
        params: dict[str, Any] = {"limit": 100}
        try:
            while True:
                page = await self.client.v1.checkout.sessions.line_items.list_async(
                    session_id,
                    params=params,  # type: ignore[arg-type]
                )
                for li in page.data:
                    price = li.price
                    out.append(
                        LineItem(
                            id=str(li.id),
                            price=str(price.id) if price is not None else "",
                            quantity=int(li.quantity or 0),
                            amount_total=int(li.amount_total),
                            currency=str(li.currency),
                        )
                    )
                if not page.has_more or not page.data:
                    return out
                params["starting_after"] = out[-1].id
        except stripe.StripeError as e:
            raise _map(e) from None

    async def charge(self, charge_id: str) -> Charge:
        try:
            c = await self.client.v1.charges.retrieve_async(charge_id)
        except stripe.StripeError as e:
            raise _map(e) from None
        pi = c.payment_intent
        return Charge(
            str(c.id),
            int(c.amount),
            str(c.currency),
            None if pi is None else str(pi if isinstance(pi, str) else pi.id),
        )

    async def refunds(self, charge_id: str) -> list[Refund]:
        """Every refund of a charge (all pages), whatever its status."""
        out: list[Refund] = []
        params: dict[str, Any] = {"charge": charge_id, "limit": 100}
        try:
            while True:
                page = await self.client.v1.refunds.list_async(params=params)  # type: ignore[arg-type]
                out += [
                    Refund(str(r.id), int(r.amount), str(r.currency), str(r.status))
                    for r in page.data
                ]
                if not page.has_more or not page.data:
                    return out
                params["starting_after"] = out[-1].id
        except stripe.StripeError as e:
            raise _map(e) from None

    async def disputes(self, charge_id: str) -> list[dict[str, Any]]:
        """Every dispute of a charge (all pages), as plain dicts."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"charge": charge_id, "limit": 100}
        try:
            while True:
                page = await self.client.v1.disputes.list_async(params=params)  # type: ignore[arg-type]
                out += [d.to_dict() for d in page.data]
                if not page.has_more or not page.data:
                    return out
                params["starting_after"] = out[-1]["id"]
        except stripe.StripeError as e:
            raise _map(e) from None

    async def charge_off_session(
        self,
        *,
        account: str,
        customer: str,
        payment_method: str,
        amount: int,
        currency: str,
        package_id: str,
        idempotency_key: str,
    ) -> Payment:
        """One off-session PaymentIntent, confirmed at once (auto top-up). A declined card is
        a Payment with its error, not an exception."""
        try:
            pi = await self.client.v1.payment_intents.create_async(
                params={
                    "amount": amount,
                    "currency": currency,
                    "customer": customer,
                    "payment_method": payment_method,
                    "off_session": True,
                    "confirm": True,
                    # Nothing can redirect the customer (they are not there), so no return_url
                    # is needed: https://docs.stripe.com/api/payment_intents/create
                    "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                    "metadata": {
                        "account": account,
                        "package_id": package_id,
                        "kind": "auto_topup",
                        "source": "credit-sidecar",
                    },
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as e:
            pi_obj = getattr(e.error, "payment_intent", None) if e.error else None
            pi_id = str(pi_obj["id"]) if pi_obj else ""
            return Payment(pi_id, "failed", f"card declined: {e.user_message or e.code}")
        except stripe.StripeError as e:
            raise _map(e) from None
        error = None
        if pi.last_payment_error is not None:
            error = str(pi.last_payment_error.message or pi.last_payment_error.code)
        return Payment(str(pi.id), str(pi.status), error)
