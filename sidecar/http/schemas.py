"""Request bodies, path and query parameters of the JSON API. Bodies are validated strictly:
integers must be JSON integers (no floats, no strings, no booleans), ids use a safe alphabet,
unknown fields are rejected by name.

The Lua scripts validate again before their first write; this layer gives callers the
precise field and reason.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from sidecar.ledger.results import (
    Allowance,
    Plan,
    RateLimit,
    SpendLimit,
)
from sidecar.ledger.tokens import MAX_GRACE_MS, Scope
from sidecar.ledger.units import MAX_CREDITS, MAX_TIMESTAMP_MS, MissingOffset, parse_rfc3339

ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=ID_PATTERN)]
Credits = Annotated[StrictInt, Field(ge=1, le=MAX_CREDITS)]
NonNegativeCredits = Annotated[StrictInt, Field(ge=0, le=MAX_CREDITS)]
# No NUL: PostgreSQL text cannot hold it (the SQL ledger would refuse the transaction).
Description = Annotated[str, StringConstraints(max_length=512, pattern=r"^[^\x00]*$")]
DurationMs = Annotated[StrictInt, Field(ge=1, le=366 * 86_400_000)]


def _metadata_size(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is None:
        return v
    try:
        json.dumps(v, allow_nan=False)
    except ValueError:
        raise ValueError("metadata must not contain NaN or Infinity") from None
    try:
        encoded = orjson.dumps(v, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        raise ValueError("metadata integers must be within +-(2^53-1)") from None
    if len(encoded) > 4096:
        raise ValueError("metadata must encode to at most 4096 bytes of JSON")
    return v


Metadata = Annotated[dict[str, Any] | None, AfterValidator(_metadata_size)]


def _parse_timestamp(v: object) -> object:
    """RFC 3339 strings (with an offset) become unix milliseconds; integers pass through."""
    if not isinstance(v, str):
        return v
    try:
        return parse_rfc3339(v)
    except MissingOffset:
        raise ValueError("timestamp needs a UTC offset (e.g. Z)") from None
    except ValueError:
        raise ValueError("must be unix milliseconds or an RFC 3339 timestamp") from None


# Unix milliseconds, or RFC 3339 with an offset; at most 9999-12-31T23:59:59.999Z. (The bounds
# come before the string parser so that the JSON Schema keeps them; it documents both forms.)
Timestamp = Annotated[
    StrictInt,
    Field(ge=1, le=MAX_TIMESTAMP_MS),
    BeforeValidator(_parse_timestamp),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_TIMESTAMP_MS},
                {"type": "string", "format": "date-time"},
            ],
            "description": "unix milliseconds, or RFC 3339 with an offset",
        }
    ),
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CheckRequest(Body):
    account: Id
    cost: Credits
    idempotency_key: Id
    description: Description = ""
    metadata: Metadata = None
    dry_run: Annotated[
        bool,
        Field(
            description="answer what the check would get, changing nothing (no transaction, "
            "rate-limit state, idempotency record or expiry)"
        ),
    ] = False


class UsageRequest(Body):
    account: Id
    cost: Credits
    idempotency_key: Id
    description: Description = ""
    metadata: Metadata = None


def _printable(v: str) -> str:
    # As the X-Audit-Reason header (contract.reason_of): no control, format (bidi overrides),
    # line or paragraph separator characters, which would garble the trail where it is shown.
    if not v.isprintable():
        raise ValueError("must be printable characters")
    return v


# Why a change is made, for the audit trail (docs/audit.md).
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_printable)]


class GrantRequest(Body):
    grant_id: Id
    credits: Credits
    expires_at: Timestamp | None = None
    priority: Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)] = 0
    source: Source = "manual"
    description: Description = ""
    metadata: Metadata = None
    reason: Reason | None = Field(
        None,
        validate_default=True,
        description="why (the audit trail, docs/audit.md): required for a manual grant",
    )

    @field_validator("reason")
    @classmethod
    def _reason_for_manual_grants(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("source") == "manual":
            raise ValueError("a manual grant needs a reason (the audit trail)")
        return v


class RateLimitBody(Body):
    requests: Annotated[StrictInt, Field(ge=1, le=1_000_000_000)]
    period_ms: DurationMs = 1000
    burst: Annotated[StrictInt, Field(ge=1, le=1_000_000_000)] | None = None

    def to_rate_limit(self) -> RateLimit:
        return RateLimit(self.requests, self.period_ms, self.burst or self.requests)


class SpendLimitBody(Body):
    """A cap on spending per window: ``interval_count`` ``interval``s, aligned to UTC calendar
    boundaries; no ``interval``: for the lifetime (then ``interval_count`` is 1)."""

    credits: Credits
    interval: Literal["day", "week", "month", "year"] | None = None
    interval_count: Annotated[StrictInt, Field(ge=1, le=1000)] = 1

    @field_validator("interval_count")
    @classmethod
    def _lifetime_is_one_window(cls, v: int, info: ValidationInfo) -> int:
        # (an interval that failed its own validation is not in info.data: not lifetime)
        if "interval" in info.data and info.data["interval"] is None and v != 1:
            raise PydanticCustomError(
                "lifetime_count", "interval_count must be 1 without an interval (a lifetime limit)"
            )
        return v

    def to_spend_limit(self) -> SpendLimit:
        return SpendLimit(self.credits, self.interval, self.interval_count)


LowBalanceThreshold = Annotated[StrictInt, Field(ge=-MAX_CREDITS, le=MAX_CREDITS)]


PlanId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN),
    Field(description="a plan (docs/plans.md); null: none"),
]
PlanAnchor = Annotated[
    Timestamp,
    Field(description="where the plan's periods count from (default: when the plan is set)"),
]


class AccountRequest(Body):
    """Every setting (one not sent is removed). ``plan`` not sent: the default plan for a new
    account, none for one that exists."""

    overdraft_limit: NonNegativeCredits = 0
    low_balance_threshold: LowBalanceThreshold | None = None
    rate_limit: RateLimitBody | None = None
    spend_limit: SpendLimitBody | None = None
    plan: PlanId | None = None
    plan_anchor: PlanAnchor | None = None


class AccountPatch(Body):
    """Only the settings sent change; ``null`` removes one (the overdraft cannot be removed:
    send 0)."""

    overdraft_limit: NonNegativeCredits = 0
    low_balance_threshold: LowBalanceThreshold | None = None
    rate_limit: RateLimitBody | None = None
    spend_limit: SpendLimitBody | None = None
    plan: PlanId | None = None
    plan_anchor: PlanAnchor | None = None


class AllowanceBody(Body):
    """What a plan issues each period (docs/plans.md)."""

    credits: Credits
    interval: Literal["day", "week", "month", "year"]
    interval_count: Annotated[StrictInt, Field(ge=1, le=1000)] = 1
    mode: Literal["reset", "accumulate"] = "reset"
    rollover_max: NonNegativeCredits | None = Field(
        None, description="only with mode accumulate: at most credits"
    )
    priority: Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)] = -1
    trigger: Literal["period"] = "period"

    @field_validator("rollover_max")
    @classmethod
    def _rollover_with_accumulate(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is None:
            return v
        if info.data.get("mode") != "accumulate":
            raise PydanticCustomError(
                "rollover_needs_accumulate", "rollover_max is only for mode accumulate"
            )
        credits = info.data.get("credits")
        if credits is not None and v > credits:
            raise PydanticCustomError("rollover_above_credits", "rollover_max must be <= credits")
        return v

    def to_allowance(self) -> Allowance:
        return Allowance(
            self.credits,
            self.interval,
            self.interval_count,
            self.mode,
            self.rollover_max,
            self.priority,
            self.trigger,
        )


class PlanRequest(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
    allowance: AllowanceBody
    rate_limit: RateLimitBody | None = None
    spend_limit: SpendLimitBody | None = None
    default: bool = False

    def to_plan(self) -> Plan:
        return Plan(
            self.name,
            self.allowance.to_allowance(),
            self.rate_limit.to_rate_limit() if self.rate_limit else None,
            self.spend_limit.to_spend_limit() if self.spend_limit else None,
            self.default,
        )


class KeyRequest(Body):
    name: Annotated[str, StringConstraints(max_length=128, pattern=r"^[^\x00]*$")] = ""
    rate_limit: RateLimitBody | None = None
    spend_limit: SpendLimitBody | None = None
    idempotency_key: Id | None = Field(
        None,
        description="a repeat with the same parameters answers 200 with the same key "
        "(`key: null`: the secret is shown only once); other parameters: 409",
    )


class TokenRequest(Body):
    """A sidecar API token to create (docs/tokens.md)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=5)]
    account_prefix: Id | None = Field(
        None, description="limit the token to the accounts whose id starts with this"
    )

    @field_validator("scopes")
    @classmethod
    def _distinct(cls, v: list[Scope]) -> list[Scope]:
        if len(set(v)) != len(v):
            raise ValueError("a scope is given twice")
        return v


