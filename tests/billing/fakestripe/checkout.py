"""Checkout Sessions in payment and setup mode, their line items, and SetupIntents; what the
customer does on the hosted page (``complete_session``, ``expire_session``).

https://docs.stripe.com/api/checkout/sessions/create: ``line_items`` are required in payment
mode and refused in setup mode; ``currency`` is required in setup mode unless
``payment_method_types`` is given; ``payment_intent_data`` (with ``setup_future_usage``:
on_session | off_session) and ``invoice_creation`` only in payment mode,
``setup_intent_data`` only in setup mode; ``customer_update`` needs ``customer``; with
``automatic_tax[enabled]`` and an existing customer, Stripe needs an address on the customer or
``customer_update[address|shipping]=auto`` (https://docs.stripe.com/tax/checkout).
https://docs.stripe.com/upgrades#2022-08-01: a session no longer creates its PaymentIntent
(or SetupIntent) when it is created: ``payment_intent`` is null until the customer confirms.
https://docs.stripe.com/payments/checkout/save-during-payment: with
``setup_future_usage`` the payment method is saved to the customer."""

from __future__ import annotations

import copy

from tests.billing.fakestripe.forms import (
    Params,
    StripeObject,
    check_known,
    hash_param,
    integer,
    invalid,
    metadata,
    missing,
    names,
    new_id,
    no_expand,
    now,
    page,
    str_list,
    text,
)
from tests.billing.fakestripe.payment_intents import PaymentIntents
from tests.billing.fakestripe.server import Route
from tests.billing.fakestripe.state import payment_method_object

_SESSION_CREATE = names(
    "adaptive_pricing after_expiration allow_promotion_codes automatic_tax "
    "billing_address_collection cancel_url client_reference_id consent_collection currency "
    "custom_fields custom_text customer customer_creation customer_email customer_update "
    "discounts expand expires_at invoice_creation line_items locale metadata mode "
    "optional_items payment_intent_data payment_method_collection "
    "payment_method_configuration payment_method_data payment_method_options "
    "payment_method_types permissions phone_number_collection redirect_on_completion "
    "return_url saved_payment_method_options setup_intent_data shipping_address_collection "
    "shipping_options submit_type subscription_data success_url tax_id_collection "
    "ui_mode"
)
_SESSION_LINE_ITEM = names(
    "adjustable_quantity dynamic_tax_rates price price_data quantity tax_rates"
)
_SESSION_PI_DATA = names(
    "application_fee_amount capture_method description metadata on_behalf_of receipt_email "
    "setup_future_usage shipping statement_descriptor statement_descriptor_suffix "
    "transfer_data transfer_group"
)
_SESSION_SI_DATA = names("description metadata on_behalf_of")
_AUTOMATIC_TAX = names("enabled liability")
_INVOICE_CREATION = names("enabled invoice_data")
_CUSTOMER_UPDATE = names("address name shipping")
_LIST = names("ending_before expand limit starting_after")


