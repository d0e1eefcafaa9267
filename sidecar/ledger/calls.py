"""The credit ledger: typed Python calls over the Lua scripts, one script call each.

The Lua scripts do the validation that matters and all writes; this module builds
keys and arguments, generates transaction ids and reads the clock; sidecar/ledger/replies.py turns
each script's reply into its result (sidecar/ledger/results.py) or a domain error. The clock is
injectable so tests can move time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import orjson
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from sidecar.errors import StoreUnavailable
from sidecar.ledger import replies
from sidecar.ledger.account_calls import AccountCalls
from sidecar.ledger.arguments import (
    encode_metadata,
    new_transaction_id,
    wall_clock_ms,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.redis_calls import CALL_DEADLINE_S, may_have_run, store_call, store_errors
from sidecar.ledger.results import (
    Balance,
    CloseResult,
    DeductResult,
    GrantResult,
    HoldResult,
    Insufficient,
    RateLimit,
    RefundResult,
    RevokeResult,
    SpendLimited,
    UsageReported,
)
from sidecar.ledger.voids import VOID_DELAY_MS, Void, VoidQueue, new_attempt_token, request_digest
from sidecar.lua import Scripts
from sidecar.redis.autopipe import AutoPipeline
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _text
from sidecar.settings import Settings

# How much earlier than the caller gives up a script stops accepting a call (sidecar/lua/_lib.lua
# in_time): it covers clock skew between this host and Redis plus a reply's way back.
DEADLINE_MARGIN_MS = 500
# The request identity (deduct.lua ARGV[16]) of usage reported after the fact: a report and a
# check under the same idempotency key are different requests.
REPORT_IDENTITY = "usage-report"
log = logging.getLogger(__name__)
Clock = Callable[[], int]


class Ledger(AccountCalls):
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
        void_queue_max: int = 100_000,
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
        self._deadline_margin_ms = deadline_margin_ms
        self.scripts = Scripts.register(redis)
        # Concurrent calls share round trips (sidecar/redis/autopipe.py), on one node or a cluster.
        self.pipeline = AutoPipeline(redis, deadline_s=deadline_s) if auto_pipeline else None
        # Checks answered "unavailable" whose call may have charged (sidecar/ledger/voids.py).
        self.voids = VoidQueue(self, void_queue_max)

    def close(self) -> None:
        """Closes the auto-pipeline's own connections (the Redis client is the caller's)
        and stops sending voids (see ``voids.drain`` to wait for them first)."""
        self.voids.close()
        if self.pipeline is not None:
            self.pipeline.close()

    async def run_script(
        self,
        script: AsyncScript,
        account: str,
        extra_keys: list[str],
        args: list[str | int],
        txid: str | None = None,
        deadline_ms: int | None = None,
    ) -> Any:
        """Runs a ledger script with the common keys and arguments (see sidecar/lua/_lib.lua).

        The call is answered within ``deadline_s`` or fails with StoreUnavailable; the script
        itself refuses to run (LATE) after a deadline a margin earlier, on the real clock (not
        the ledger's, which tests move), so a call answered "unavailable" never took effect
        if it reached Redis late. ``deadline_ms``: that deadline, if the caller computed it.
        """
        keys = self.keys.for_account(account).common() + extra_keys
        common: list[str | int] = [
            account,
            self.clock(),
            txid or new_transaction_id(),
            self.retention_ms,
            deadline_ms or self.script_deadline(),
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

    def script_deadline(self) -> int:
        """The deadline (wall clock ms) of a script call made now."""
        return wall_clock_ms() + self._script_deadline_ms

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
        return replies.grant(reply)

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
        void_if_lost: bool = True,
        dry_run: bool = False,
    ) -> DeductResult:
        """Takes ``cost`` credits (0: a free route, only authenticate and rate limit).

        With ``key_id`` the call is refused (``Revoked``) unless that API key is still
        active on the account; ``route_limit`` is the priced route's own rate limit. The
        idempotency key replays only the same request (cost, key id, route, description,
        metadata and ``request``: more of what identifies it, up to 256 bytes), for
        ``replay_window_ms`` (None: the retention); anything else reusing it is an
        IdempotencyConflict.

        StoreUnavailable (answered 503) means not charged: a charging call that may have run
        anyway (its reply lost or late) is voided once Redis answers again
        (sidecar/ledger/voids.py).
        ``void_if_lost=False``: the caller answers that failure as allowed (``fail_open``),
        so a charge it may have made stays.

        ``dry_run``: the answer the call would get (as if due expiries had been processed),
        with an empty transaction id, changing nothing.
        """
        reply = await self._deduct(
            account,
            cost,
            idempotency_key,
            description,
            metadata,
            key_id,
            route,
            route_limit,
            replay_window_ms,
            request,
            void_if_lost,
            "1" if dry_run else "",
        )
        return replies.deduct(reply, cost)

    async def report_usage(
        self,
        account: str,
        cost: int,
        idempotency_key: str,
        *,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> UsageReported:
        """Records usage of work already done: never refused for the balance, the spending
        limits or the rate limits; what the buckets cannot cover becomes debt, even beyond the
        overdraft (the account's checks are then refused until it is covered). Idempotent by
        ``idempotency_key`` (the same cost, description and metadata); a check's key and a
        report's never replay each other."""
        reply = await self._deduct(
            account,
            cost,
            idempotency_key,
            description,
            metadata,
            "",
            "",
            None,
            None,
            REPORT_IDENTITY,
            True,
            "report",
        )
        return replies.usage(reply)

    async def _deduct(
        self,
        account: str,
        cost: int,
        idempotency_key: str,
        description: str,
        metadata: Mapping[str, Any] | None,
        key_id: str,
        route: str,
        route_limit: RateLimit | None,
        replay_window_ms: int | None,
        request: str,
        void_if_lost: bool,
        mode: str,
    ) -> Any:
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
            token := new_attempt_token() if cost > 0 and mode != "1" else "",
            mode,
        ]
        deadline = self.script_deadline()
        try:
            reply = await self.run_script(
                self.scripts.deduct, account, extra_keys, args, txid, deadline
            )
        except StoreUnavailable as e:
            if void_if_lost and token and may_have_run(e):
                # sent once the caller has given up (the margin after the script's deadline)
                digest = request_digest(key_id, route, description, str(args[3]), request)
                at = deadline + self._deadline_margin_ms + VOID_DELAY_MS
                self.voids.put(Void(account, idempotency_key, token, cost, digest, at))
            raise
        return reply

    async def hold(
        self,
        account: str,
        hold_id: str,
        amount: int,
        ttl_ms: int,
        *,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> HoldResult | Insufficient | SpendLimited:
        reply = await self.run_script(
            self.scripts.hold,
            account,
            [self.keys.events_for(account)],
            [hold_id, amount, ttl_ms, description, encode_metadata(metadata)],
        )
        return replies.hold(reply, hold_id, amount)

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
            [self.keys.usage(account, txid), self.keys.events_for(account)],
            [hold_id, mode, amount, description, encode_metadata(metadata)],
            txid,
        )
        return replies.close_hold(reply, hold_id)

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
        return replies.refund(reply)

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
        disputes: repeated calls and older versions change nothing (sidecar/lua/revoke.lua)."""
        reply = await self.run_script(
            self.scripts.revoke,
            account,
            [],
            [purchase, target, policy, orjson.dumps(buckets).decode(), description, version],
        )
        return replies.revoke(reply)

    async def set_auto_topup_threshold(self, account: str, threshold: int | None) -> int:
        """Arms (or, with None, disarms) the auto top-up trigger; returns the balance."""
        reply = await self.run_script(
            self.scripts.autotopup, account, [], ["" if threshold is None else threshold]
        )
        return replies.autotopup(reply)

    async def balance(self, account: str) -> Balance:
        return replies.balance(
            await self.run_script(self.scripts.balance, account, [], []), account
        )

    async def expire(self, account: str) -> int:
        """Processes the account's due deadlines; returns how many transactions that wrote."""
        return replies.expire(await self.run_script(self.scripts.expire, account, [], []))

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
        void_queue_max=settings.void_queue_max,
    )
