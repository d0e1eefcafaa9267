"""Typed results. Each is a frozen dataclass of the fields the client reads, named as in the
sidecar's ``/openapi.json`` schema it comes from (``SCHEMA``; tests/clients/test_contract.py checks
every field against that schema), plus ``raw``: the whole JSON answer, fields added by newer
sidecars included."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

T = TypeVar("T", bound="Model")


@dataclass(frozen=True, kw_only=True)
class Model:
    SCHEMA: ClassVar[tuple[str, ...]] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls) if f.name != "raw"}
        return cls(raw=data, **{k: v for k, v in data.items() if k in names})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "raw")


@dataclass(frozen=True, kw_only=True)
class RateLimitState(Model):
    """The tightest rate limiter of a check (IETF RateLimit header fields)."""

    SCHEMA: ClassVar[tuple[str, ...]] = ("RateLimitState",)
    policy: str = ""
    limit: int = 0
    remaining: int = 0
    reset_ms: int = 0
    period_ms: int = 0


@dataclass(frozen=True, kw_only=True)
class CheckResult(Model):
    """An allowed check (``POST /v1/check`` 200). ``charged`` is False for a dry run, a shadow
    decision, or a check let through by ``fail_open`` while the sidecar was unreachable
    (``unchecked`` True, then nothing else is known)."""

    SCHEMA: ClassVar[tuple[str, ...]] = ("CheckAllowed", "CheckShadowed")
    allowed: bool = True
    account: str = ""
    balance: int | None = None
    cost: int | None = None
    transaction_id: str | None = None
    replayed: bool = False
    low_balance: bool = False
    dry_run: bool = False
    charged: bool = True
    shadow: dict[str, Any] | None = None
    rate_limit: dict[str, Any] | None = None
    unchecked: bool = False

    @property
    def rate_limit_state(self) -> RateLimitState | None:
        return RateLimitState.from_json(self.rate_limit) if self.rate_limit else None


@dataclass(frozen=True, kw_only=True)
class UsageRecorded(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("UsageRecorded",)
    account: str = ""
    cost: int = 0
    transaction_id: str = ""
    balance: int = 0
    debt_added: int = 0
    replayed: bool = False


@dataclass(frozen=True, kw_only=True)
class Hold(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("Hold",)
    account: str = ""
    hold_id: str = ""
    amount: int = 0
    state: str = ""
    transaction_id: str = ""
    balance: int = 0
    expires_at: str | None = None
    replayed: bool = False


@dataclass(frozen=True, kw_only=True)
class HoldClosed(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("HoldClosed",)
    account: str = ""
    hold_id: str = ""
    state: str = ""
    charged: int = 0
    forfeited: int = 0
    uncovered: int = 0
    transaction_id: str = ""
    balance: int = 0
    replayed: bool = False


@dataclass(frozen=True, kw_only=True)
class Balance(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("Balance",)
    account: str = ""
    balance: int = 0
    available: int = 0
    held: int = 0
    debt: int = 0
    overdraft_limit: int = 0
    low_balance_threshold: int | None = None
    rate_limit: dict[str, Any] | None = None
    buckets: list[dict[str, Any]] = field(default_factory=list)
    spend: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class AccountSettings(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("AccountSettings",)
    account: str = ""
    created: bool = False
    overdraft_limit: int = 0
    low_balance_threshold: int | None = None
    rate_limit: dict[str, Any] | None = None
    spend_limit: dict[str, Any] | None = None
    plan: str | None = None


@dataclass(frozen=True, kw_only=True)
class Granted(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("Granted",)
    account: str = ""
    grant_id: str = ""
    credits: int = 0
    transaction_id: str = ""
    balance: int = 0
    replayed: bool = False


@dataclass(frozen=True, kw_only=True)
class Key(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("Key", "KeyCreated")
    key_id: str = ""
    account: str = ""
    name: str | None = None
    prefix: str = ""
    created_at: str | None = None
    rate_limit: dict[str, Any] | None = None
    revoked_at: str | None = None
    spend_limit: dict[str, Any] | None = None
    spend: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class KeyCreated(Key):
    """``key`` is the secret, shown to the first call only: None on a replay."""

    SCHEMA: ClassVar[tuple[str, ...]] = ("KeyCreated",)
    key: str | None = None
    replayed: bool = False


@dataclass(frozen=True, kw_only=True)
class Plan(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("PlanView",)
    plan: str = ""
    name: str = ""
    allowance: dict[str, Any] = field(default_factory=dict)
    rate_limit: dict[str, Any] | None = None
    spend_limit: dict[str, Any] | None = None
    default: bool = False
    accounts: int = 0


@dataclass(frozen=True, kw_only=True)
class Token(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("TokenView", "TokenCreated")
    token_id: str = ""
    name: str = ""
    scopes: list[str] = field(default_factory=list)
    account_prefix: str | None = None
    created_at: str | None = None
    rotated_at: str | None = None
    revoked_at: str | None = None
    previous_valid_until: str | None = None
    last_used_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class TokenCreated(Token):
    """``token`` is the secret, shown only by the call that made it."""

    SCHEMA: ClassVar[tuple[str, ...]] = ("TokenCreated",)
    token: str = ""


@dataclass(frozen=True, kw_only=True)
class PortalSession(Model):
    SCHEMA: ClassVar[tuple[str, ...]] = ("PortalSessionCreated",)
    id: str = ""
    account: str = ""
    url: str = ""
    expires_at: str = ""
    session_ttl_s: int = 0
    return_url: str | None = None
    locale: str | None = None
    sections: list[str] | None = None


@dataclass(frozen=True, kw_only=True)
class Authorized(Model):
    """A request allowed by its API key (``authorize``): what the forward auth's headers say
    (``X-Credits-*``); ``raw`` is its JSON body (``reason``: ``allowed``, or ``fail_open`` when
    the sidecar's own failure policy let it through uncharged)."""

    SCHEMA: ClassVar[tuple[str, ...]] = ("AuthOutcome",)
    allowed: bool = True
    reason: str = "allowed"
    account: str = ""
    balance: int | None = None
    cost: int | None = None
    transaction_id: str | None = None
    replayed: bool = False
    dry_run: bool = False
    unchecked: bool = False  # fail_open, the sidecar unreachable: nothing known, not the account
    # the answer's RateLimit and RateLimit-Policy header fields, as the sidecar wrote them
    rate_limit_headers: dict[str, str] = field(default_factory=dict)
