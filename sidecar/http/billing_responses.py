"""Response bodies of the billing routes (sidecar/http/billing.py, stripe_events.py): packages,
Checkout, payment methods, auto top-up, notifications, Stripe webhooks and billing events.
msgspec Structs like every body (sidecar/http/responses.py has the rest and the conventions)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from sidecar.http.responses import AnyObject, CreditsOut, Model


class PackageView(Model):
    id: str
    name: str
    credits: CreditsOut
    stripe_price_id: str | None
    price: Annotated[
        int,
        Meta(
            description="the currency's minor unit (cents; yen for JPY, a zero-decimal "
            "currency); the same as its Stripe Price's unit_amount"
        ),
    ]
    currency: str
    credit_expiry_s: int | None
    active: bool
    price_display: Annotated[str, Meta(description="e.g. 5.00 USD, 500 JPY")]


class PackageList(Model):
    packages: list[PackageView]


class CheckoutSession(Model):
    id: str
    url: str | None
    account: str


class PaymentMethod(Model):
    id: str
    type: str
    label: str


class PaymentMethods(Model):
    account: str
    customer: str | None
    payment_methods: list[PaymentMethod]


class BillingProfile(Model):
    account: str
    email: str | None
    customer: str | None


class AutoTopUp(Model):
    account: str
    enabled: bool
    threshold: int
    package_id: str
    payment_method: str
    paused: bool
    failures: int
    last_error: str | None
    needs_customer: Annotated[
        bool,
        Meta(
            description="a charge needed the customer (authentication): no off-session charge "
            "until they pay the link or the auto top-up is set again"
        ),
    ]
    action_url: str | None
    action_payment_intent: str | None
    pending_payment_intent: str | None


class Deleted(Model):
    account: str
    deleted: bool


class NotificationEndpoint(Model):
    account: str
    url: str
    secret: Annotated[str, Meta(description="the signing secret: shown only here")]
    header: str


class Delivery(Model):
    id: str
    status: str
    attempts: int
    last_error: str | None
    payload: AnyObject


class Notifications(Model):
    account: str
    url: str | None
    deliveries: list[Delivery]


class WebhookReceived(Model):
    received: Literal[True]
    id: str
    duplicate: bool


class BillingEvent(Model):
    id: str
    type: str
    status: str
    attempts: int
    outcome: str | None
    error: str | None
    received_at: str


class BillingEvents(Model):
    events: list[BillingEvent]


class WebhookEndpoint(Model):
    id: str
    url: str
    api_version: str | None
    matches: bool
    sidecar: bool


class BillingStatus(Model):
    events: dict[str, int]
    deliveries: dict[str, int]
    stripe: bool
    api_version: Annotated[str, Meta(description="the Stripe API version billing reads (pinned)")]
    webhook_endpoints: list[WebhookEndpoint] | None


class EventRetried(Model):
    id: str
    status: Literal["received"]
