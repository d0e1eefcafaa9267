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
    """Stripe could not be reached, rate limited us or failed on its side: try again later.

    ``stored``: Stripe answered with a server error, which it keeps under the request's
    idempotency key for 24 hours (https://docs.stripe.com/api/idempotent_requests): a retry
    needs a new key. A lost reply, a rate limit or a concurrent request with the key (409) is
    not stored: a retry reuses the key (and gets the first request's result if it ran)."""

    def __init__(self, message: str, *, stored: bool = False) -> None:
        super().__init__(message)
        self.stored = stored


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
    status: str  # a PaymentIntent status, or "failed" (declined)
    error: str | None
    code: str | None = None  # the decline's code (authentication_required: needs the customer)
    payment_method: str | None = None
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    id: str
    customer: str | None
    type: str
    label: str  # "visa 4242", or the type


@dataclass(frozen=True, slots=True)
class Price:
    id: str
    active: bool
    type: str  # one_time | recurring
    unit_amount: int | None
    currency: str


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    url: str
    api_version: str | None  # None: the account's default version
    status: str


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
        stored = status >= 500 and not isinstance(e, stripe.APIConnectionError)
        return StripeTransient(f"{type(e).__name__}: {e.user_message or e}", stored=stored)
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

    async def create_customer(self, account: str, email: str | None = None) -> str:
        params: dict[str, Any] = {"metadata": {"account": account}}
        params["description"] = f"account {account}"
        if email:
            params["email"] = email  # Stripe's receipts go there
        try:
            c = await self.client.v1.customers.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key("customer", account, email or "")},
            )
        except stripe.StripeError as e:
            raise _map(e) from None
        return str(c.id)

    async def set_customer_email(self, customer: str, email: str) -> None:
        try:
            await self.client.v1.customers.update_async(customer, params={"email": email})
        except stripe.StripeError as e:
            raise _map(e) from None

    async def create_checkout_session(
        self,
        *,
        account: str,
        customer: str,
        success_url: str,
        cancel_url: str | None,
        idempotency_key: str | None,
        line_items: list[dict[str, Any]] | None = None,
        currency: str | None = None,
        save_card: bool = False,
        invoices: bool = False,
        automatic_tax: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> Session:
        """A hosted Checkout Session for the account's customer: mode payment for
        ``line_items`` (``save_card``: the card is saved for off-session use, i.e. auto
        top-up; ``invoices``: an invoice per payment; ``automatic_tax``: Stripe Tax, the
        address entered is saved to the customer), or, without line items, mode setup (save
        a card in ``currency`` without paying)."""
        meta = {"account": account, "source": "credit-sidecar"} | (metadata or {})
        params: dict[str, Any] = {
            "customer": customer,
            "client_reference_id": account,
            "metadata": meta,
            "success_url": success_url,
        }
        if cancel_url:
            params["cancel_url"] = cancel_url
        if line_items is None:
            params |= {"mode": "setup", "currency": currency or "usd"}
            params["setup_intent_data"] = {"metadata": meta}
        else:
            params |= {"mode": "payment", "line_items": line_items}
            pi_data: dict[str, Any] = {"metadata": meta}
            if save_card:
                pi_data["setup_future_usage"] = "off_session"
            params["payment_intent_data"] = pi_data
            if invoices:
                params["invoice_creation"] = {"enabled": True}
            if automatic_tax:
                params["automatic_tax"] = {"enabled": True}
                params["customer_update"] = {"address": "auto"}
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

    async def billing_portal_session(self, customer: str, return_url: str) -> str:
        """A session of Stripe's customer portal (payment methods, invoices, receipts) for
        ``customer``, with a link back to ``return_url``; returns its URL. Short-lived and
        single-purpose, so made anew on every call (no idempotency key of ours: the library's
        own covers its retries): https://docs.stripe.com/api/customer_portal/sessions/create
        """
        try:
            s = await self.client.v1.billing_portal.sessions.create_async(
                params={"customer": customer, "return_url": return_url}
            )
        except stripe.StripeError as e:
            raise _map(e) from None
        return str(s.url)

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
        slot: str,
        idempotency_key: str,
        receipt_email: str | None = None,
    ) -> Payment:
        """One off-session PaymentIntent, confirmed at once (auto top-up). A declined card is
        a Payment with its error and code, not an exception. ``slot`` (in its metadata) finds
        it again when Stripe's answer was an error (``find_topup``)."""
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency,
            "customer": customer,
            "payment_method": payment_method,
            "off_session": True,
            "confirm": True,
            # Nothing can redirect the customer (they are not there), so no return_url is
            # needed: https://docs.stripe.com/api/payment_intents/create
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "metadata": {
                "account": account,
                "package_id": package_id,
                "kind": "auto_topup",
                "slot": slot,
                "source": "credit-sidecar",
            },
        }
        if receipt_email:
            params["receipt_email"] = receipt_email
        try:
            pi = await self.client.v1.payment_intents.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as e:
            pi_obj = getattr(e.error, "payment_intent", None) if e.error else None
            pi_id = str(pi_obj["id"]) if pi_obj else ""
            return Payment(
                pi_id,
                "failed",
                f"card declined: {e.user_message or e.code}",
                code=e.code,
                payment_method=payment_method,
            )
        except stripe.StripeError as e:
            raise _map(e) from None
        return _payment(pi)

    async def find_topup(self, customer: str, slot: str) -> Payment | None:
        """The PaymentIntent an auto top-up charge slot made, if any (the customer's 100
        newest)."""
        try:
            page = await self.client.v1.payment_intents.list_async(
                params={"customer": customer, "limit": 100}
            )
        except stripe.StripeError as e:
            raise _map(e) from None
        for pi in page.data:
            found = _payment(pi)
            if (found.metadata or {}).get("slot") == slot:
                return found
        return None

    async def payment_intent(self, pi_id: str) -> Payment:
        try:
            return _payment(await self.client.v1.payment_intents.retrieve_async(pi_id))
        except stripe.StripeError as e:
            raise _map(e) from None

    async def cancel_payment_intent(self, pi_id: str) -> Payment:
        try:
            return _payment(
                await self.client.v1.payment_intents.cancel_async(
                    pi_id, params={"cancellation_reason": "abandoned"}
                )
            )
        except stripe.StripeError as e:
            raise _map(e) from None

    async def payment_method(self, pm_id: str) -> PaymentMethod | None:
        """A payment method, or None if Stripe has none with that id."""
        try:
            pm = await self.client.v1.payment_methods.retrieve_async(pm_id)
        except stripe.InvalidRequestError as e:
            if e.http_status == 404 or e.code == "resource_missing":
                return None
            raise _map(e) from None
        except stripe.StripeError as e:
            raise _map(e) from None
        return _payment_method(pm)

    async def payment_methods(self, customer: str) -> list[PaymentMethod]:
        """The customer's saved payment methods (the 100 newest)."""
        try:
            page = await self.client.v1.customers.payment_methods.list_async(
                customer, params={"limit": 100}
            )
        except stripe.StripeError as e:
            raise _map(e) from None
        return [_payment_method(pm) for pm in page.data]

    async def setup_intent_payment_method(self, setup_intent: str) -> str | None:
        try:
            si = await self.client.v1.setup_intents.retrieve_async(setup_intent)
        except stripe.StripeError as e:
            raise _map(e) from None
        pm = si.payment_method
        return None if pm is None else str(pm if isinstance(pm, str) else pm.id)

    async def price(self, price_id: str) -> Price | None:
        """A Price, or None if Stripe has none with that id."""
        try:
            p = await self.client.v1.prices.retrieve_async(price_id)
        except stripe.InvalidRequestError as e:
            if e.http_status == 404 or e.code == "resource_missing":
                return None
            raise _map(e) from None
        except stripe.StripeError as e:
            raise _map(e) from None
        amount = p.unit_amount
        return Price(
            str(p.id),
            bool(p.active),
            str(p.type),
            None if amount is None else int(amount),
            str(p.currency),
        )

    async def webhook_endpoints(self) -> list[WebhookEndpoint]:
        try:
            page = await self.client.v1.webhook_endpoints.list_async(params={"limit": 100})
        except stripe.StripeError as e:
            raise _map(e) from None
        return [
            WebhookEndpoint(
                str(w.id),
                str(w.url),
                None if w.api_version is None else str(w.api_version),
                str(w.status),
            )
            for w in page.data
        ]


def _payment(pi: Any) -> Payment:
    error = code = None
    if pi.last_payment_error is not None:
        error = str(pi.last_payment_error.message or pi.last_payment_error.code)
        code = pi.last_payment_error.code
    pm = pi.payment_method
    return Payment(
        str(pi.id),
        str(pi.status),
        error,
        code=None if code is None else str(code),
        payment_method=None if pm is None else str(pm if isinstance(pm, str) else pm.id),
        metadata={str(k): str(v) for k, v in _plain(pi.metadata).items()},
    )


def _plain(obj: Any) -> dict[str, Any]:
    """A StripeObject (or None) as a plain dict."""
    if obj is None:
        return {}
    return dict(obj.to_dict()) if hasattr(obj, "to_dict") else dict(obj)


def _payment_method(pm: Any) -> PaymentMethod:
    customer = pm.customer
    label = str(pm.type)
    card = getattr(pm, "card", None) if pm.type == "card" else None
    if card is not None:
        label = f"{card.brand} {card.last4}"
    return PaymentMethod(
        str(pm.id),
        None if customer is None else str(customer if isinstance(customer, str) else customer.id),
        str(pm.type),
        label,
    )
