"""The credit ledger: typed Python calls over the Lua scripts, one script call each.

The Lua scripts do the validation that matters and all writes; this module builds
keys and arguments, generates transaction ids, reads the clock and turns replies into
results or domain errors. The clock is injectable so tests can move time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import orjson
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError

from sidecar.autopipe import AutoPipeline
from sidecar.errors import (
    BalanceOverflow,
    HoldExpired,
    InvalidInput,
    StoreUnavailable,
    from_script_error,
)
from sidecar.keys import KeySpace
from sidecar.redis_client import RedisClient
from sidecar.redis_client import text as _text
from sidecar.scripts import Scripts
from sidecar.settings import Settings

MAX_CREDITS = 2**53 - 1
# Latest accepted timestamp (9999-12-31T23:59:59.999Z): every stored time stays printable.
MAX_TIMESTAMP_MS = 253_402_300_799_999
CALL_DEADLINE_S = 5.0  # default of SIDECAR_REDIS_DEADLINE_S: a call's time, retries included
# How much earlier than the caller gives up a script stops accepting a call (lua/_lib.lua
# in_time): it covers clock skew between this host and Redis plus a reply's way back.
DEADLINE_MARGIN_MS = 500
log = logging.getLogger(__name__)
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# Transaction ids need to be unique, not secret: 128 random bits from a generator seeded from
# the OS once per process, without uuid4's system call per id (a hot-path cost).
_ids = random.Random(int.from_bytes(os.urandom(32), "big"))
# A forked child must not repeat its parent's ids.
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_transaction_id() -> str:
    return f"tx_{_ids.getrandbits(128):032x}"


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    period_ms: int
    burst: int


@dataclass(frozen=True, slots=True)
class GrantResult:
    transaction_id: str
    balance: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class Allowed:
    transaction_id: str
    balance: int
    cost: int
    replayed: bool
    low_balance: bool
    allowed: Literal[True] = True


@dataclass(frozen=True, slots=True)
class RevokeResult:
    """Credits of a refunded or disputed purchase taken back (see lua/revoke.lua)."""

    transaction_id: str | None  # None: nothing changed (a duplicate, or an older view)
    taken: int  # from the purchase's buckets
    debt_added: int  # policy "negative": what its buckets no longer held
    unrecovered: int  # policy "unspent": what its buckets no longer held
    balance: int
    pending: int = 0  # held credits of its buckets, taken when their hold releases them
    given_back: int = 0  # a lower target: credits returned plus debt cancelled
    target: int = 0  # the clawback's target now
    version: int = 0  # the version of the view it was last set from


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


DeductResult = Allowed | Insufficient | RateLimited | Revoked


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


def encode_metadata(metadata: Mapping[str, Any] | None) -> str:
    """Canonical JSON (sorted keys) so the same metadata always gives the same fingerprint."""
    if not metadata:
        return ""
    return orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode()


class Ledger:
    """All credit operations of one deployment (one Redis, one key space)."""

    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        *,
        retention_ms: int = 86_400_000,
        clock: Clock = wall_clock_ms,
        auto_pipeline: bool = True,
        deadline_s: float = CALL_DEADLINE_S,
        deadline_margin_ms: int = DEADLINE_MARGIN_MS,
    ) -> None:
        if not 0 <= deadline_margin_ms < deadline_s * 1000:
            raise ValueError("the deadline margin must be shorter than the deadline")
        self.redis = redis
        self.keys = keys
        self.retention_ms = retention_ms
        self.clock = clock
        self.deadline_s = deadline_s  # of every Redis call, retries included
        # A script refuses a call that runs later than this after it was made (ms).
        self._script_deadline_ms = int(deadline_s * 1000) - deadline_margin_ms
        self.scripts = Scripts.register(redis)
        # Concurrent calls share round trips (sidecar/autopipe.py), on one node or a cluster.
        self.pipeline = AutoPipeline(redis, deadline_s=deadline_s) if auto_pipeline else None

    def close(self) -> None:
        """Closes the auto-pipeline's own connections (the Redis client is the caller's)."""
        if self.pipeline is not None:
            self.pipeline.close()

    async def run_script(
        self,
        script: AsyncScript,
        account: str,
        extra_keys: list[str],
        args: list[str | int],
        txid: str | None = None,
    ) -> Any:
        """Runs a ledger script with the common keys and arguments (see lua/_lib.lua).

        The call is answered within ``deadline_s`` or fails with StoreUnavailable; the script
        itself refuses to run (LATE) after a deadline a margin earlier, on the real clock (not
        the ledger's, which tests move), so a call answered "unavailable" never took effect.
        """
        keys = self.keys.for_account(account).common() + extra_keys
        common: list[str | int] = [
            account,
            self.clock(),
            txid or new_transaction_id(),
            self.retention_ms,
            wall_clock_ms() + self._script_deadline_ms,
        ]
        argv = common + args

        if self.pipeline is not None:
            # The pipeline applies the deadline once per batch, from when the batch is sent:
            # never earlier than the script's own.
            return await store_errors(self.pipeline.run(script, keys, argv))

        async def invoke() -> Any:
            try:
                return await script(keys=keys, args=argv)
            except NoScriptError:
                # The cache was flushed again between register_script's reload and its
                # EVALSHA; EVAL loads and runs in one step, so it cannot miss.
                return await self.redis.eval(cast(str, script.script), len(keys), *keys, *argv)

        return await store_call(invoke(), self.deadline_s)

    async def configure_account(
        self,
        account: str,
        *,
        overdraft_limit: int = 0,
        low_balance_threshold: int | None = None,
        rate_limit: RateLimit | None = None,
    ) -> bool:
        """Creates the account or replaces its settings; True when it was created."""
        rl: list[str | int] = (
            [rate_limit.requests, rate_limit.period_ms, rate_limit.burst]
            if rate_limit
            else ["", "", ""]
        )
        opt_lbt = "" if low_balance_threshold is None else low_balance_threshold
        reply = await self.run_script(
            self.scripts.account, account, [], [overdraft_limit, opt_lbt, *rl]
        )
        return bool(reply[0])

    async def grant(
        self,
        account: str,
        grant_id: str,
        credits: int,
        *,
        expires_at: int | None = None,
        priority: int = 0,
        source: str = "manual",
        metadata: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> GrantResult:
        reply = await self.run_script(
            self.scripts.grant,
            account,
            [],
            [
                grant_id,
                credits,
                "" if expires_at is None else expires_at,
                priority,
                source,
                encode_metadata(metadata),
                description,
            ],
        )
        _raise_overflow(reply)
        return GrantResult(_text(reply[1]), int(reply[2]), bool(reply[3]))

    async def deduct(
        self,
        account: str,
        cost: int,
        idempotency_key: str,
        *,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
        key_id: str = "",
        route: str = "",
        route_limit: RateLimit | None = None,
        replay_window_ms: int | None = None,
        request: str = "",
    ) -> DeductResult:
        """Takes ``cost`` credits (0: a free route, only authenticate and rate limit).

        With ``key_id`` the call is refused (``Revoked``) unless that API key is still
        active on the account; ``route_limit`` is the priced route's own rate limit. The
        idempotency key replays only the same request (cost, key id, route, description,
        metadata and ``request``: more of what identifies it, up to 256 bytes), for
        ``replay_window_ms`` (None: the retention); anything else reusing it is an
        IdempotencyConflict.
        """
        txid = new_transaction_id()
        extra_keys = [
            self.keys.idempotency(account, idempotency_key),
            self.keys.usage(account, txid),
            self.keys.events_for(account),
        ]
        rl: list[str | int] = (
            [route_limit.requests, route_limit.period_ms, route_limit.burst]
            if route_limit
            else ["", "", ""]
        )
        args: list[str | int] = [
            cost,
            idempotency_key,
            description,
            encode_metadata(metadata),
            key_id,
            route,
            *rl,
            "" if replay_window_ms is None else min(replay_window_ms, self.retention_ms),
            request,
        ]
        reply = await self.run_script(self.scripts.deduct, account, extra_keys, args, txid)
        status = _text(reply[0])
        if status == "ok":
            return Allowed(
                _text(reply[1]), int(reply[2]), int(reply[3]), bool(reply[4]), bool(reply[5])
            )
        if status == "insufficient":
            return Insufficient(int(reply[1]), int(reply[2]))
        if status == "revoked":
            return Revoked()
        return RateLimited(int(reply[1]))

    async def hold(
        self,
        account: str,
        hold_id: str,
        amount: int,
        ttl_ms: int,
        *,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> HoldResult | Insufficient:
        reply = await self.run_script(
            self.scripts.hold,
            account,
            [self.keys.events_for(account)],
            [hold_id, amount, ttl_ms, description, encode_metadata(metadata)],
        )
        if _text(reply[0]) == "insufficient":
            return Insufficient(int(reply[1]), int(reply[2]))
        return HoldResult(
            hold_id, _text(reply[1]), int(reply[2]), int(reply[3]), _text(reply[5]), bool(reply[4])
        )

    async def settle(
        self,
        account: str,
        hold_id: str,
        amount: int,
        *,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> CloseResult:
        return await self._close(account, hold_id, "settle", amount, description, metadata)

    async def release(
        self,
        account: str,
        hold_id: str,
        *,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> CloseResult:
        return await self._close(account, hold_id, "release", 0, description, metadata)

    async def _close(
        self,
        account: str,
        hold_id: str,
        mode: str,
        amount: int,
        description: str,
        metadata: Mapping[str, Any] | None,
    ) -> CloseResult:
        txid = new_transaction_id()
        reply = await self.run_script(
            self.scripts.close_hold,
            account,
            [self.keys.usage(account, txid)],
            [hold_id, mode, amount, description, encode_metadata(metadata)],
            txid,
        )
        if _text(reply[0]) == "hold_expired":
            raise HoldExpired(
                f"hold {hold_id} expired and was released by transaction {_text(reply[1])}"
            )
        return CloseResult(
            hold_id,
            _text(reply[1]),
            int(reply[2]),
            int(reply[3]),
            int(reply[5]),
            _text(reply[6]),
            bool(reply[4]),
        )

    async def refund(
        self,
        account: str,
        refund_id: str,
        transaction_id: str,
        amount: int | None = None,
        *,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> RefundResult:
        reply = await self.run_script(
            self.scripts.refund,
            account,
            [self.keys.usage(account, transaction_id)],
            [
                refund_id,
                transaction_id,
                "" if amount is None else amount,
                description,
                encode_metadata(metadata),
            ],
        )
        _raise_overflow(reply)
        return RefundResult(
            _text(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]), bool(reply[5])
        )

    async def revoke(
        self,
        account: str,
        purchase: str,
        target: int,
        *,
        buckets: list[str],
        policy: Literal["unspent", "negative"],
        version: int,
        description: str = "",
    ) -> RevokeResult:
        """Sets the credits of ``purchase`` taken back in total to ``target`` (a lower one
        gives credits back), as seen in version ``version`` of the purchase's refunds and
        disputes: repeated calls and older versions change nothing (lua/revoke.lua)."""
        reply = await self.run_script(
            self.scripts.revoke,
            account,
            [],
            [purchase, target, policy, orjson.dumps(buckets).decode(), description, version],
        )
        txid = _text(reply[0])
        return RevokeResult(txid or None, *(int(x) for x in reply[1:9]))

    async def set_auto_topup_threshold(self, account: str, threshold: int | None) -> int:
        """Arms (or, with None, disarms) the auto top-up trigger; returns the balance."""
        reply = await self.run_script(
            self.scripts.autotopup, account, [], ["" if threshold is None else threshold]
        )
        return int(reply[0])

    async def balance(self, account: str) -> Balance:
        r = await self.run_script(self.scripts.balance, account, [], [])
        buckets = []
        for bucket_id, remaining, held, raw in r[8]:
            meta = orjson.loads(raw)
            buckets.append(
                Bucket(
                    id=_text(bucket_id),
                    credits=int(meta["credits"]),
                    remaining=int(remaining),
                    held=int(held),
                    created_at=int(meta["created"]),
                    expires_at=int(meta["expires"]) if "expires" in meta else None,
                    priority=int(meta["priority"]),
                    source=meta["source"],
                    metadata=orjson.loads(meta["metadata"]) if meta["metadata"] else {},
                )
            )
        rate = RateLimit(*(int(x) for x in r[6])) if r[6] else None
        return Balance(
            account=account,
            balance=int(r[0]),
            available=int(r[1]),
            held=int(r[2]),
            debt=int(r[3]),
            overdraft_limit=int(r[4]),
            low_balance_threshold=int(r[5]) if r[5] else None,
            rate_limit=rate,
            created_at=int(r[7]),
            buckets=buckets,
        )

    async def expire(self, account: str) -> int:
        """Processes the account's due deadlines; returns how many transactions that wrote."""
        return int(await self.run_script(self.scripts.expire, account, [], []))

    async def granted_credits(self, account: str, bucket_id: str) -> int | None:
        """What the bucket was granted (its record, which SQL mirrors), also once it is spent
        or expired; None if the account never had it."""
        raw = await store_call(
            self.redis.hget(
                self.keys.for_account(account).account, self.keys.bucket_meta_field(bucket_id)
            ),
            self.deadline_s,
        )
        return None if raw is None else int(orjson.loads(raw)["credits"])

    async def sweep(self, limit: int = 500) -> int:
        """One pass of the expiry sweep over every shard; returns transactions written."""
        now = self.clock()
        written = 0
        for shard in range(self.keys.shards):
            accounts = await store_call(
                self.redis.zrangebyscore(self.keys.due(shard), "-inf", now, start=0, num=limit),
                self.deadline_s,
            )
            for account in accounts:
                written += await self.expire(_text(account))
        return written


def ledger_for(redis: RedisClient, settings: Settings, clock: Clock = wall_clock_ms) -> Ledger:
    """The deployment's ledger on ``redis``, as its settings describe it."""
    return Ledger(
        redis,
        KeySpace(settings.shards),
        retention_ms=settings.retention_s * 1000,
        clock=clock,
        deadline_s=settings.redis_deadline_s,
        deadline_margin_ms=settings.redis_deadline_margin_ms,
    )


def _raise_overflow(reply: Any) -> None:
    if _text(reply[0]) == "overflow":
        raise BalanceOverflow("the account would hold more than 2^53-1 credits")


async def store_call(awaitable: Awaitable[Any], deadline_s: float = CALL_DEADLINE_S) -> Any:
    """Awaits a Redis call within ``deadline_s`` (retries included); errors as store_errors,
    and a missed deadline is StoreUnavailable too."""
    try:
        async with asyncio.timeout(deadline_s):
            return await store_errors(awaitable)
    except TimeoutError as e:
        log.warning("redis call missed its %.1fs deadline", deadline_s)
        raise StoreUnavailable("the credit store is unavailable") from e


async def store_errors(awaitable: Awaitable[Any]) -> Any:
    """Turns script errors into domain errors and every other Redis failure (unreachable,
    read-only replica, out of memory, busy, the deadline) into StoreUnavailable, logged here
    and answered with a generic message. An argument that cannot be sent (a str that is not
    valid UTF-8) is the caller's input: InvalidInput."""
    try:
        return await awaitable
    except DataError as e:
        raise InvalidInput(str(e)) from None
    except ResponseError as e:
        err = from_script_error(str(e))
        if isinstance(err, StoreUnavailable):  # LATE: it ran after its deadline, did nothing
            log.warning("a call reached redis too late and changed nothing: %s", err.message)
            raise StoreUnavailable("the credit store is unavailable") from None
        if err is not None:
            raise err from None
        log.warning("redis refused a call: %s", e)
        raise StoreUnavailable("the credit store refused the call") from e
    except (RedisError, OSError, TimeoutError) as e:
        log.warning("redis unavailable: %r", e)
        raise StoreUnavailable("the credit store is unavailable") from e
