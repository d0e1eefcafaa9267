"""The typed results of ledger calls (sidecar/ledger/calls.py), as decoded from the scripts' replies
by sidecar/ledger/replies.py. Plain frozen dataclasses: they are built on every check, and a slots
dataclass is the cheapest typed record to build (see changes/replies.md for the numbers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    period_ms: int
    burst: int


SPEND_INTERVALS = ("day", "week", "month", "year")


@dataclass(frozen=True, slots=True)
class SpendLimit:
    """A cap on what an account or an API key may spend per window: windows of
    ``interval_count`` ``interval``s aligned to UTC calendar boundaries (``interval`` None:
    one window, for ever). See "Spending limits" in sidecar/lua/_lib.lua."""

    credits: int
    interval: Literal["day", "week", "month", "year"] | None = None
    interval_count: int = 1

    def spec(self) -> str:
        """The scripts' form, ``credits:unit:count`` (unit ``life`` without an interval)."""
        return f"{self.credits}:{self.interval or 'life'}:{self.interval_count}"

    @classmethod
    def from_spec(cls, spec: str) -> SpendLimit:
        credits, unit, count = spec.split(":")
        interval = None if unit == "life" else unit
        return cls(int(credits), interval, int(count))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SpendWindow:
    """A spending limit and what was spent in its current window (``ends_at`` None: never)."""

    limit: SpendLimit
    spent: int
    ends_at: int | None


PLAN_INTERVALS = ("day", "week", "month", "year")
ALLOWANCE_MODES = ("reset", "accumulate")


