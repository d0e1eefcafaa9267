"""What every part of billing works with: the ledger, the SQL stores (one per kind of thing
stored, all on one ``Sql``), Stripe (if configured), the settings and the clock; and the one
place that makes a Stripe customer for an account."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidecar.billing.gateway import StripeGateway
from sidecar.billing.stores import (
    CustomerStore,
    EventStore,
    NotificationStore,
    PackageStore,
    PurchaseStore,
    Sql,
    TopUpStore,
)
from sidecar.errors import BillingNotConfigured
from sidecar.ledger.calls import (
    Clock,
    Ledger,
)
from sidecar.settings import Settings


class Permanent(Exception):
    """Processing cannot succeed as things stand (an unknown price, a session without an
    account): the event is retried a few times, then kept as a dead letter to look at."""


class Refused(Permanent):
    """The event cannot be reconciled as it is (another currency than its charge, an API
    version we do not read): kept as a dead letter at once, with the reason."""


class NotYet(Exception):
    """Processing depends on something not yet recorded (a refund before its purchase):
    retried with backoff like a transient error."""


@dataclass
class Billing:
    ledger: Ledger
    sql: Sql
    gateway: StripeGateway | None
    settings: Settings
    clock: Clock
    # The Stripe webhook endpoints and their API versions, as read at start (apiversion.py).
    endpoints: list[dict[str, Any]] | None = None
    # The stores, all on ``sql``: each caller uses the one for what it reads or writes.
    packages: PackageStore = field(init=False)
    customers: CustomerStore = field(init=False)
    events: EventStore = field(init=False)
    purchases: PurchaseStore = field(init=False)
    topups: TopUpStore = field(init=False)
    notifications: NotificationStore = field(init=False)

    def __post_init__(self) -> None:
        self.packages = PackageStore(self.sql)
        self.customers = CustomerStore(self.sql)
        self.events = EventStore(self.sql)
        self.purchases = PurchaseStore(self.sql)
        self.topups = TopUpStore(self.sql)
        self.notifications = NotificationStore(self.sql)

    def stripe(self) -> StripeGateway:
        if self.gateway is None:
            raise BillingNotConfigured("Stripe is not configured (SIDECAR_STRIPE_API_KEY)")
        return self.gateway

    async def customer(self, account: str) -> str:
        """The account's Stripe customer, created once (Stripe's idempotency key and a
        conditional SQL write keep concurrent callers on one customer), with the account's
        billing email when it has one (Stripe sends receipts there)."""
        existing = await self.customers.customer(account)
        if existing:
            return existing
        email = await self.customers.billing_email(account)
        created = await self.stripe().create_customer(account, email)
        return await self.customers.set_customer(account, created)

    async def granted(self, account: str, bucket: str) -> int:
        """What a purchase's bucket that refused a second grant (a redelivered event, a
        retried fulfilment) was granted, for the purchase to record as the first grant did:
        not the package's credits of today (it may have changed since), and not read from
        the balance, which lists only live buckets."""
        credits = await self.ledger.granted_credits(account, bucket)
        if credits is None:  # a conflict means the bucket exists
            raise Permanent(f"bucket {bucket} of {account} refused a grant but has no record")
        return credits
