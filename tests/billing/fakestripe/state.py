"""What every resource of the fake shares: the stored objects (live dicts; the API returns
copies), the payment behaviours tests give payment methods, and the events Stripe would send
about each change (``events``; tests deliver them to the webhook in any order)."""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, NamedTuple

from tests.billing.fakestripe.forms import StripeObject, new_id, now
from tests.billing.fakestripe.webhooks import event


class RecordedRequest(NamedTuple):
    """One request as it reached the fake (before authentication, faults and replays)."""

    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None


class Behaviour(NamedTuple):
    """What confirming a PaymentIntent with a payment method does (``FakeStripe.decline``,
    ``require_authentication``, ``process_slowly``)."""

    kind: str  # "decline" | "processing"
    code: str = ""
    decline_code: str | None = None
    message: str = ""


class Fault(NamedTuple):
    status: int
    should_retry: bool | None
    stored: bool  # the endpoint ran and failed: kept under the idempotency key
    ran: bool = False  # what the request does was done before the failure


class Stored(NamedTuple):
    method: str
    path: str
    params: dict[str, Any]
    status: int
    body: bytes
    headers: dict[str, str]


class State:
    """The stored objects by id, and the event log."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.customers: dict[str, StripeObject] = {}
        self.prices: dict[str, StripeObject] = {}
        self.sessions: dict[str, StripeObject] = {}
        self.payment_intents: dict[str, StripeObject] = {}
        self.charges: dict[str, StripeObject] = {}
        self.refunds: dict[str, StripeObject] = {}
        self.disputes: dict[str, StripeObject] = {}
        self.payment_methods: dict[str, StripeObject] = {}
        self.setup_intents: dict[str, StripeObject] = {}
        self.webhook_endpoints: dict[str, StripeObject] = {}
        self.events: list[StripeObject] = []
        self._line_items: dict[str, list[StripeObject]] = {}
        self._behaviours: dict[str, Behaviour] = {}
        self._faults: deque[Fault] = deque()
        self._drops = 0
        self._idempotent: dict[str, Stored] = {}

    def emit(self, etype: str, obj: StripeObject) -> StripeObject:
        """Records (and returns) the event Stripe would send about ``obj`` now."""
        e = event(etype, copy.deepcopy(obj))
        self.events.append(e)
        return e

    def attach(self, payment_method: str, customer: str | None) -> None:
        """A payment method saved for a customer (created if the fake does not know it)."""
        pm = self.payment_methods.get(payment_method)
        if pm is None:
            pm = self.payment_methods[payment_method] = payment_method_object(payment_method)
        if customer is not None:
            pm["customer"] = customer

    def new_charge(self, pi: StripeObject) -> StripeObject:
        """The successful Charge of a PaymentIntent that just succeeded (its latest_charge).
        https://docs.stripe.com/api/charges/object (``refunds`` is not included by default
        since API version 2022-11-15)"""
        charge: StripeObject = {
            "id": new_id("ch_"),
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": pi["amount"],
            "amount_refunded": 0,
            "balance_transaction": new_id("txn_"),
            "captured": True,
            "created": now(),
            "currency": pi["currency"],
            "customer": pi["customer"],
            "description": pi["description"],
            "disputed": False,
            "failure_code": None,
            "failure_message": None,
            "invoice": None,
            "livemode": False,
            "metadata": copy.deepcopy(pi["metadata"]),
            "paid": True,
            "payment_intent": pi["id"],
            "payment_method": pi["payment_method"],
            "receipt_email": pi.get("receipt_email"),
            "receipt_url": f"https://pay.stripe.test/receipts/{pi['id']}",
            "refunded": False,
            "status": "succeeded",
        }
        self.charges[charge["id"]] = charge
        pi.update(status="succeeded", amount_received=pi["amount"], latest_charge=charge["id"])
        return charge


def payment_method_object(pm_id: str, pm_type: str = "card") -> StripeObject:
    """https://docs.stripe.com/api/payment_methods/object"""
    pm: StripeObject = {
        "id": pm_id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "created": now(),
        "customer": None,
        "livemode": False,
        "metadata": {},
        "type": pm_type,
    }
    if pm_type == "card":
        pm["card"] = {"brand": "visa", "exp_month": 12, "exp_year": 2034, "last4": "4242"}
    return pm