@dataclass(frozen=True, slots=True)
class Allowance:
    """What a plan issues each period (docs/plans.md): ``credits`` per ``interval_count``
    ``interval``s. ``mode`` reset: the unused credits expire at the period's end; accumulate:
    they stay, above ``rollover_max`` (None: no cap) cut at each renewal. ``priority``: its
    buckets' burn priority (-1: before grants and purchases)."""

    credits: int
    interval: Literal["day", "week", "month", "year"]
    interval_count: int = 1
    mode: Literal["reset", "accumulate"] = "reset"
    rollover_max: int | None = None
    priority: int = -1
    trigger: Literal["period"] = "period"

    def spec(self) -> str:
        """The scripts' form, ``credits:unit:count:mode:rollover:priority`` (rollover '' =
        none; sidecar/lua/plan.lua)."""
        roll = "" if self.rollover_max is None else self.rollover_max
        return (
            f"{self.credits}:{self.interval}:{self.interval_count}:{self.mode}:{roll}:"
            f"{self.priority}"
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """A plan's definition (docs/plans.md): its allowance, and the rate and spending limits an
    account on it gets unless it sets its own; ``default``: new accounts without a plan get it."""

    name: str
    allowance: Allowance
    rate_limit: RateLimit | None = None
    spend_limit: SpendLimit | None = None
    default: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Plan:
        """A definition as sidecar/lua/plan.lua writes it (``d:<plan>``, the kind=plan outbox
        entry, SQL's ``plans.definition``); ValueError (or KeyError, TypeError) if it is not one."""
        a = d["allowance"]
        interval, mode = a["interval"], a.get("mode", "reset")
        if interval not in PLAN_INTERVALS or mode not in ALLOWANCE_MODES:
            raise ValueError(f"not a plan's allowance: {a!r}")
        if a.get("trigger", "period") != "period":
            raise ValueError(f"unknown allowance trigger {a.get('trigger')!r}")
        roll, rl, sl = a.get("rollover_max"), d.get("rate_limit"), d.get("spend_limit")
        if sl is not None and sl.get("interval") not in (None, *SPEND_INTERVALS):
            raise ValueError(f"not a spending limit: {sl!r}")
        name = d["name"]
        if not isinstance(name, str):
            raise TypeError("a plan's name is text")
        return cls(
            name=name,
            allowance=Allowance(
                credits=_int(a["credits"]),
                interval=interval,
                interval_count=_int(a.get("interval_count", 1)),
                mode=mode,
                rollover_max=None if roll is None else _int(roll),
                priority=_int(a.get("priority", -1)),
            ),
            rate_limit=None
            if rl is None
            else RateLimit(_int(rl["requests"]), _int(rl["period_ms"]), _int(rl["burst"])),
            spend_limit=None
            if sl is None
            else SpendLimit(_int(sl["credits"]), sl.get("interval"), _int(sl["interval_count"])),
            default=d.get("default", False) is True,
        )


def _int(v: Any) -> int:
    """A JSON integer (not a bool, float or text)."""
    if type(v) is not int:
        raise TypeError(f"{v!r} is not an integer")
    return v


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """An account's settings after account.lua ran."""

    created: bool
    overdraft_limit: int
    low_balance_threshold: int | None
    rate_limit: RateLimit | None
    spend_limit: SpendLimit | None
    plan: str | None = None
    plan_anchor: int | None = None  # ms


@dataclass(frozen=True, slots=True)
class GrantResult:
    transaction_id: str
    balance: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class RateState:
    """What a check left of its tightest rate limiter (the RateLimit header fields)."""

    policy: Literal["account", "key", "route"]
    requests: int  # per period
    period_ms: int
    remaining: int  # requests that would pass now
    reset_ms: int  # until the limiter is whole again


@dataclass(frozen=True, slots=True)
class Allowed:
    transaction_id: str
    balance: int
    cost: int
    replayed: bool
    low_balance: bool
    allowed: Literal[True] = True
    rate: RateState | None = None  # None: no rate limit applies (or a replay)


@dataclass(frozen=True, slots=True)
class RevokeResult:
    """Credits of a refunded or disputed purchase taken back (see sidecar/lua/revoke.lua)."""

    transaction_id: str | None  # None: nothing changed (a duplicate, or an older view)
    taken: int  # from the purchase's buckets
    debt_added: int  # policy "negative": what its buckets no longer held
    unrecovered: int  # policy "unspent": what its buckets no longer held
    balance: int
    pending: int = 0  # held credits of its buckets, taken when their hold releases them
    given_back: int = 0  # a lower target: credits returned plus debt cancelled
    target: int = 0  # the clawback's target now
    version: int = 0  # the version of the view it was last set from


# Every check builds an Allowed. A frozen dataclass's __init__ sets each field through
# object.__setattr__, looked up anew per field; setting the slots directly is about 2.5x
# cheaper (bench/replies.py) and gives the same object. tests/test_replies.py keeps this
# list equal to the class's fields.
ALLOWED_FIELDS = (
    "transaction_id",
    "balance",
    "cost",
    "replayed",
    "low_balance",
    "allowed",
    "rate",
)
_new = object.__new__
_set_txid, _set_balance, _set_cost, _set_replayed, _set_low, _set_allowed, _set_rate = (
    getattr(Allowed, name).__set__ for name in ALLOWED_FIELDS
)


def new_allowed(
    transaction_id: str,
    balance: int,
    cost: int,
    replayed: bool,
    low_balance: bool,
    rate: RateState | None = None,
) -> Allowed:
    """``Allowed(transaction_id, balance, cost, replayed, low_balance, rate=rate)``, built
    faster."""
    a: Allowed = _new(Allowed)
    _set_txid(a, transaction_id)
    _set_balance(a, balance)
    _set_cost(a, cost)
    _set_replayed(a, replayed)
    _set_low(a, low_balance)
    _set_allowed(a, True)
    _set_rate(a, rate)
    return a


@dataclass(frozen=True, slots=True)
class Insufficient:
    balance: int
    required: int
    allowed: Literal[False] = False


@dataclass(frozen=True, slots=True)
class RateLimited:
    retry_after_ms: int
    allowed: Literal[False] = False


@dataclass(frozen=True, slots=True)
class Revoked:
    """The API key the call was made with is no longer active on the account."""

    allowed: Literal[False] = False


@dataclass(frozen=True, slots=True)
class SpendLimited:
    """Refused: the cost would take the API key's (``scope`` "key") or the account's spending
    over its limit in the current window; nothing was charged."""

    scope: Literal["key", "account"]
    window: SpendWindow
    required: int
    allowed: Literal[False] = False

    @property
    def reason(self) -> Literal["key_spend_limit", "spend_limit"]:
        """The refusal's reason as the API and the proxies answer it."""
        return "key_spend_limit" if self.scope == "key" else "spend_limit"


DeductResult = Allowed | Insufficient | RateLimited | Revoked | SpendLimited


@dataclass(frozen=True, slots=True)
class UsageReported:
    """Usage reported after the work (POST /v1/usage): recorded, never refused."""

    transaction_id: str
    balance: int
    cost: int
    replayed: bool
    debt_added: int  # what the buckets could not cover (0 for a replay)


@dataclass(frozen=True, slots=True)
class HoldResult:
    hold_id: str
    transaction_id: str
    balance: int
    expires_at: int
    state: str
    replayed: bool


@dataclass(frozen=True, slots=True)
class CloseResult:
    hold_id: str
    transaction_id: str
    balance: int
    charged: int
    forfeited: int
    state: str
    replayed: bool
    uncovered: int = 0  # a settle above the hold: what neither balance nor overdraft covered


@dataclass(frozen=True, slots=True)
class RefundResult:
    transaction_id: str
    balance: int
    refunded: int
    forfeited: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class Bucket:
    id: str
    credits: int
    remaining: int
    held: int
    created_at: int
    expires_at: int | None
    priority: int
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Balance:
    account: str
    balance: int
    available: int
    held: int
    debt: int
    overdraft_limit: int
    low_balance_threshold: int | None
    rate_limit: RateLimit | None
    created_at: int
    buckets: list[Bucket]
    spend: SpendWindow | None = None
    plan: PlanState | None = None


@dataclass(frozen=True, slots=True)
class PlanState:
    """An account's plan: its anchor and when the next period's allowance comes (ms)."""

    plan: str
    anchor: int
    next_renewal: int


@dataclass(frozen=True, slots=True)
class RestoreCounts:
    """What restore.lua wrote for one account."""

    buckets: int
    holds: int
    keys: int
    idempotency: int
    usage: int


@dataclass(frozen=True, slots=True)
class VoidResult:
    """What void.lua did with a void (sidecar/ledger/voids.py)."""

    # voided (refunded and forgotten), marked (an attempt is still open or got its 200),
    # absent, changed, mismatch, untracked, not_run, overflow (nothing changed)
    status: str
    transaction_id: str = ""  # voided: the refund's ('' when nothing was left to refund)
    refunded: int = 0
