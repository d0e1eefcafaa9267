"""The customer portal's request bodies (pydantic, validated by the registry) and answers
(msgspec Structs) where the admin API has none to lend (docs/portal.md). The portal's reads
answer with the admin API's own models: one shape per thing, whoever asks."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta
from pydantic import Field, StringConstraints

from sidecar.http.billing_responses import AutoTopUp
from sidecar.http.responses import Model, SpendLimitView, SpendView, Time
from sidecar.http.schemas import (
    Body,
    Id,
    KeyRequest,
    LowBalanceThreshold,
    Path,
    SpendLimitBody,
    Url,
)
from sidecar.ledger.portal import Section

# BCP 47, as Intl takes it: en, en-GB, zh-Hant-TW
Locale = Annotated[
    str,
    StringConstraints(min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"),
]
IdempotencyKey = Annotated[
    Id, Field(description="made once per intent by the page; a retry reuses it")
]


class PortalSessionRequest(Body):
    return_url: Url | None = Field(None, description="your app's page the portal links back to")
    locale: Locale | None = Field(None, description="BCP 47; default: the browser's")
    sections: Annotated[list[Section], Field(min_length=1, max_length=8)] | None = Field(
        None, description="what the portal shows (default: all this deployment can serve)"
    )


class PortalCheckoutRequest(Body):
    package_id: Id
    quantity: Annotated[int, Field(ge=1, le=100, strict=True)] = 1
    idempotency_key: IdempotencyKey


class PortalSetupRequest(Body):
    idempotency_key: IdempotencyKey


class PortalKeyRequest(KeyRequest):
    """A key the customer makes: a name and an optional spending limit (a rate limit is the
    business's to set)."""

    rate_limit: None = Field(None, description="not settable from the portal")
    idempotency_key: IdempotencyKey  # required: a double click makes one key


class PortalSpendLimitRequest(Body):
    spend_limit: SpendLimitBody | None = Field(description="null removes it")


class PortalAlertsRequest(Body):
    low_balance_threshold: LowBalanceThreshold | None = Field(
        description="alert when the balance falls to this (null: no alert)"
    )


class CheckoutSessionPath(Path):
    session_id: Annotated[
        str, StringConstraints(min_length=3, max_length=255, pattern=r"^cs_[A-Za-z0-9_]+$")
    ] = Field(description="the Stripe Checkout Session's id")


# -- answers ---------------------------------------------------------------------------------


class PortalSessionCreated(Model):
    id: str
    account: str
    url: Annotated[str, Meta(description="send the customer here; it opens once")]
    expires_at: Annotated[Time, Meta(description="the link works until then")]
    session_ttl_s: Annotated[int, Meta(description="how long the session lasts once opened")]
    return_url: str | None
    locale: str | None
    sections: list[Section]


class PortalSessionsRevoked(Model):
    account: Annotated[str | None, Meta(description="null: every account's")]
    revoked: bool


class Branding(Model):
    product_name: str
    logo_url: str | None
    accent_color: str
    support_url: str | None


class Features(Model):
    billing: Annotated[bool, Meta(description="Stripe is configured: buying, auto top-up")]
    billing_portal: Annotated[bool, Meta(description="the account has a Stripe customer")]
    plans: Annotated[bool, Meta(description="the account is on a plan")]


class PortalSessionView(Model):
    account: str
    expires_at: Time
    return_url: str | None
    locale: str | None
    sections: Annotated[list[Section], Meta(description="asked for and servable here")]
    csrf_token: Annotated[str, Meta(description="send it as X-CSRF-Token with every change")]
    branding: Branding
    features: Features


class PortalAutoTopUp(Model):
    account: str
    auto_topup: Annotated[AutoTopUp | None, Meta(description="null: none set")]


class PortalCheckout(Model):
    id: str
    url: str | None
    account: str
    replayed: Annotated[
        bool, Meta(description="the session an earlier call with this idempotency_key made")
    ]


class PortalSignedOut(Model):
    ended: bool


class PortalAlerts(Model):
    account: str
    low_balance_threshold: int | None


class PortalSpendLimit(Model):
    account: str
    spend_limit: SpendLimitView | None
    spend: SpendView | None


class PurchaseStatus(Model):
    session_id: str
    status: Annotated[
        Literal["pending", "granted", "failed", "expired", "unknown"],
        Meta(
            description="pending: paid or being paid, credits not granted yet; failed: a "
            "delayed payment that failed; unknown: not a purchase this account started here"
        ),
    ]
    credits: int | None


class BillingPortalLink(Model):
    url: str
