"""Every serving process's copy of the sidecar's API tokens (docs/tokens.md), so that checking
a token on a request costs no round trip, and the protocol that makes a change reach them all.

Each process polls the tokens' version (one ``HGET`` every ``poll_s``), reloads the records when
it moved, and reports the version it applied, with a heartbeat stamped on Redis's clock (the
hosts' clocks may disagree: sidecar/lua/token_workers.lua), in the workers hash. A change
(create, rotate, revoke) answers only once every live process has reported its version
(:meth:`TokenCache.applied`), so a revoked token is refused by every worker from the moment the
revoke is answered. A process that stopped reporting is not waited for (and is forgotten after
a while). What a token was last used for is kept in memory and written now and then.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from sidecar.errors import StoreUnavailable
from sidecar.ledger.tokens import (
    TOKEN_PREFIX,
    Caller,
    TokenRecord,
    Tokens,
    token_hash,
    token_id_of,
)
from sidecar.persistence.writer import pause

log = logging.getLogger(__name__)

HEARTBEAT_MS = 1_000
LIVE_MS = 3_000  # a process that has not reported for this long is not waited for
FORGET_MS = 600_000  # nor remembered after this
# A process that has not heard from Redis for this long no longer vouches for stored tokens
# (503): a revoke stops waiting for a process after LIVE_MS without a report, so by then the
# process must have stopped taking the tokens it may no longer know are revoked.
STALE_MS = 2_500
USE_FLUSH_MS = 5_000
NEVER = 2**62
MAX_KNOWN = 10_000
PREFIX = TOKEN_PREFIX.encode()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class TokenCache:
    def __init__(
        self,
        tokens: Tokens,
        clock: Callable[[], int],
        *,
        worker: str | None = None,
        poll_s: float = 0.25,
    ) -> None:
        self.tokens = tokens
        self.clock = clock
        self.worker = worker or worker_name()
        self.poll_s = poll_s
        self.version = -1  # nothing loaded yet
        self.records: dict[str, TokenRecord] = {}
        self._used: dict[str, int] = {}
        self._reported = (-1, -HEARTBEAT_MS)  # version, when (monotonic ms)
        self._flushed = 0
        self._heard = -STALE_MS - 1  # monotonic ms of the last refresh that reached Redis
        # tokens verified against the records held: caller, and until when (a replaced
        # secret's grace); emptied whenever the records are reloaded
        self._known: dict[bytes, tuple[Caller, int]] = {}
        self._lock = asyncio.Lock()

    def verify(self, token: bytes) -> Caller | None:
        """The caller a presented ``cst_`` token stands for, or None (unknown, revoked, a
        replaced secret past its grace). Compared in constant time against its record."""
        if not token.startswith(PREFIX):
            return None
        if self.stale():
            raise StoreUnavailable(
                "the token store could not be reached: stored tokens cannot be confirmed"
            )
        now = self.clock()
        known = self._known.get(token)
        if known is not None and known[1] > now:  # checked against these records already
            self._used[known[0].token_id] = now
            return known[0]
        token_id = token_id_of(token)
        record = self.records.get(token_id) if token_id is not None else None
        if record is None or record.revoked_at is not None:
            return None
        digest = token_hash(token)
        until = NEVER if hmac.compare_digest(digest, record.hash) else 0
        for p in record.previous:
            if hmac.compare_digest(digest, p.hash) and p.expires > now:
                until = max(until, p.expires)
        if until <= now:
            return None
        caller = Caller(record.id, record.name, record.scopes, record.account_prefix)
        if len(self._known) >= MAX_KNOWN:
            self._known.clear()
        self._known[token] = (caller, until)  # valid tokens only: at most a few per record
        self._used[record.id] = now
        return caller

    def stale(self) -> bool:
        """Whether this process last heard from Redis too long ago to vouch for its copy."""
        return int(time.monotonic() * 1000) - self._heard > STALE_MS

    async def refresh(self) -> None:
        """Loads the records if their version moved, and reports what this process applied."""
        async with self._lock:
            if self.version < 0:
                # Known to be serving before the first load: a change made between that load
                # and the first report waits for this process, not only those that reported.
                await self.tokens.report_applied(self.worker, -1)
            version = await self.tokens.version()
            if version != self.version:
                self.version, self.records = await self.tokens.all()
                self._known = {}
            now, beat = self.clock(), int(time.monotonic() * 1000)
            if self._reported[0] != self.version or beat - self._reported[1] >= HEARTBEAT_MS:
                await self.tokens.report_applied(self.worker, self.version)
                self._reported = (self.version, beat)
            self._heard = beat
            if self._used and now - self._flushed >= USE_FLUSH_MS:
                used, self._used = self._used, {}
                await self.tokens.record_use(used)
                self._flushed = now

    async def applied(self, version: int, timeout_s: float = 5.0) -> bool:
        """Waits until every live process serves with ``version`` or later (this one first);
        False if some did not within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while True:
            await self.refresh()
            now, workers = await self.tokens.workers()  # both on Redis's clock
            behind = [w for w, (v, at) in workers.items() if v < version and now - at < LIVE_MS]
            if not behind:
                await self.tokens.forget_workers(
                    [w for w, (_, at) in workers.items() if now - at > FORGET_MS]
                )
                return True
            if loop.time() >= until:
                log.warning("tokens version %d not applied in time by %s", version, behind)
                return False
            await asyncio.sleep(min(self.poll_s, 0.05))

    async def leave(self) -> None:
        """This process stops serving: no change waits for it any more."""
        await self.tokens.forget_workers([self.worker])

    async def run(self, stop: asyncio.Event) -> None:
        """Follows the tokens until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.refresh()
            except StoreUnavailable:
                pass  # Redis is away: the records held stay in force, the next poll retries
            except Exception:
                log.exception("tokens refresh failed")
            await pause(stop, self.poll_s)
