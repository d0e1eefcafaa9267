"""Customers and their saved payment methods, and Prices.

https://docs.stripe.com/api/customers/create, /update, /retrieve;
https://docs.stripe.com/api/payment_methods/retrieve, /customer_list;
https://docs.stripe.com/api/prices/retrieve."""

from __future__ import annotations

import copy

from tests.billing.fakestripe.forms import (
    Params,
    StripeObject,
    check_known,
    hash_param,
    metadata,
    missing,
    names,
    new_id,
    no_expand,
    now,
    page,
    text,
)
from tests.billing.fakestripe.server import Route, Server
from tests.billing.fakestripe.state import payment_method_object

# Top-level parameters of the real endpoints (Stripe refuses others).
_CUSTOMER_CREATE = names(
    "address balance cash_balance description email expand invoice_prefix invoice_settings "
    "metadata name next_invoice_sequence payment_method phone preferred_locales shipping "
    "source tax tax_exempt tax_id_data test_clock"
)
_CUSTOMER_UPDATE = names(
    "address balance cash_balance default_source description email expand invoice_prefix "
    "invoice_settings metadata name next_invoice_sequence phone preferred_locales shipping "
    "source tax tax_exempt"
)
_ADDRESS = names("city country line1 line2 postal_code state")
_RETRIEVE = frozenset({"expand"})
_LIST = frozenset({"ending_before", "expand", "limit", "starting_after"})
_PM_LIST = _LIST | {"type", "allow_redisplay"}


class Customers(Server):
    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            ("POST", r"/v1/customers", self._create_customer),
            ("GET", r"/v1/customers/(?P<id>[^/]+)", self._retrieve_customer),
            ("POST", r"/v1/customers/(?P<id>[^/]+)", self._update_customer),
            (
                "GET",
                r"/v1/customers/(?P<id>[^/]+)/payment_methods",
                self._customer_payment_methods,
            ),
            ("GET", r"/v1/payment_methods/(?P<id>[^/]+)", self._retrieve_payment_method),
            ("GET", r"/v1/prices/(?P<id>[^/]+)", self._retrieve_price),
        ]

    # -- test controls -----------------------------------------------------------------------

    def add_price(
        self,
        price_id: str,
        unit_amount: int,
        currency: str = "usd",
        *,
        description: str | None = None,
        recurring: bool = False,
        active: bool = True,
    ) -> None:
        """A Price that Checkout Sessions may use; ``description`` (the product's name, shown
        on line items) defaults to the price id. ``unit_amount`` is in the currency's
        smallest unit (yen for JPY: https://docs.stripe.com/currencies#zero-decimal)."""
        self.prices[price_id] = {
            "id": price_id,
            "object": "price",
            "active": active,
            "billing_scheme": "per_unit",
            "created": now(),
            "currency": currency,
            "livemode": False,
            "lookup_key": None,
            "metadata": {},
            "nickname": description or price_id,
            "product": new_id("prod_", 14),
            "recurring": {"interval": "month", "interval_count": 1} if recurring else None,
            "tax_behavior": "unspecified",
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        }

    def add_payment_method(
        self, customer: str | None, payment_method: str | None = None, *, type: str = "card"
    ) -> str:
        """A payment method saved for ``customer`` (None: one nobody saved); returns its id."""
        pm_id = payment_method or new_id("pm_")
        self.payment_methods[pm_id] = payment_method_object(pm_id, type)
        self.attach(pm_id, customer)
        return pm_id

    # -- customers ---------------------------------------------------------------------------

    def _create_customer(self, params: Params) -> StripeObject:
        check_known(params, _CUSTOMER_CREATE)
        no_expand(params)
        customer: StripeObject = {
            "id": new_id("cus_", 14),
            "object": "customer",
            "address": None,
            "created": now(),
            "description": text(params, "description"),
            "email": text(params, "email"),
            "name": text(params, "name"),
            "phone": text(params, "phone"),
            "livemode": False,
            "metadata": metadata(params),
            "balance": 0,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "invoice_settings": {"default_payment_method": None},
        }
        if "address" in params:
            customer["address"] = dict(hash_param(params, "address", _ADDRESS))
        self.customers[customer["id"]] = customer
        return copy.deepcopy(customer)

    def _customer(self, id: str) -> StripeObject:
        if id not in self.customers:
            raise missing("customer", id, "id", status=404)
        return self.customers[id]

    def _retrieve_customer(self, params: Params, id: str) -> StripeObject:
        check_known(params, _RETRIEVE)
        no_expand(params)
        return copy.deepcopy(self._customer(id))

    def _update_customer(self, params: Params, id: str) -> StripeObject:
        check_known(params, _CUSTOMER_UPDATE)
        no_expand(params)
        customer = self._customer(id)
        for name in ("description", "email", "name", "phone"):
            if name in params:
                customer[name] = text(params, name) or None
        if "metadata" in params:
            customer["metadata"] |= metadata(params)
        if "address" in params:
            customer["address"] = dict(hash_param(params, "address", _ADDRESS))
        return copy.deepcopy(customer)

    def existing_customer(self, params: Params) -> str | None:
        customer = text(params, "customer")
        if customer is not None and customer not in self.customers:
            raise missing("customer", customer, "customer")
        return customer

    # -- payment methods ---------------------------------------------------------------------

    def _retrieve_payment_method(self, params: Params, id: str) -> StripeObject:
        check_known(params, _RETRIEVE)
        no_expand(params)
        if id not in self.payment_methods:
            raise missing("payment_method", id, "payment_method", status=404)
        return copy.deepcopy(self.payment_methods[id])

    def _customer_payment_methods(self, params: Params, id: str) -> StripeObject:
        check_known(params, _PM_LIST)
        no_expand(params)
        self._customer(id)
        kind = text(params, "type")
        mine = [
            copy.deepcopy(pm)
            for pm in reversed(self.payment_methods.values())
            if pm["customer"] == id and (kind is None or pm["type"] == kind)
        ]
        return page(params, mine, f"/v1/customers/{id}/payment_methods")

    # -- prices ------------------------------------------------------------------------------

    def _retrieve_price(self, params: Params, id: str) -> StripeObject:
        check_known(params, _RETRIEVE)
        no_expand(params)
        if id not in self.prices:
            raise missing("price", id, "price", status=404)
        return copy.deepcopy(self.prices[id])
