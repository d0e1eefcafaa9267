"""A pure-Python reference model of the credit ledger (sidecar/lua/*.lua), without Redis.

It implements the same operations as :class:`sidecar.ledger.calls.Ledger`, with the same results
and the same domain errors, so a property test can run one sequence of operations against
both and compare them step by step. Every rule is written here directly and plainly,
without the scripts' storage tricks (sorted-set burn order, deadline zsets, JSON records):

* Buckets burn in order of priority (ascending), then expiry (soonest first, never-expiring
  last), then creation time (oldest first), then id.
* Every grant, deduct, hold, settle / release, refund, balance and expire call first
  processes every deadline that has passed (calls that fail validation, replay an earlier
  result or are rate-limited change nothing; configure_account only writes settings, but
  for a plan change, below), in
  deadline order (ties: ``b:<bucket>`` before ``h:<hold>``, then by id): a bucket expires
  (one ``expiry`` transaction if it still had remaining credits), an active hold whose TTL
  ran out releases itself (state ``expired``), a closed hold past the retention is purged.
* Grants repay debt first; usages take credits in burn order and overdraw up to the
  overdraft limit; holds move credits from buckets to ``held`` (never overdrawing);
  settling charges in draw order and returns the rest, forfeiting credits whose bucket
  expired; refunds walk the usage backwards (overdraft part, then buckets in reverse draw
  order) after what earlier refunds covered, an overdraft part repaying debt and its excess
  becoming a new bucket ``refund:<txid>``.
* An answer never depends on whether the sweeper already processed a deadline: a hold
  replay processes what is due first (a lapsed hold reads as ``expired``), releasing a
  lapsed hold returns the TTL's release, settling it fails with HoldExpired; the overflow
  check comes after expiry (what expired does not count; the expiry is kept).
  (Except at the end of the retention: a closed hold whose purge is due but not yet
  processed still answers a replay, settle or release as before.)
* Plans (docs/plans.md): an account on a plan has a ``p:`` deadline at its next renewal
  (ties: after ``b:`` and ``h:``), processed like the others: the plan's mode cuts the
  allowance left of its stay on the plan, oldest first (reset: all of it, ``period_end``;
  accumulate: above the rollover cap, ``rollover``), then the current period's bucket
  ``allowance:<plan>:<start>`` is issued unless it exists (repaying debt first, capped at
  2^53-1 held), once for the periods nobody saw. Its rate and spending limits apply unless
  the account sets its own; its spending windows count from the plan's anchor. Setting
  another plan (or an anchor that moves the periods) processes what is due, cuts what is
  left of the old allowance (``plan_change``) and issues the new plan's period at once;
  removing it issues nothing more. A rate limit set anew, or a plan change of an account
  without its own, starts from a full burst (the TAT is dropped), as account.lua does.

Transactions are recorded as the dicts the scripts append to the outbox stream (all fields
but ``kind``; numbers as ints, ``alloc``/``held``/grant ``bucket`` as decoded JSON), each
checked by the entry's model (sidecar/ledger/outbox.py ``txn``) as the SQL writer checks the
scripts'.
Transaction ids are ``tx_<n>``, one per ledger call, like a Ledger whose
``new_transaction_id`` is :func:`transaction_id` over a counter; extra transactions of a
call (expiries, lapsed holds) get ``<id>.1``, ``<id>.2``...

Deliberate simplifications: the per-account ``clock`` guard is not modelled (tests use a
clock that never goes back), and idempotency keys and usage records never expire: the
store expires them with a Redis TTL on the server's real clock, which a test's fake clock
does not move.
"""

from __future__ import annotations

import calendar
import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sidecar.errors import (
    BalanceOverflow,
    FullyRefunded,
    HoldClosed,
    HoldExpired,
    IdempotencyConflict,
    InvalidInput,
    UnknownAccount,
    UnknownHold,
    UnknownTransaction,
)
from sidecar.ledger import outbox
from sidecar.ledger.arguments import (
    DEFAULT_PLAN,
    KEEP,
    DefaultPlan,
    Keep,
    encode_metadata,
)
from sidecar.ledger.results import (
    AccountConfig,
    Allowed,
    Balance,
    Bucket,
    CloseResult,
    DeductResult,
    GrantResult,
    HoldResult,
    Insufficient,
    PlanState,
    RateLimit,
    RateLimited,
    RateState,
    RefundResult,
    SpendLimit,
    SpendLimited,
    SpendWindow,
    UsageReported,
)
from sidecar.ledger.units import MAX_CREDITS, MAX_TIMESTAMP_MS

MAX_ATTEMPTS = 16  # attempts an idempotency record lists (sidecar/lua/_lib.lua)
NEVER = 999_999_999_999_999
MAX_TTL_MS = 366 * 86_400_000
INT32 = 2**31

Json = Any
Txn = dict[str, Any]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(d: datetime) -> int:
    return (d - EPOCH) // timedelta(milliseconds=1)


def _month_of(anchor: datetime, n: int) -> datetime:
    """The anchor's day (clamped to the month's last) and time, ``n`` months after it."""
    i = anchor.month - 1 + n
    y, m = anchor.year + i // 12, i % 12 + 1
    day = min(anchor.day, calendar.monthrange(y, m)[1])
    return anchor.replace(year=y, month=m, day=day)


def period_of(anchor: int, interval: str, count: int, t: int) -> tuple[int, int, int]:
    """The period of ``count`` intervals from ``anchor`` (ms) holding ``t``: start, end, index
    (docs/plans.md: days and weeks of fixed length; months and years on the anchor's day,
    clamped to the month's end, at its time of day). Written with datetime, apart from the
    scripts' (and sidecar/ledger/windows.py's) day-number arithmetic."""
    if interval in ("day", "week"):
        length = count * (7 if interval == "week" else 1) * 86_400_000
        k = (t - anchor) // length
        return anchor + k * length, anchor + (k + 1) * length, k
    months = count if interval == "month" else 12 * count
    a = EPOCH + timedelta(milliseconds=anchor)
    at = EPOCH + timedelta(milliseconds=t)
    k = ((at.year - a.year) * 12 + at.month - a.month) // months
    while _ms(_month_of(a, k * months)) > t:
        k -= 1
    while _ms(_month_of(a, (k + 1) * months)) <= t:
        k += 1
    return _ms(_month_of(a, k * months)), _ms(_month_of(a, (k + 1) * months)), k