class TokenRotateRequest(Body):
    grace_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE_MS // 1000)] = Field(
        3600, description="how long the token being replaced stays valid (default an hour)"
    )


class KeyPatch(Body):
    """An API key's settings to change: its spending limit (``null`` removes it)."""

    spend_limit: SpendLimitBody | None


class HoldRequest(Body):
    account: Id
    hold_id: Id
    amount: Credits
    ttl_ms: DurationMs | None = None
    description: Description = ""
    metadata: Metadata = None


class SettleRequest(Body):
    account: Id
    amount: NonNegativeCredits
    description: Description = ""
    metadata: Metadata = None


class ReleaseRequest(Body):
    account: Id
    description: Description = ""
    metadata: Metadata = None


class RefundRequest(Body):
    account: Id
    refund_id: Id
    transaction_id: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)
    ]
    amount: Credits | None = None
    description: Description = ""
    metadata: Metadata = None
    reason: Reason = Field(description="why (the audit trail, docs/audit.md)")


def _http_url(v: str) -> str:
    # Printable ASCII only (RFC 3986; percent-encode the rest): no spaces, control characters
    # or NUL, which PostgreSQL cannot store, and no lone surrogates.
    if not (v.startswith("https://") or v.startswith("http://")) or not all(
        "!" <= c <= "~" for c in v
    ):
        raise ValueError("must be an http(s) URL of printable ASCII characters")
    return v


