"""Voids: a check answered "unavailable" is never charged, even when its call ran.

A check's call can run in Redis and still be answered 503: Redis executed it and then its
reply was lost or late (Redis paused right after, a network stall, the connection dropped).
Each call attempt of a check carries a random token (deduct.lua ARGV[17]), which the script
adds to the idempotency record when it takes effect. When the ledger gives up on an attempt
that may have run, the caller answers 503 and this module voids the attempt afterwards
(sidecar/lua/void.lua): once every attempt listed in the record is voided, none delivered a 200, and
the usage is refunded and the record deleted (a retry is then a new request). An attempt that
got its 200 is never voided, so its charge stays; an attempt that never ran is a no-op.

Only a caller that answers the failure as a refusal voids: ``fail_open`` (and shadow mode)
answer 200 instead, and keep the charge if there was one (``Ledger.deduct(void_if_lost=)``).
Only checks are voided. A hold charges nothing (its TTL releases it if the caller never learns
of it), and a settle, refund or grant is an API call whose 503 means "unknown, retry with the
same id", which then answers as the first time.

The queue is in memory, per process, bounded (``SIDECAR_VOID_QUEUE_MAX``; a void that does not
fit is dropped, logged and counted, and that charge stays: the oldest, kept, are those of the
attempts made as Redis stalled, the likeliest to have run). A void is sent no earlier than
VOID_DELAY_MS after its attempt's caller gave up (the attempt's script deadline plus the
margin), which is what makes it safe against the attempt still queued in Redis (see
void.lua), and is sent again with backoff while Redis is unavailable (a void is idempotent).
A process that dies loses its pending voids: those charges stay
(``credit_sidecar_voids_total{outcome="queued"}`` minus the other outcomes counts them while it
lives). Outcomes: metric ``credit_sidecar_voids_total`` and a log line per refund.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from sidecar.errors import SidecarError, StoreUnavailable
from sidecar.ledger import replies

if TYPE_CHECKING:
    from sidecar.ledger.calls import Ledger

log = logging.getLogger(__name__)
BATCH = 64  # voids sent at once
# How long after its caller gave up on an attempt its void is sent at the earliest. The margin
# (SIDECAR_REDIS_DEADLINE_MARGIN_MS) already makes an attempt that runs after its void refuse;
# this covers that much more clock skew between this host and Redis (sidecar/lua/void.lua).
VOID_DELAY_MS = 1000
DROP_LOG_S = 10.0  # a full queue logs at most this often
MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0

_tokens = random.Random(int.from_bytes(os.urandom(32), "big"))
os.register_at_fork(after_in_child=lambda: _tokens.seed(os.urandom(32)))


def new_attempt_token() -> str:
    """A call attempt's token: unique among one idempotency record's attempts."""
    return f"{_tokens.getrandbits(96):024x}"


def request_digest(key_id: str, route: str, description: str, metadata: str, request: str) -> str:
    """The digest sidecar/lua/deduct.lua stores with an idempotency record (_lib.lua request_fp):
    SHA-1 over the length-prefixed parts (lengths in bytes), 16 hex digits."""
    parts = (key_id, route, description, metadata, request)
    joined = "".join(f"{len(v.encode())}:{v}" for v in parts)
    return hashlib.sha1(joined.encode()).hexdigest()[:16]  # noqa: S324 (a digest, not security)


@dataclass(frozen=True, slots=True)
class Void:
    """One lost attempt of a check: its token, and what identifies the check (matched against
    the record's cost and request digest)."""

    account: str
    idempotency_key: str
    token: str
    cost: int
    digest: str  # request_digest() of the check
    not_before_ms: int  # wall clock: when the void may be sent (see VOID_DELAY_MS)


def _wall_ms() -> int:
    # the real clock, as the scripts' deadlines (not the ledger's, which tests move)
    return time.time_ns() // 1_000_000


def _count(outcome: str) -> None:
    # imported here: sidecar.runtime.metrics imports the ledger, which imports this module
    from sidecar.runtime import metrics

    metrics.VOIDS.labels(outcome).inc()


async def send_void(ledger: Ledger, v: Void) -> str:
    """Runs sidecar/lua/void.lua for ``v`` (StoreUnavailable while Redis is); returns its outcome:
    voided, marked, not_run, absent or kept."""
    from sidecar.ledger.redis_calls import store_call  # (the ledger imports this module)

    k = ledger.keys
    record_key = k.idempotency(v.account, v.idempotency_key)
    for _ in range(3):  # a record replaced between the read and the script: read it again
        raw = await store_call(ledger.redis.get(record_key), ledger.deadline_s)
        if raw is None:
            return "absent"
        tx = str(orjson.loads(raw).get("tx", ""))
        reply = await ledger.run_script(
            ledger.scripts.void,
            v.account,
            [record_key, k.usage(v.account, tx)],
            [v.idempotency_key, v.token, tx, v.cost, v.digest],
        )
        r = replies.void(reply)
        if r.status == "changed":
            continue
        if r.status == "voided":
            log.warning(
                "voided check %s of account %s: its reply was lost and it was answered "
                "unavailable; refunded %s credits (transaction %s)",
                v.idempotency_key,
                v.account,
                r.refunded,
                r.transaction_id or "none: nothing was left to refund",
            )
            return "voided"
        if r.status == "overflow":
            log.error(
                "cannot void check %s of account %s: the refund would overflow the account",
                v.idempotency_key,
                v.account,
            )
            return "failed"
        if r.status in ("mismatch", "untracked"):
            return "kept"
        return r.status  # marked, not_run, absent
    return "kept"


class VoidQueue:
    """The pending voids of one ledger; a task of its own sends them (started on demand)."""

    def __init__(self, ledger: Ledger, max_pending: int) -> None:
        self.ledger = ledger
        self.max_pending = max_pending
        self._pending: deque[Void] = deque()
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None  # set while nothing is pending or being sent
        self._task: asyncio.Task[None] | None = None
        self.outcomes: dict[str, int] = {}  # statistics, for tests and logs
        self._dropped = 0
        self._dropped_logged = -DROP_LOG_S

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, v: Void) -> None:
        """Queues a void (from the event loop's thread); drops it if the queue is full."""
        if len(self._pending) >= self.max_pending:
            self._record("dropped")
            self._dropped += 1
            if time.monotonic() - self._dropped_logged >= DROP_LOG_S:  # not one line per check
                self._dropped_logged = time.monotonic()
                log.error(
                    "void queue full (SIDECAR_VOID_QUEUE_MAX=%d): %d voids dropped so far (the "
                    "latest: check %s of account %s); those checks stay charged if their call "
                    "ran, although they were answered unavailable",
                    self.max_pending,
                    self._dropped,
                    v.idempotency_key,
                    v.account,
                )
            return
        self._pending.append(v)
        self._record("queued")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
            self._task = loop.create_task(self._run())
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()

    def _record(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        _count(outcome)

    async def drain(self, timeout_s: float) -> int:
        """Waits up to ``timeout_s`` for the pending voids to be sent; returns how many are
        left (a shutdown logs them: they are lost)."""
        if self._idle is not None and self._task is not None and not self._task.done():
            try:
                async with asyncio.timeout(timeout_s):
                    await self._idle.wait()
            except TimeoutError:
                pass
        return len(self._pending)

    def close(self) -> None:
        if self._pending:
            log.error(
                "%d pending voids lost at shutdown: those checks were answered unavailable "
                "and may stay charged",
                len(self._pending),
            )
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        backoff = MIN_BACKOFF_S
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            wait_ms = self._pending[0].not_before_ms - _wall_ms()
            if wait_ms > 0:
                await asyncio.sleep(wait_ms / 1000)
                continue
            now = _wall_ms()
            batch: list[Void] = []
            while self._pending and len(batch) < BATCH and self._pending[0].not_before_ms <= now:
                batch.append(self._pending.popleft())
            results = await asyncio.gather(
                *(send_void(self.ledger, v) for v in batch), return_exceptions=True
            )
            retry: list[Void] = []
            for v, r in zip(batch, results, strict=True):
                if isinstance(r, StoreUnavailable):
                    retry.append(v)
                elif isinstance(r, BaseException):
                    if not isinstance(r, SidecarError):
                        log.error("void of check %s failed: %r", v.idempotency_key, r)
                    else:
                        log.error("void of check %s refused: %s", v.idempotency_key, r.message)
                    self._record("failed")
                else:
                    self._record(r)
            if retry:
                # Redis is unavailable again: these go first once it answers, in their order.
                self._pending.extendleft(reversed(retry))
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            else:
                backoff = MIN_BACKOFF_S