class Checkout(PaymentIntents):
    def __init__(self, api_key: str = "sk_test_fakestripe") -> None:
        super().__init__(api_key)
        # Stripe Tax, as the fake computes it: exclusive tax in basis points of the subtotal.
        self.tax_bps = 0
        self._pi_data: dict[str, StripeObject] = {}
        self._si_data: dict[str, StripeObject] = {}

    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            ("POST", r"/v1/checkout/sessions", self._create_session),
            ("GET", r"/v1/checkout/sessions/(?P<id>[^/]+)", self._retrieve_session),
            ("GET", r"/v1/checkout/sessions/(?P<id>[^/]+)/line_items", self._list_line_items),
            ("GET", r"/v1/setup_intents/(?P<id>[^/]+)", self._retrieve_setup_intent),
        ]

    # -- test controls -----------------------------------------------------------------------

    def session(self, session_id: str) -> StripeObject:
        """A copy of the stored Checkout Session."""
        return copy.deepcopy(self.sessions[session_id])

    def complete_session(
        self,
        session_id: str,
        payment_status: str = "paid",
        *,
        payment_method: str | None = None,
    ) -> StripeObject:
        """What the customer paying on the hosted page does. Payment mode: the PaymentIntent
        is created now, ``succeeded`` with its Charge (``paid``) or ``processing``
        (``unpaid``: a delayed payment method); setup mode: a succeeded SetupIntent. The
        payment method (new unless given) is saved to the customer when the session set up
        future usage. The session becomes ``complete``, its ``url`` null. Sends
        checkout.session.completed (and the PaymentIntent's and Charge's events). Returns a
        copy of the session."""
        s = self.sessions[session_id]
        if s["status"] != "open":
            raise ValueError(f"session {session_id} is {s['status']}, not open")
        pm_id = payment_method or new_id("pm_")
        if pm_id not in self.payment_methods:
            self.payment_methods[pm_id] = payment_method_object(pm_id)
        email = (self.customers.get(s["customer"] or "") or {}).get("email") or s["customer_email"]
        s["customer_details"] = {"email": email, "name": None, "address": None}
        if s["mode"] == "setup":
            if payment_status != "no_payment_required":
                payment_status = "no_payment_required"
            self.attach(pm_id, s["customer"])
            si = self._setup_intent(s, pm_id)
            s.update(status="complete", payment_status=payment_status, url=None)
            s["setup_intent"] = si["id"]
            self.emit("setup_intent.succeeded", si)
            self.emit("checkout.session.completed", s)
            return self.session(session_id)
        if payment_status not in ("paid", "unpaid", "no_payment_required"):
            raise ValueError(f"no Checkout Session payment_status {payment_status!r}")
        s.update(status="complete", payment_status=payment_status, url=None)
        if payment_status != "no_payment_required":
            data = self._pi_data[session_id]
            future = data.get("setup_future_usage")
            if future:
                self.attach(pm_id, s["customer"])
            pi: StripeObject = {
                "id": new_id("pi_"),
                "object": "payment_intent",
                "amount": s["amount_total"],
                "amount_capturable": 0,
                "amount_received": 0,
                "automatic_payment_methods": None,
                "canceled_at": None,
                "cancellation_reason": None,
                "capture_method": "automatic",
                "client_secret": None,
                "confirmation_method": "automatic",
                "created": now(),
                "currency": s["currency"],
                "customer": s["customer"],
                "description": data.get("description"),
                "invoice": None,
                "last_payment_error": None,
                "latest_charge": None,
                "livemode": False,
                "metadata": copy.deepcopy(data.get("metadata") or {}),
                "next_action": None,
                "payment_method": pm_id,
                "payment_method_types": ["card"],
                "processing": None,
                "receipt_email": email,
                "setup_future_usage": future,
                "status": "processing",
            }
            self.payment_intents[pi["id"]] = pi
            s["payment_intent"] = pi["id"]
            if s["invoice_creation"] and s["invoice_creation"]["enabled"]:
                s["invoice"] = new_id("in_")
            if payment_status == "paid":
                self._succeed(pi)
        self.emit("checkout.session.completed", s)
        return self.session(session_id)

    def expire_session(self, session_id: str) -> StripeObject:
        """The session expires unpaid (``status`` ``expired``); returns a copy, e.g. for a
        ``checkout.session.expired`` event."""
        s = self.sessions[session_id]
        if s["status"] != "open":
            raise ValueError(f"session {session_id} is {s['status']}, not open")
        s.update(status="expired", url=None)
        self.emit("checkout.session.expired", s)
        return self.session(session_id)

    # -- sessions ----------------------------------------------------------------------------

    def _create_session(self, params: Params) -> StripeObject:
        check_known(params, _SESSION_CREATE)
        no_expand(params)
        mode = text(params, "mode")
        if mode is None:
            raise invalid("Missing required param: mode.", param="mode", code="parameter_missing")
        if mode not in ("payment", "setup"):
            raise invalid(f"fakestripe only implements payment and setup, not {mode}", param="mode")
        customer = self.existing_customer(params)
        reference = text(params, "client_reference_id")
        if reference is not None and not 1 <= len(reference) <= 200:
            raise invalid("client_reference_id is 1 to 200 characters", param="client_reference_id")
        if text(params, "ui_mode") not in (None, "hosted"):
            raise invalid("fakestripe only implements ui_mode=hosted", param="ui_mode")
        if text(params, "success_url") is None:
            raise invalid(
                "Missing required param: success_url.",
                param="success_url",
                code="parameter_missing",
            )
        pi_data = hash_param(params, "payment_intent_data", _SESSION_PI_DATA)
        si_data = hash_param(params, "setup_intent_data", _SESSION_SI_DATA)
        tax = hash_param(params, "automatic_tax", _AUTOMATIC_TAX)
        invoice = hash_param(params, "invoice_creation", _INVOICE_CREATION)
        update = hash_param(params, "customer_update", _CUSTOMER_UPDATE)
        types = str_list(params, "payment_method_types")
        if update and customer is None:
            raise invalid(
                "`customer_update` can only be used with `customer`.", param="customer_update"
            )
        for name, value in update.items():
            if value not in ("auto", "never"):
                raise invalid(f"Invalid customer_update[{name}]", param=f"customer_update[{name}]")
        if pi_data and mode != "payment":
            raise invalid(
                "`payment_intent_data` can only be used in `payment` mode.",
                param="payment_intent_data",
            )
        if si_data and mode != "setup":
            raise invalid(
                "`setup_intent_data` can only be used in `setup` mode.", param="setup_intent_data"
            )
        if invoice and mode != "payment":
            raise invalid(
                "`invoice_creation` can only be used in `payment` mode.", param="invoice_creation"
            )
        future = text(
            pi_data, "setup_future_usage", param="payment_intent_data[setup_future_usage]"
        )
        if future not in (None, "on_session", "off_session"):
            raise invalid(
                f"Invalid setup_future_usage: {future}",
                param="payment_intent_data[setup_future_usage]",
            )
        tax_on = tax.get("enabled") == "true"
        if tax_on and customer is not None:
            has_address = bool(self.customers[customer].get("address"))
            if not has_address and "auto" not in (update.get("address"), update.get("shipping")):
                raise invalid(
                    "Automatic tax calculation in Checkout requires a valid address on the "
                    "Customer. Add a valid address to the Customer or set either "
                    "customer_update[address] to 'auto' or customer_update[shipping] to 'auto' "
                    "to save the address entered in Checkout to the Customer.",
                    param="customer_update",
                )
        created = now()
        items: list[StripeObject] = []
        currency = text(params, "currency")
        if mode == "setup":
            if "line_items" in params:
                raise invalid("`line_items` cannot be used in `setup` mode.", param="line_items")
            if currency is None and types is None:
                raise invalid(
                    "Missing required param: currency. `currency` is required in setup mode "
                    "when `payment_method_types` is not set.",
                    param="currency",
                    code="parameter_missing",
                )
        else:
            items, currency = self._items(params, created)
        subtotal = sum(item["amount_total"] for item in items)
        amount_tax = subtotal * self.tax_bps // 10_000 if tax_on else 0
        session_id = _new_session_id()
        session: StripeObject = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": subtotal if mode == "payment" else None,
            "amount_total": subtotal + amount_tax if mode == "payment" else None,
            "automatic_tax": {
                "enabled": tax_on,
                "liability": None,
                "status": "complete" if tax_on else None,
            },
            "cancel_url": text(params, "cancel_url"),
            "client_reference_id": reference,
            "created": created,
            "currency": currency,
            "customer": customer,
            "customer_details": None,
            "customer_email": text(params, "customer_email"),
            "expires_at": created + 24 * 3600,
            "invoice": None,
            "invoice_creation": (
                {"enabled": invoice.get("enabled") == "true", "invoice_data": {}}
                if mode == "payment"
                else None
            ),
            "livemode": False,
            "metadata": metadata(params),
            "mode": mode,
            "payment_intent": None,
            "payment_method_types": types or ["card"],
            "payment_status": "unpaid" if mode == "payment" else "no_payment_required",
            "setup_intent": None,
            "status": "open",
            "success_url": text(params, "success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": amount_tax},
            "ui_mode": "hosted",
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
        }
        self._pi_data[session_id] = {
            "description": text(pi_data, "description"),
            "metadata": metadata(pi_data) if "metadata" in pi_data else {},
            "setup_future_usage": future,
        }
        self._si_data[session_id] = {
            "metadata": metadata(si_data) if "metadata" in si_data else {},
        }
        self.sessions[session_id] = session
        self._line_items[session_id] = items
        return copy.deepcopy(session)

    def _items(self, params: Params, created: int) -> tuple[list[StripeObject], str | None]:
        raw_items = params.get("line_items")
        if raw_items is None:
            raise invalid(
                "Missing required param: line_items.", param="line_items", code="parameter_missing"
            )
        if not isinstance(raw_items, list) or not raw_items:
            raise invalid("Invalid array", param="line_items")
        if len(raw_items) > 100:
            raise invalid("A session has at most 100 line items", param="line_items")
        items: list[StripeObject] = []
        currency: str | None = None
        for i, raw in enumerate(raw_items):
            p = f"line_items[{i}]"
            if not isinstance(raw, dict):
                raise invalid("Invalid hash", param=p)
            check_known(raw, _SESSION_LINE_ITEM, p)
            if "price_data" in raw:
                raise invalid("fakestripe does not implement price_data", param=f"{p}[price_data]")
            price_id = text(raw, "price", param=f"{p}[price]")
            if price_id is None:
                raise invalid(
                    f"Missing required param: {p}[price].",
                    param=f"{p}[price]",
                    code="parameter_missing",
                )
            price = self.prices.get(price_id)
            if price is None:
                raise missing("price", price_id, f"{p}[price]")
            if not price["active"]:
                raise invalid(f"The price {price_id} is not active.", param=f"{p}[price]")
            if price["type"] != "one_time":
                raise invalid(
                    "You must provide at least one recurring price in `subscription` mode when "
                    "using prices; a recurring price cannot be used in `payment` mode.",
                    param=f"{p}[price]",
                )
            quantity = integer(raw, "quantity", param=f"{p}[quantity]")
            if quantity is None:
                raise invalid(
                    f"Missing required param: {p}[quantity].",
                    param=f"{p}[quantity]",
                    code="parameter_missing",
                )
            if quantity < 1:
                raise invalid("This value must be greater than 0.", param=f"{p}[quantity]")
            if currency is not None and price["currency"] != currency:
                raise invalid(
                    "All line items of a session must have the same currency", param=f"{p}[price]"
                )
            currency = price["currency"]
            amount = price["unit_amount"] * quantity
            items.append(
                {
                    "id": new_id("li_"),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": price["currency"],
                    "description": price["nickname"],
                    "price": copy.deepcopy(price),
                    "quantity": quantity,
                }
            )
        return items, currency

    def _retrieve_session(self, params: Params, id: str) -> StripeObject:
        check_known(params, frozenset({"expand"}))
        no_expand(params)
        if id not in self.sessions:
            raise missing("checkout.session", id, "session", status=404)
        return self.session(id)

    def _list_line_items(self, params: Params, id: str) -> StripeObject:
        check_known(params, _LIST)
        no_expand(params)
        if id not in self.sessions:
            raise missing("checkout.session", id, "session", status=404)
        return page(
            params, copy.deepcopy(self._line_items[id]), f"/v1/checkout/sessions/{id}/line_items"
        )

    # -- setup intents -----------------------------------------------------------------------

    def _setup_intent(self, s: StripeObject, pm_id: str) -> StripeObject:
        """https://docs.stripe.com/api/setup_intents/object"""
        si: StripeObject = {
            "id": new_id("seti_"),
            "object": "setup_intent",
            "automatic_payment_methods": None,
            "cancellation_reason": None,
            "client_secret": None,
            "created": now(),
            "customer": s["customer"],
            "description": None,
            "last_setup_error": None,
            "livemode": False,
            "metadata": copy.deepcopy(self._si_data[s["id"]]["metadata"]),
            "next_action": None,
            "payment_method": pm_id,
            "payment_method_types": s["payment_method_types"],
            "status": "succeeded",
            "usage": "off_session",
        }
        self.setup_intents[si["id"]] = si
        return si

    def _retrieve_setup_intent(self, params: Params, id: str) -> StripeObject:
        check_known(params, frozenset({"expand", "client_secret"}))
        no_expand(params)
        if id not in self.setup_intents:
            raise missing("setup_intent", id, "intent", status=404)
        return copy.deepcopy(self.setup_intents[id])


def _new_session_id() -> str:
    return new_id("cs_test_", 58)