Url = Annotated[
    str,
    StringConstraints(min_length=8, max_length=2048),
    AfterValidator(_http_url),
    Field(json_schema_extra={"pattern": r"^https?://[!-~]+$"}),  # documents _http_url
]
StripeId = Annotated[
    str, StringConstraints(min_length=3, max_length=200, pattern=r"^[A-Za-z0-9_]+$")
]


Currency = Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]
# An address Stripe accepts for receipts: one @, printable ASCII, no spaces (RFC 5321's 254).
Email = Annotated[
    str,
    StringConstraints(min_length=3, max_length=254, pattern=r"^[!-?A-~]+@[!-?A-~]+$"),
]


class PackageRequest(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
    credits: Credits
    stripe_price_id: StripeId | None = None
    price: Annotated[StrictInt, Field(ge=0, le=10**12)]  # minor units (cents)
    currency: Currency = "usd"
    credit_expiry_s: Annotated[StrictInt, Field(ge=1, le=10 * 366 * 86400)] | None = None
    active: bool = True


class CheckoutItem(Body):
    package_id: Id
    quantity: Annotated[StrictInt, Field(ge=1, le=1000)] = 1


class CheckoutRequest(Body):
    # Exactly one of package_id and items (the handler checks; the schema documents it).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {
                    "required": ["package_id"],
                    "properties": {"package_id": {"type": "string"}, "items": {"type": "null"}},
                },
                {
                    "required": ["items"],
                    "properties": {"items": {"type": "array"}, "package_id": {"type": "null"}},
                },
            ]
        }
    )

    account: Id
    package_id: Id | None = None
    items: Annotated[list[CheckoutItem], Field(min_length=1, max_length=20)] | None = None
    success_url: Url
    cancel_url: Url
    idempotency_key: Id | None = None
    save_card: bool = False  # the customer opts in: the card is kept for auto top-up
    email: Email | None = None  # the billing email of an account that has none (receipts)


class SetupCheckoutRequest(Body):
    account: Id
    success_url: Url
    cancel_url: Url | None = None
    currency: Currency = "usd"
    idempotency_key: Id | None = None
    email: Email | None = None


class BillingProfileRequest(Body):
    email: Email | None


class AutoTopUpRequest(Body):
    threshold: Annotated[StrictInt, Field(ge=-MAX_CREDITS, le=MAX_CREDITS)]
    package_id: Id
    payment_method: StripeId
    enabled: bool = True


class NotificationRequest(Body):
    url: Url


ID = TypeAdapter(Id)


# -- path parameters -------------------------------------------------------------------------


class Path(BaseModel):
    """Path parameters: each an id unless it says otherwise (422 naming it)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class AccountPath(Path):
    account: Id = Field(description="the account's id")


class PlanPath(Path):
    plan: PlanId = Field(description="the plan's id")


class HoldPath(Path):
    hold_id: Id = Field(description="the hold's id")


class TokenPath(Path):
    token_id: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9]+$")
    ] = Field(description="the token's id")


class KeyPath(Path):
    key_id: Id = Field(description="the key's id (key_…)")


class PackagePath(Path):
    package_id: Id = Field(description="the package's id")


class EventPath(Path):
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=255)] = Field(
        description="the Stripe event's id"
    )


class TailPath(Path):
    tail: str = Field(description="the original path")