def spend_window(limit: SpendLimit, now: int, anchor: int | None = None) -> tuple[int, int | None]:
    """The window of ``limit`` holding ``now`` (ms): its start and end (None: never). Windows
    of ``interval_count`` intervals, counted from 1970-01-01 UTC, weeks starting on Monday; or,
    for an account on a plan, from its anchor (never before 1970)."""
    n = limit.interval_count
    day = datetime.fromtimestamp(now / 1000, UTC).date()
    if limit.interval is None:
        return 0, None
    if anchor is not None:
        s, e, _ = period_of(anchor, limit.interval, n, now)
        return max(0, s), e
    if limit.interval in ("day", "week"):
        step = 1 if limit.interval == "day" else 7
        origin = datetime(1970, 1, 1, tzinfo=UTC) - timedelta(days=0 if step == 1 else 3)
        index = (datetime(day.year, day.month, day.day, tzinfo=UTC) - origin).days // step
        start = origin + timedelta(days=(index - index % n) * step)
        # (the first week's window starts 1969-12-29: counted from 1970, no time is earlier)
        return max(0, _ms(start)), _ms(start + timedelta(days=n * step))
    months = n if limit.interval == "month" else 12 * n
    i = (day.year - 1970) * 12 + day.month - 1
    s, e = i - i % months, i - i % months + months
    start = datetime(1970 + s // 12, s % 12 + 1, 1, tzinfo=UTC)
    return _ms(start), _ms(datetime(1970 + e // 12, e % 12 + 1, 1, tzinfo=UTC))


def transaction_id(n: int) -> str:
    """The id of the n-th ledger call (n >= 1)."""
    return f"tx_{n}"


def okey(priority: int, expires: int | None, created: int, bucket_id: str) -> str:
    """A bucket's burn-order key: sorting these strings sorts buckets in burn order."""
    exp = NEVER if expires is None else expires
    return f"{priority + INT32:010d}:{exp:015d}:{created:015d}:{bucket_id}"


def request_fp(*parts: str) -> str:
    """The request digest deduct.lua stores with an idempotency record: SHA-1 over the
    length-prefixed parts (key id, route, description, metadata, request), 16 hex digits."""
    joined = "".join(f"{len(v.encode())}:{v}" for v in parts)
    return hashlib.sha1(joined.encode()).hexdigest()[:16]  # noqa: S324 (a digest, not security)


@dataclass
class ModelBucket:
    id: str
    credits: int
    created: int
    expires: int | None
    priority: int
    source: str
    metadata: str
    fp: str
    tx: str
    bal: int = 0
    remaining: int | None = 0  # None once expired
    held: int = 0

    @property
    def live(self) -> bool:
        return self.remaining is not None

    @property
    def listed(self) -> bool:
        """Live and holding credits: shown by balance, drawn from (when remaining > 0)."""
        return self.remaining is not None and (self.remaining > 0 or self.held > 0)

    @property
    def burn_key(self) -> tuple[int, int, int, str]:
        exp = NEVER if self.expires is None else self.expires
        return (self.priority, exp, self.created, self.id)

    def meta(self) -> dict[str, Json]:
        """The static record the store keeps for the bucket (m:<id>)."""
        m: dict[str, Json] = {
            "credits": self.credits,
            "created": self.created,
            "priority": self.priority,
            "source": self.source,
            "metadata": self.metadata,
            "fp": self.fp,
            "tx": self.tx,
            "okey": okey(self.priority, self.expires, self.created, self.id),
            "bal": self.bal,
        }
        if self.expires is not None:
            m["expires"] = self.expires
        return m

    def entry(self) -> dict[str, Json]:
        """The bucket as described in its grant / refund transaction."""
        e: dict[str, Json] = {
            "id": self.id,
            "credits": self.credits,
            "created": self.created,
            "priority": self.priority,
            "source": self.source,
            "fp": self.fp,
        }
        if self.expires is not None:
            e["expires"] = self.expires
        return e


@dataclass
class ModelHold:
    amount: int
    ttl: int
    alloc: list[tuple[str, int]]  # (bucket, credits held from it), in draw order
    created: int
    expires: int
    tx: str
    bal: int = 0
    state: str = "active"
    charged: int | None = None
    close_tx: str | None = None
    close_balance: int | None = None
    forfeited: int | None = None
    sw: int | None = None  # the spending limit's window it counted in
    uncovered: int | None = None  # a settle above it: what nothing covered

    def record(self) -> dict[str, Json]:
        """The hold's stored record (JSON), with absent fields left out."""
        r: dict[str, Json] = {
            "amount": self.amount,
            "ttl": self.ttl,
            "alloc": [[b, n] for b, n in self.alloc],
            "created": self.created,
            "expires": self.expires,
            "state": self.state,
            "tx": self.tx,
            "bal": self.bal,
        }
        for k, v in (
            ("charged", self.charged),
            ("close_tx", self.close_tx),
            ("close_balance", self.close_balance),
            ("forfeited", self.forfeited),
            ("sw", self.sw),
            ("uncovered", self.uncovered),
        ):
            if v is not None:
                r[k] = v
        return r


@dataclass
class ModelRefund:
    arg: str
    tx: str
    bal: int
    refunded: int
    forfeited: int


@dataclass
class ModelUsage:
    cost: int
    alloc: list[tuple[str, int]]  # (bucket, -credits taken), in draw order
    overdraft: int
    refunded: int = 0
    refunds: dict[str, ModelRefund] = field(default_factory=dict)
    sw: int | None = None  # the spending limit's window it counted in
    # a settle above its hold whose extra counted in another count: its from, and the extra
    xw: int | None = None
    xn: int = 0

    def record(self) -> dict[str, Json]:
        """The usage record as stored (hash fields, JSON ones decoded)."""
        r: dict[str, Json] = {
            "cost": self.cost,
            "alloc": [[b, n] for b, n in self.alloc],
            "overdraft": self.overdraft,
            "refunded": self.refunded,
        }
        if self.sw is not None:
            r["sw"] = self.sw
        if self.xw is not None:
            r["xw"], r["xn"] = self.xw, self.xn
        for rid, p in self.refunds.items():
            r["rf:" + rid] = {
                "arg": p.arg,
                "tx": p.tx,
                "bal": p.bal,
                "refunded": p.refunded,
                "forfeited": p.forfeited,
            }
        return r


@dataclass
class ModelAccount:
    created: int
    ovl: int = 0
    lbt: int | None = None
    rate: RateLimit | None = None
    tat: int | None = None
    spend: SpendLimit | None = None
    spend_state: tuple[int, int] | None = None  # when its count began, spent since
    avail: int = 0
    held: int = 0
    debt: int = 0
    seq: int = 0
    buckets: dict[str, ModelBucket] = field(default_factory=dict)
    holds: dict[str, ModelHold] = field(default_factory=dict)
    deadlines: dict[str, int] = field(default_factory=dict)  # "b:<id>" / "h:<id>" -> ms
    # key -> tx, cost, bal, request digest, attempts that took effect through it (each call
    # carries an attempt token, sidecar/lua/deduct.lua; the store lists at most MAX_ATTEMPTS)
    idempotency: dict[str, tuple[str, int, int, str, int]] = field(default_factory=dict)
    usages: dict[str, ModelUsage] = field(default_factory=dict)
    plan: str | None = None
    plan_anchor: int | None = None  # ms: where its periods count from
    plan_since: int | None = None  # when it was put on the plan (its allowance since is cut)
    plan_next: int | None = None  # the next renewal (ms; also the 'p:' deadline)

    @property
    def balance(self) -> int:
        return self.avail - self.debt

    def burn_order(self) -> list[ModelBucket]:
        return sorted((b for b in self.buckets.values() if b.listed), key=lambda b: b.burn_key)


@dataclass(frozen=True)
class ModelPlan:
    """A plan as plan.lua stores it in each shard's plans hash (docs/plans.md)."""

    credits: int
    interval: str  # day, week, month, year
    count: int = 1
    mode: str = "reset"  # or accumulate
    rollover: int | None = None
    priority: int = -1
    rate: RateLimit | None = None
    spend: SpendLimit | None = None


@dataclass(frozen=True)
class StoredBucket:
    meta: dict[str, Json]
    remaining: int | None  # None once expired
    held: int


@dataclass(frozen=True)
class StoredAccount:
    """Everything the store keeps for one account, in a form both sides can produce."""

    created: int
    avail: int
    held: int
    debt: int
    seq: int
    overdraft_limit: int
    low_balance_threshold: int | None
    rate_limit: RateLimit | None
    tat: int | None
    spend_limit: str | None  # the scripts' spec
    spend_state: str | None  # "from:spent"
    buckets: dict[str, StoredBucket]
    order: list[str]  # burn-order keys of live buckets with remaining or held credits, sorted
    deadlines: dict[str, int]
    holds: dict[str, dict[str, Json]]
    due: int | None  # the account's score in the sweeper's due zset
    idempotency: dict[str, dict[str, Json]]
    usages: dict[str, dict[str, Json]]
    plan: str | None = None  # pl
    plan_anchor: int | None = None  # pan
    plan_since: int | None = None  # psn
    plan_next: int | None = None  # pn


class LedgerModel:
    """The ledger's intended semantics over plain Python state; same API as Ledger, sync."""

    def __init__(
        self,
        clock: Callable[[], int],
        retention_ms: int,
    ) -> None:
        self.clock = clock
        self.retention_ms = retention_ms
        self.accounts: dict[str, ModelAccount] = {}
        self.outbox: list[Txn] = []
        self.plans: dict[str, ModelPlan] = {}
        self.default_plan: str | None = None
        self.plan_counts: dict[str, int] = {}  # accounts on each plan (the plans hash's n:)
        self._calls = 0
        self._now = 0
        self._txid = ""
        self._extra = 0

    def define_plan(
        self,
        plan: str,
        credits: int,
        interval: str = "month",
        count: int = 1,
        mode: str = "reset",
        rollover: int | None = None,
        priority: int = -1,
        rate: RateLimit | None = None,
        spend: SpendLimit | None = None,
    ) -> None:
        """Defines (or redefines) a plan, as tests/test_plans.py ``define`` writes it."""
        self.plans[plan] = ModelPlan(
            credits, interval, count, mode, rollover, priority, rate, spend
        )

    # -- per-call context -------------------------------------------------------------

    def _begin(self) -> None:
        """Starts a ledger call: takes the next transaction id and reads the clock."""
        self._calls += 1
        self._txid = transaction_id(self._calls)
        self._now = self.clock()
        self._extra = 0

    def _extra_txid(self) -> str:
        self._extra += 1
        return f"{self._txid}.{self._extra}"

    def _require(self, account: str) -> ModelAccount:
        a = self.accounts.get(account)
        if a is None:
            raise UnknownAccount(f"account {account} does not exist")
        return a

    def _emit(
        self,
        account: str,
        a: ModelAccount,
        txid: str,
        ttype: str,
        amount: int,
        alloc: list[tuple[str, int]],
        extra: dict[str, Json],
    ) -> None:
        a.seq += 1
        txn: Txn = {
            "id": txid,
            "account": account,
            "seq": a.seq,
            "type": ttype,
            "amount": amount,
            "balance": a.balance,
            "debt": a.debt,
            "ts": self._now,
            "alloc": [[b, n] for b, n in alloc],
        }
        txn.update({k: v for k, v in extra.items() if v is not None})
        if a.spend_state is not None:  # the spending limit's state after it
            txn["spend"] = f"{a.spend_state[0]}:{a.spend_state[1]}"
        if a.plan_next is not None:  # an account on a plan: its next renewal after it
            txn["pn"] = a.plan_next
        touched = [b for b, _ in alloc]
        held = extra.get("held")
        if isinstance(held, list):
            touched += [str(h[0]) for h in held if isinstance(h, list)]
        after: list[Json] = []
        for b in dict.fromkeys(t for t in touched if t):
            bucket = a.buckets[b]
            after.append([b, bucket.remaining, bucket.held])
        txn["buckets"] = after
        # The entry model (sidecar/ledger/outbox.py) accepts it, as the SQL writer will the
        # scripts'.
        outbox.txn({"kind": "txn", **txn})
        self.outbox.append(txn)

    # -- shared mechanics -------------------------------------------------------------

    def _credit(self, a: ModelAccount, bucket_id: str, n: int) -> int:
        """Puts n credits back into a bucket if it is still live; returns what was credited."""
        b = a.buckets[bucket_id]
        if b.remaining is None:
            return 0
        b.remaining += n
        a.avail += n
        return n

    def _draw(self, a: ModelAccount, amount: int, hold: bool) -> tuple[list[tuple[str, int]], int]:
        """Takes up to `amount` remaining credits in burn order; returns (alloc, shortfall)."""
        need = amount
        alloc: list[tuple[str, int]] = []
        for b in a.burn_order():
            if need == 0:
                break
            assert b.remaining is not None
            if b.remaining > 0:
                t = min(b.remaining, need)
                need -= t
                b.remaining -= t
                if hold:
                    b.held += t
                alloc.append((b.id, -t))
        taken = amount - need
        a.avail -= taken
        if hold:
            a.held += taken
        return alloc, need

    def _close_hold(
        self,
        account: str,
        a: ModelAccount,
        hold_id: str,
        rec: ModelHold,
        charge: int,
        state: str,
        txid: str,
        desc: str,
        meta: str,
    ) -> None:
        over = max(0, charge - rec.amount)  # a settle above the hold
        charge -= over
        left, returned, forfeited = charge, 0, 0
        alloc: list[tuple[str, int]] = []
        charged: list[tuple[str, int]] = []
        held: list[list[Json]] = []
        for bucket_id, n in rec.alloc:
            c = min(n, left)
            left -= c
            if c > 0:
                charged.append((bucket_id, -c))
            a.buckets[bucket_id].held -= n
            held.append([bucket_id, -n])
            back = self._credit(a, bucket_id, n - c)
            if back > 0:
                alloc.append((bucket_id, back))
            returned += back
            forfeited += n - c - back
        a.held -= rec.amount
        self._spend_return(a, rec.sw, rec.amount - charge)
        fields: dict[str, Json] = {
            "held": held,
            "hold_id": hold_id,
            "forfeited": forfeited,
            "state": state,
            "desc": desc,
            "meta": meta,
        }
        short = take = 0
        xw = None
        if over > 0:
            # drawn like a check, into the overdraft as far as allowed; the rest not charged
            take = min(over, max(0, a.balance + a.ovl))
            if take > 0:
                drawn, short = self._draw(a, take, hold=False)
                a.debt += short
                alloc += drawn
                charged += drawn
                counted = self._spend_add(a, take)
                if counted is not None and counted != rec.sw:  # another count than the hold's
                    xw = fields["xw"] = counted
            fields |= {"overdraft": short, "uncovered": over - take}
            rec.uncovered = over - take or None
            charge += take
            returned -= take
        fields["charged"] = charge
        rec.state = state
        rec.charged = charge
        rec.close_tx = txid
        ttype = "settle" if state == "settled" else "release"
        self._emit(account, a, txid, ttype, returned, alloc, fields)
        rec.close_balance = a.balance
        rec.forfeited = forfeited
        a.deadlines["h:" + hold_id] = self._now + self.retention_ms
        if state == "settled" and charge > 0:  # refundable like a check's usage
            a.usages[txid] = ModelUsage(
                charge, charged, short, sw=rec.sw, xw=xw, xn=take if xw is not None else 0
            )

    def _expire_bucket(self, account: str, a: ModelAccount, bucket_id: str) -> None:
        b = a.buckets[bucket_id]
        rem = b.remaining or 0
        b.remaining = None
        if rem > 0:
            a.avail -= rem
            self._emit(
                account,
                a,
                self._extra_txid(),
                "expiry",
                -rem,
                [(bucket_id, -rem)],
                {"bucket": bucket_id},
            )

    def _expire_due(self, account: str, a: ModelAccount) -> None:
        """Processes every deadline <= now in (deadline, member) order."""
        due = sorted((at, member) for member, at in a.deadlines.items() if at <= self._now)
        for _, member in due:
            del a.deadlines[member]
        for _, member in due:
            kind, ident = member[0], member[2:]
            if kind == "b":
                self._expire_bucket(account, a, ident)
                continue
            if kind == "p":
                if a.plan is not None:
                    self._plan_renew(account, a)
                continue
            rec = a.holds.get(ident)
            if rec is None:
                continue
            if rec.state == "active":
                self._close_hold(
                    account, a, ident, rec, 0, "expired", self._extra_txid(), "hold expired", ""
                )
            else:
                del a.holds[ident]

    def _rate_check(self, a: ModelAccount) -> tuple[int, int | None, RateState | None]:
        """GCRA in the scripts' (double) arithmetic: (wait ms, new TAT in us when allowed,
        what the request leaves of the limiter)."""
        rate = self._rate(a)
        if rate is None:
            return 0, None, None
        interval = rate.period_ms * 1000 / rate.requests
        now_us = self._now * 1000
        tat: float = a.tat if a.tat is not None else now_us
        tat = max(tat, now_us)
        new_tat = tat + interval
        allow_at = new_tat - interval * rate.burst
        if now_us < allow_at:
            return math.ceil((allow_at - now_us) / 1000), None, None
        left = max(0, math.floor((interval * rate.burst - (new_tat - now_us)) / interval))
        whole = math.ceil((new_tat - now_us) / 1000)
        state = RateState("account", rate.requests, rate.period_ms, left, whole)
        return 0, math.floor(new_tat), state

    def _plan(self, a: ModelAccount) -> ModelPlan | None:
        return self.plans.get(a.plan) if a.plan is not None else None

    def _rate(self, a: ModelAccount) -> RateLimit | None:
        """The rate limit that applies: the account's own, else its plan's."""
        plan = self._plan(a)
        return a.rate or (plan.rate if plan else None)

    def _spend_limit(self, a: ModelAccount) -> SpendLimit | None:
        """The spending limit that applies: the account's own, else its plan's."""
        plan = self._plan(a)
        return a.spend or (plan.spend if plan else None)

    def _window(self, a: ModelAccount, limit: SpendLimit) -> tuple[int, int | None]:
        """The limit's window now; an account on a plan counts them from its anchor."""
        return spend_window(limit, self._now, a.plan_anchor if a.plan is not None else None)

    def _spend(self, a: ModelAccount) -> tuple[SpendWindow, int] | None:
        """The account's limit now: its window with what was spent, and when that count began
        (the window's start, or when the limit was set within it)."""
        limit = self._spend_limit(a)
        return None if limit is None else self._spend_of(a, limit, a.spend_state)

    def _spend_of(
        self, a: ModelAccount, limit: SpendLimit, st: tuple[int, int] | None
    ) -> tuple[SpendWindow, int]:
        start, stop = self._window(a, limit)
        if st is not None and start <= st[0] and (stop is None or st[0] < stop):
            return SpendWindow(limit, st[1], stop), st[0]
        return SpendWindow(limit, 0, stop), start

    def _spend_reset(
        self, a: ModelAccount, limit: SpendLimit, old: tuple[int, int] | None
    ) -> tuple[int, int]:
        """The state of ``limit`` counting from now, after the count it replaces (``old``)
        began."""
        _, stop = self._window(a, limit)
        prev = self._spend_of(a, limit, old)[1]
        if old is not None and prev >= self._now and (stop is None or prev + 1 < stop):
            return (prev + 1, 0)
        return (self._now, 0)

    def _spend_add(self, a: ModelAccount, n: int) -> int | None:
        """Counts ``n`` against the limit; returns the window's start (None: no limit)."""
        s = self._spend(a)
        if s is None:
            return None
        a.spend_state = (s[1], min(s[0].spent + n, MAX_CREDITS))  # (_lib.lua spend_state)
        return s[1]

    def _spend_return(self, a: ModelAccount, start: int | None, n: int) -> None:
        """Gives back ``n`` counted from ``start`` (a record's sw), if still the count."""
        s = self._spend(a) if start is not None and n > 0 else None
        if s is not None and s[1] == start:
            a.spend_state = (start, max(0, s[0].spent - n))

    def _allowance_left(self, a: ModelAccount) -> list[ModelBucket]:
        """The live allowance buckets of the account's stay on its plan (listed ones: the
        scripts read them from the burn order), oldest first."""
        prefix = f"allowance:{a.plan}:"
        since = a.plan_since or 0
        left = [b for b in a.burn_order() if b.id.startswith(prefix) and b.created >= since]
        return sorted(left, key=lambda b: (b.created, b.id))

    def _allowance_cut(
        self, account: str, a: ModelAccount, left: list[ModelBucket], n: int | None, reason: str
    ) -> None:
        """Expires ``n`` credits (all with None) of the buckets ``left``, oldest first, as one
        expiry transaction."""
        alloc: list[tuple[str, int]] = []
        total = 0
        for b in left:
            assert b.remaining is not None
            c = b.remaining if n is None else min(b.remaining, n - total)
            if c > 0:
                b.remaining -= c
                alloc.append((b.id, -c))
                total += c
        if total > 0:
            a.avail -= total
            extra = {"reason": reason, "plan": a.plan}
            self._emit(account, a, self._extra_txid(), "expiry", -total, alloc, extra)

    def _renewal(
        self, a: ModelAccount, plan: ModelPlan, left: list[ModelBucket]
    ) -> tuple[int, int, int, int, int | None]:
        """A renewal due now: the period's start and end, how many periods it covers, the
        credits to issue and to cut from ``left`` (None: all of it)."""
        assert a.plan_anchor is not None
        start, stop, k = period_of(a.plan_anchor, plan.interval, plan.count, self._now)
        n = 1
        if a.plan_next is not None:
            _, _, due = period_of(a.plan_anchor, plan.interval, plan.count, a.plan_next)
            n = max(1, k - due + 1)
        if plan.mode == "reset":
            return start, stop, n, plan.credits, None
        unused = sum(b.remaining or 0 for b in left)
        kept = unused if plan.rollover is None else min(unused, plan.rollover)
        more = (n - 1) * plan.credits  # what n renewals in a row leave, nothing spent
        if plan.rollover is not None:
            more = min(more, plan.rollover - kept)
        return start, stop, n, min(plan.credits + more, MAX_CREDITS), unused - kept

    def _plan_renew(self, account: str, a: ModelAccount) -> None:
        """Renews the account's plan if a period began since the last renewal (or the plan
        was just set): the cut, the period's allowance bucket (unless it exists), the next
        renewal's deadline."""
        plan = self._plan(a)
        if plan is None or (a.plan_next is not None and a.plan_next > self._now):
            return
        left = self._allowance_left(a)
        start, stop, n, credits, cut = self._renewal(a, plan, left)
        a.plan_next = stop  # (the renewal's entries carry it)
        if cut is None or cut > 0:
            reason = "period_end" if plan.mode == "reset" else "rollover"
            self._allowance_cut(account, a, left, cut, reason)
        bid = f"allowance:{a.plan}:{start}"
        credits = min(credits, MAX_CREDITS - a.avail - a.held)
        if credits > 0 and bid not in a.buckets:
            txid = self._extra_txid()
            repaid = min(a.debt, credits)
            a.debt -= repaid
            expires = min(stop, MAX_TIMESTAMP_MS) if plan.mode == "reset" else None
            b = ModelBucket(
                bid,
                credits,
                self._now,
                expires,
                plan.priority,
                "allowance",
                "",
                "",
                txid,
                remaining=credits - repaid,
            )
            a.buckets[bid] = b
            a.avail += credits - repaid
            if expires is not None:
                a.deadlines["b:" + bid] = expires
            self._emit(
                account,
                a,
                txid,
                "allowance",
                credits,
                [(bid, credits - repaid)],
                {
                    "bucket": b.entry(),
                    "repaid": repaid,
                    "plan": a.plan,
                    "period": start,
                    "periods": n,
                    "desc": f"allowance of plan {a.plan}",
                },
            )
            b.bal = a.balance
        a.plan_next = stop
        a.deadlines["p:"] = stop

    def _check_overflow(self, account: str, a: ModelAccount, credits: int) -> None:
        """Processes what is due, then refuses to let the account hold more than 2^53-1."""
        self._expire_due(account, a)
        if a.avail + a.held + credits > MAX_CREDITS:
            raise BalanceOverflow("the account would hold more than 2^53-1 credits")

    @staticmethod
    def _check_range(name: str, v: int, lo: int, hi: int) -> None:
        if not lo <= v <= hi:
            raise InvalidInput(f"{name} must be between {lo} and {hi}", field=name)

    # -- operations ---------------------------------------------------------------------

    def configure_account(
        self,
        account: str,
        *,
        overdraft_limit: int = 0,
        low_balance_threshold: int | None = None,
        rate_limit: RateLimit | None = None,
        spend_limit: SpendLimit | None = None,
        plan: str | DefaultPlan | None = DEFAULT_PLAN,
        plan_anchor: int | None = None,
    ) -> bool:
        return self.put_account(
            account,
            overdraft_limit=overdraft_limit,
            low_balance_threshold=low_balance_threshold,
            rate_limit=rate_limit,
            spend_limit=spend_limit,
            plan=plan,
            plan_anchor=plan_anchor,
        ).created

    def put_account(
        self,
        account: str,
        *,
        overdraft_limit: int = 0,
        low_balance_threshold: int | None = None,
        rate_limit: RateLimit | None = None,
        spend_limit: SpendLimit | None = None,
        plan: str | DefaultPlan | None = DEFAULT_PLAN,
        plan_anchor: int | None = None,
    ) -> AccountConfig:
        return self._configure(
            account,
            False,
            overdraft_limit,
            low_balance_threshold,
            rate_limit,
            spend_limit,
            plan,
            plan_anchor,
        )

    def update_account(
        self,
        account: str,
        *,
        overdraft_limit: int | Keep = KEEP,
        low_balance_threshold: int | Keep | None = KEEP,
        rate_limit: RateLimit | Keep | None = KEEP,
        spend_limit: SpendLimit | Keep | None = KEEP,
        plan: str | Keep | None = KEEP,
        plan_anchor: int | None = None,
    ) -> AccountConfig:
        return self._configure(
            account,
            True,
            overdraft_limit,
            low_balance_threshold,
            rate_limit,
            spend_limit,
            plan,
            plan_anchor,
        )

    def _configure(
        self,
        account: str,
        patch: bool,
        overdraft_limit: int | Keep,
        low_balance_threshold: int | Keep | None,
        rate_limit: RateLimit | Keep | None,
        spend_limit: SpendLimit | Keep | None,
        plan: str | Keep | DefaultPlan | None,
        plan_anchor: int | None,
    ) -> AccountConfig:
        """account.lua: settings only, except that another plan (or an anchor that moves its
        periods) first processes what is due, cuts the old plan's allowance and issues the
        new plan's current period."""
        self._begin()
        if not isinstance(overdraft_limit, Keep):
            self._check_range("overdraft_limit", overdraft_limit, 0, MAX_CREDITS)
        if isinstance(spend_limit, SpendLimit):
            self._check_range("spend_limit.credits", spend_limit.credits, 1, MAX_CREDITS)
        if plan_anchor is not None:
            self._check_range("plan_anchor", plan_anchor, 0, MAX_TIMESTAMP_MS)
        a = self.accounts.get(account)
        if a is None and patch:
            raise UnknownAccount(f"account {account} does not exist")
        exists = a is not None
        old_pl = a.plan if a is not None else None
        old_pan = a.plan_anchor if a is not None else None
        new_pl = old_pl
        if isinstance(plan, DefaultPlan):
            d = self.default_plan
            new_pl = d if not exists and d is not None and d in self.plans else None
        elif not isinstance(plan, Keep):
            new_pl = plan or None
        spec = None
        if new_pl is not None:
            spec = self.plans.get(new_pl)
            if spec is None:
                raise InvalidInput(f"plan {new_pl} does not exist", field="plan")
        elif plan_anchor is not None:
            raise InvalidInput("plan_anchor needs a plan", field="plan_anchor")
        if plan_anchor is not None:
            new_pan = plan_anchor
        elif new_pl == old_pl and old_pan is not None:
            new_pan = old_pan
        else:
            new_pan = self._now
        changed = new_pl != old_pl
        moved_end: int | None = None
        if not changed and spec is not None and new_pan != old_pan:
            # the same plan re-anchored: a change if the current period starts elsewhere; if
            # only its end moves, the next renewal moves with it
            assert old_pan is not None
            s1, e1 = period_of(old_pan, spec.interval, spec.count, self._now)[:2]
            s2, e2 = period_of(new_pan, spec.interval, spec.count, self._now)[:2]
            changed = s1 != s2
            if not changed and e1 != e2:
                moved_end = e2
        if a is None:
            a = self.accounts[account] = ModelAccount(created=self._now)
        own_rate = a.rate if exists else None
        eff_old = self._spend_limit(a) if exists else None  # own, else the old plan's
        if not isinstance(overdraft_limit, Keep):
            a.ovl = overdraft_limit
        if not isinstance(low_balance_threshold, Keep):
            a.lbt = low_balance_threshold
        if not isinstance(rate_limit, Keep):
            if rate_limit is None or rate_limit != own_rate:
                a.tat = None  # a limit set anew starts from a full burst
            a.rate = rate_limit

        if changed and exists:
            self._expire_due(account, a)  # what is due under the old plan happens first
        if changed and old_pl is not None:
            if new_pl is not None:
                self._allowance_cut(account, a, self._allowance_left(a), None, "plan_change")
            self.plan_counts[old_pl] -= 1
            a.deadlines.pop("p:", None)
            a.plan = a.plan_anchor = a.plan_since = a.plan_next = None
        if changed and own_rate is None:
            a.tat = None  # the plan's rate limit, or none: not the one the TAT was for
        if changed and new_pl is not None:
            self.plan_counts[new_pl] = self.plan_counts.get(new_pl, 0) + 1
            a.plan, a.plan_anchor, a.plan_since, a.plan_next = new_pl, new_pan, self._now, None
            self._plan_renew(account, a)
        elif new_pl is not None and new_pan != old_pan:
            a.plan_anchor = new_pan
            if a.plan_next is not None and a.plan_next <= self._now:
                self._expire_due(account, a)  # a renewal due: under the new anchor, first
            if moved_end is not None:
                a.plan_next = moved_end
                a.deadlines["p:"] = moved_end

        own = a.spend
        if not isinstance(spend_limit, Keep):
            own = a.spend = spend_limit
        eff = self._spend_limit(a)
        assert eff == (own or (spec.spend if spec else None))

        def window_of(limit: SpendLimit | None) -> tuple[str | None, int] | None:
            return None if limit is None else (limit.interval, limit.interval_count)

        if eff is None:
            a.spend_state = None
        elif (
            window_of(eff) != window_of(eff_old)
            or changed
            or (new_pl is not None and new_pan != old_pan)  # a new anchor moves the windows
        ):
            # counted from now: what the old limit counted is never given back here
            a.spend_state = self._spend_reset(a, eff, a.spend_state if eff_old else None)
        return AccountConfig(not exists, a.ovl, a.lbt, a.rate, a.spend, a.plan, a.plan_anchor)

    def grant(
        self,
        account: str,
        grant_id: str,
        credits: int,
        *,
        expires_at: int | None = None,
        priority: int = 0,
        source: str = "manual",
        metadata: dict[str, Any] | None = None,
        description: str = "",
    ) -> GrantResult:
        self._begin()
        self._check_range("credits", credits, 1, MAX_CREDITS)
        if expires_at is not None:
            self._check_range("expires_at", expires_at, 1, NEVER - 1)
        self._check_range("priority", priority, -INT32, INT32 - 1)
        meta = encode_metadata(metadata)
        a = self._require(account)
        exp = "" if expires_at is None else str(expires_at)
        fp = f"{credits}|{exp}|{priority}|{source}|{meta}"
        existing = a.buckets.get(grant_id)
        if existing is not None:
            if existing.fp != fp:
                raise IdempotencyConflict(f"grant_id {grant_id} was already used")
            return GrantResult(existing.tx, existing.bal, True)
        if expires_at is not None and expires_at <= self._now:
            raise InvalidInput("expires_at must be in the future", field="expires_at")
        self._check_overflow(account, a, credits)
        repaid = min(a.debt, credits)
        a.debt -= repaid
        rem = credits - repaid
        b = ModelBucket(
            grant_id,
            credits,
            self._now,
            expires_at,
            priority,
            source,
            meta,
            fp,
            self._txid,
            remaining=rem,
        )
        a.buckets[grant_id] = b
        a.avail += rem
        if expires_at is not None:
            a.deadlines["b:" + grant_id] = expires_at
        self._emit(
            account,
            a,
            self._txid,
            "purchase" if source == "purchase" else "grant",
            credits,
            [(grant_id, rem)],
            {"bucket": b.entry(), "repaid": repaid, "desc": description, "meta": meta},
        )
        b.bal = a.balance
        return GrantResult(self._txid, a.balance, False)

    def _replay(self, a: ModelAccount, key: str, cost: int, fp: str) -> tuple[str, int] | None:
        """An earlier usage under ``key``: its transaction and balance, if this is its replay
        (IdempotencyConflict if the key was used for another request); None if new."""
        prior = a.idempotency.get(key)
        if prior is None:
            return None
        tx, prior_cost, bal, prior_fp, attempts = prior
        if prior_cost != cost or prior_fp != fp:
            raise IdempotencyConflict(f"idempotency_key {key} was already used")
        a.idempotency[key] = (tx, cost, bal, fp, attempts + 1)
        return tx, bal

    def _charge(
        self, account: str, a: ModelAccount, cost: int, key: str, desc: str, meta: str, fp: str
    ) -> int:
        """Takes ``cost`` in burn order (the rest as debt), counts it against the spending
        limit, records the usage; returns what became debt."""
        alloc, short = self._draw(a, cost, hold=False)
        a.debt += short
        sw = self._spend_add(a, cost)  # before the entry, which carries the state after it
        extra: dict[str, Json] = {
            "idempotency_key": key,
            "overdraft": short,
            "desc": desc,
            "meta": meta,
            "key_id": "",
            "route": "",
            "fp": fp,
            "sw": sw,
        }
        self._emit(account, a, self._txid, "usage", -cost, alloc, extra)
        a.idempotency[key] = (self._txid, cost, a.balance, fp, 1)
        a.usages[self._txid] = ModelUsage(cost, alloc, short, sw=sw)
        return short

    def deduct(
        self,
        account: str,
        cost: int,
        idempotency_key: str,
        *,
        description: str = "",
        metadata: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> DeductResult:
        if dry_run:
            # What the call would answer, then every change undone (ids still advance).
            saved = copy.deepcopy((self.accounts, self.outbox))
            r = self.deduct(
                account, cost, idempotency_key, description=description, metadata=metadata
            )
            calls = self._calls
            self.accounts, self.outbox = saved
            self._calls = calls
            if isinstance(r, Allowed):
                return Allowed("", r.balance, r.cost, r.replayed, r.low_balance, rate=r.rate)
            return r
        self._begin()
        self._check_range("cost", cost, 0, MAX_CREDITS)
        meta = encode_metadata(metadata)
        a = self._require(account)
        fp = request_fp("", "", description, meta, "")
        prior = self._replay(a, idempotency_key, cost, fp) if cost > 0 else None
        if prior is not None:
            return Allowed(prior[0], prior[1], cost, True, False)
        wait, new_tat, rate = self._rate_check(a)
        if wait > 0:
            return RateLimited(wait)
        self._expire_due(account, a)
        if cost == 0:  # a free route: authenticated and rate limited, nothing recorded
            if new_tat is not None:
                a.tat = new_tat
            return Allowed("", a.balance, 0, False, False, rate=rate)
        limit = self._spend(a)
        if limit is not None and limit[0].spent + cost > limit[0].limit.credits:
            return SpendLimited("account", limit[0], cost)
        before = a.balance
        if before - cost < -a.ovl:
            return Insufficient(before, cost)
        self._charge(account, a, cost, idempotency_key, description, meta, fp)
        if new_tat is not None:
            a.tat = new_tat
        after = a.balance
        low = a.lbt is not None and before >= a.lbt and after < a.lbt
        return Allowed(self._txid, after, cost, False, low, rate=rate)

    def report_usage(
        self,
        account: str,
        cost: int,
        idempotency_key: str,
        *,
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> UsageReported:
        """Usage after the work: never refused (balance, limits, rate); the rest is debt."""
        self._begin()
        self._check_range("cost", cost, 1, MAX_CREDITS)
        meta = encode_metadata(metadata)
        a = self._require(account)
        fp = request_fp("", "", description, meta, "usage-report")
        prior = self._replay(a, idempotency_key, cost, fp)
        if prior is not None:
            return UsageReported(prior[0], prior[1], cost, True, 0)
        self._expire_due(account, a)
        if a.debt + max(0, cost - a.avail) > MAX_CREDITS:  # debt is exact up to 2^53-1 only
            raise BalanceOverflow("the account would hold more than 2^53-1 credits")
        short = self._charge(account, a, cost, idempotency_key, description, meta, fp)
        return UsageReported(self._txid, a.balance, cost, False, short)

    def hold(
        self,
        account: str,
        hold_id: str,
        amount: int,
        ttl_ms: int,
        *,
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> HoldResult | Insufficient | SpendLimited:
        self._begin()
        self._check_range("amount", amount, 1, MAX_CREDITS)
        self._check_range("ttl_ms", ttl_ms, 1, MAX_TTL_MS)
        meta = encode_metadata(metadata)
        a = self._require(account)
        rec = a.holds.get(hold_id)
        if rec is not None and (rec.amount != amount or rec.ttl != ttl_ms):
            raise IdempotencyConflict(f"hold_id {hold_id} was already used")
        self._expire_due(account, a)
        if rec is not None:
            # A replay reports the state after what was due (its own TTL, say) was
            # processed; a closed hold purged just now still answers this once.
            return HoldResult(hold_id, rec.tx, rec.bal, rec.expires, rec.state, True)
        limit = self._spend(a)
        if limit is not None and limit[0].spent + amount > limit[0].limit.credits:
            return SpendLimited("account", limit[0], amount)
        before = a.balance
        if before < amount:
            return Insufficient(before, amount)
        alloc, _ = self._draw(a, amount, hold=True)
        parts = [(b, -n) for b, n in alloc]
        rec = ModelHold(amount, ttl_ms, parts, self._now, self._now + ttl_ms, self._txid)
        rec.sw = self._spend_add(a, amount)
        self._emit(
            account,
            a,
            self._txid,
            "hold",
            -amount,
            alloc,
            {
                "held": [[b, n] for b, n in parts],
                "hold_id": hold_id,
                "expires": rec.expires,
                "desc": description,
                "meta": meta,
                "sw": rec.sw,
            },
        )
        rec.bal = a.balance
        a.holds[hold_id] = rec
        a.deadlines["h:" + hold_id] = rec.expires
        return HoldResult(hold_id, self._txid, rec.bal, rec.expires, "active", False)

    def settle(
        self,
        account: str,
        hold_id: str,
        amount: int,
        *,
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> CloseResult:
        return self._close(account, hold_id, "settle", amount, description, metadata)

    def release(
        self,
        account: str,
        hold_id: str,
        *,
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> CloseResult:
        return self._close(account, hold_id, "release", 0, description, metadata)

    def _close(
        self,
        account: str,
        hold_id: str,
        mode: str,
        amount: int,
        description: str,
        metadata: dict[str, Any] | None,
    ) -> CloseResult:
        self._begin()
        if mode == "settle":
            self._check_range("amount", amount, 0, MAX_CREDITS)
        meta = encode_metadata(metadata)
        a = self._require(account)
        rec = a.holds.get(hold_id)
        if rec is None:
            raise UnknownHold(f"hold {hold_id} does not exist")
        want = "settled" if mode == "settle" else "released"
        if rec.state != "active":
            asked = (rec.charged or 0) + (rec.uncovered or 0)
            same = rec.state == want and (mode == "release" or asked == amount)
            if same or (mode == "release" and rec.state == "expired"):
                assert rec.close_tx is not None and rec.close_balance is not None
                assert rec.charged is not None and rec.forfeited is not None
                return CloseResult(
                    hold_id,
                    rec.close_tx,
                    rec.close_balance,
                    rec.charged,
                    rec.forfeited,
                    rec.state,
                    True,
                    rec.uncovered or 0,
                )
            if rec.state == "expired":
                raise HoldExpired(f"hold {hold_id} expired and was released by {rec.close_tx}")
            if rec.state == want:
                raise IdempotencyConflict(f"hold {hold_id} was already settled for {asked}")
            raise HoldClosed(f"hold {hold_id} is already {rec.state}")
        self._expire_due(account, a)
        if rec.state != "active":
            # Its TTL ran out before this call: the same answer as once the sweeper ran.
            if mode == "settle":
                raise HoldExpired(f"hold {hold_id} expired and was released by {rec.close_tx}")
            assert rec.close_tx is not None and rec.close_balance is not None
            assert rec.charged is not None and rec.forfeited is not None
            return CloseResult(
                hold_id,
                rec.close_tx,
                rec.close_balance,
                rec.charged,
                rec.forfeited,
                rec.state,
                True,
            )
        self._close_hold(account, a, hold_id, rec, amount, want, self._txid, description, meta)
        assert rec.close_balance is not None and rec.forfeited is not None
        assert rec.charged is not None
        return CloseResult(
            hold_id,
            self._txid,
            rec.close_balance,
            rec.charged,
            rec.forfeited,
            rec.state,
            False,
            rec.uncovered or 0,
        )

    def refund(
        self,
        account: str,
        refund_id: str,
        transaction_id: str,
        amount: int | None = None,
        *,
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> RefundResult:
        self._begin()
        if not transaction_id:  # free (cost 0) checks have no transaction id
            raise InvalidInput("transaction_id must not be empty", field="transaction_id")
        if amount is not None:
            self._check_range("amount", amount, 1, MAX_CREDITS)
        meta = encode_metadata(metadata)
        a = self._require(account)
        u = a.usages.get(transaction_id)
        if u is None:
            raise UnknownTransaction(f"no refundable usage transaction {transaction_id}")
        arg = "" if amount is None else str(amount)
        prior = u.refunds.get(refund_id)
        if prior is not None:
            if prior.arg != arg:
                raise IdempotencyConflict(f"refund_id {refund_id} was already used")
            return RefundResult(prior.tx, prior.bal, prior.refunded, prior.forfeited, True)
        left = u.cost - u.refunded
        if left == 0:
            raise FullyRefunded(f"transaction {transaction_id} is already fully refunded")
        want = left if amount is None else amount
        total = want
        if want > left:
            raise InvalidInput("amount exceeds what is left to refund", field="amount")
        self._check_overflow(account, a, want)
        # The usage's parts, last taken first: the overdraft, then buckets in reverse order.
        parts: list[tuple[str | None, int]] = []
        if u.overdraft > 0:
            parts.append((None, u.overdraft))
        parts.extend((b, -n) for b, n in reversed(u.alloc))
        skip = u.refunded
        alloc: list[tuple[str, int]] = []
        restored = forfeited = repaid = excess = 0
        for bucket_id, n in parts:
            s = min(skip, n)
            skip -= s
            t = min(n - s, want)
            want -= t
            if t > 0 and bucket_id is None:
                repaid = min(a.debt, t)
                a.debt -= repaid
                excess = t - repaid
            elif t > 0 and bucket_id is not None:
                back = self._credit(a, bucket_id, t)
                if back > 0:
                    alloc.append((bucket_id, back))
                restored += back
                forfeited += t - back
            if want == 0:
                break
        extra: dict[str, Json] = {
            "source_transaction_id": transaction_id,
            "refund_id": refund_id,
            "requested_amount": arg,
            "repaid": repaid,
            "forfeited": forfeited,
            "desc": description,
            "meta": meta,
        }
        if excess > 0:
            bid = "refund:" + self._txid
            b = ModelBucket(
                bid, excess, self._now, None, 0, "refund", "", "", self._txid, remaining=excess
            )
            a.buckets[bid] = b
            a.avail += excess
            alloc.append((bid, excess))
            extra["bucket"] = b.entry()
            b.bal = a.balance
        to_x = 0
        if u.xw is not None:  # a settle's extra, counted elsewhere, is given back first
            to_x = min(total, max(0, u.xn - u.refunded))
            self._spend_return(a, u.xw, to_x)
        self._spend_return(a, u.sw, total - to_x)
        self._emit(account, a, self._txid, "refund", restored + repaid + excess, alloc, extra)
        u.refunded += total
        u.refunds[refund_id] = ModelRefund(arg, self._txid, a.balance, total, forfeited)
        return RefundResult(self._txid, a.balance, total, forfeited, False)

    def balance(self, account: str) -> Balance:
        self._begin()
        a = self._require(account)
        self._expire_due(account, a)
        buckets = [
            Bucket(
                id=b.id,
                credits=b.credits,
                remaining=b.remaining or 0,
                held=b.held,
                created_at=b.created,
                expires_at=b.expires,
                priority=b.priority,
                source=b.source,
                metadata=json.loads(b.metadata) if b.metadata else {},
            )
            for b in a.burn_order()
        ]
        return Balance(
            account=account,
            balance=a.balance,
            available=a.avail,
            held=a.held,
            debt=a.debt,
            overdraft_limit=a.ovl,
            low_balance_threshold=a.lbt,
            rate_limit=self._rate(a),
            created_at=a.created,
            buckets=buckets,
            spend=s[0] if (s := self._spend(a)) else None,
            plan=(
                None if a.plan is None else PlanState(a.plan, a.plan_anchor or 0, a.plan_next or 0)
            ),
        )

    def expire(self, account: str) -> int:
        self._begin()
        a = self.accounts.get(account)
        if a is None:
            return 0
        self._expire_due(account, a)
        return self._extra

    def sweep(self, limit: int = 500) -> int:
        now = self.clock()
        due = sorted(
            (min(a.deadlines.values()), name)
            for name, a in self.accounts.items()
            if a.deadlines and min(a.deadlines.values()) <= now
        )
        return sum(self.expire(name) for _, name in due[:limit])

    # -- inspection -------------------------------------------------------------------

    def stored(self, account: str) -> StoredAccount | None:
        """What the store should hold for the account (None: no such account)."""
        a = self.accounts.get(account)
        if a is None:
            return None
        return StoredAccount(
            created=a.created,
            avail=a.avail,
            held=a.held,
            debt=a.debt,
            seq=a.seq,
            overdraft_limit=a.ovl,
            low_balance_threshold=a.lbt,
            rate_limit=a.rate,
            tat=a.tat,
            spend_limit=a.spend.spec() if a.spend else None,
            spend_state=f"{a.spend_state[0]}:{a.spend_state[1]}" if a.spend_state else None,
            buckets={b.id: StoredBucket(b.meta(), b.remaining, b.held) for b in a.buckets.values()},
            order=[okey(b.priority, b.expires, b.created, b.id) for b in a.burn_order()],
            deadlines=dict(a.deadlines),
            holds={hid: h.record() for hid, h in a.holds.items()},
            due=min(a.deadlines.values()) if a.deadlines else None,
            idempotency={
                k: {"tx": tx, "cost": cost, "bal": bal, "fp": fp}
                | ({"at": n} if n <= MAX_ATTEMPTS else {"at": MAX_ATTEMPTS, "ax": 1})
                for k, (tx, cost, bal, fp, n) in a.idempotency.items()
            },
            usages={tx: u.record() for tx, u in a.usages.items()},
            plan=a.plan,
            plan_anchor=a.plan_anchor,
            plan_since=a.plan_since,
            plan_next=a.plan_next,
        )

    def transactions(self, account: str | None = None) -> list[Txn]:
        return [t for t in self.outbox if account is None or t["account"] == account]
