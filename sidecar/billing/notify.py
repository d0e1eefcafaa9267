"""Notifications to an account's endpoint, signed JSON webhooks retried with exponential
backoff: ``balance.low`` each time a debit takes its balance below its low-balance threshold,
and ``auto_topup.action_required`` when an auto top-up charge needs the customer.

Signature, in Stripe's scheme so customers can reuse their verification code:
``Credit-Sidecar-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
Deliveries are stored in SQL first (id = the event's id, so a re-read event is not sent
twice), then sent; an endpoint that keeps failing gets ``notify_max_attempts`` tries.

Sending is concurrent and isolated (:class:`Deliverer`): at most ``notify_concurrency``
webhooks in flight, at most ``notify_per_endpoint`` of them to one endpoint (URL) and
``notify_per_host`` to one host, so an endpoint (or a whole host) that never answers holds a
few slots for its timeout and nobody else's webhook waits for it. Where webhooks may go at
all is sidecar/billing/netguard.py's job; redirects are not followed, and a failure is
recorded as a category, never the network's own words.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from sidecar.billing import netguard
from sidecar.billing.context import Billing
from sidecar.ledger import units

log = logging.getLogger(__name__)

HEADER = "Credit-Sidecar-Signature"
# A claimed delivery is another worker's to take over after its attempt's timeout plus this.
LEASE_MARGIN_MS = 20_000


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def backoff_ms(attempt: int) -> int:
    """1 s, 2 s, 4 s ... capped at an hour."""
    return int(min(1000 * 2 ** max(attempt - 1, 0), 3_600_000))


async def low_balance(b: Billing, fields: dict[str, str], event_id: str) -> str:
    """Queues the webhook for a low_balance event of the events stream."""
    txid = fields.get("transaction_id", event_id)
    return await enqueue(
        b,
        fields.get("account", ""),
        {
            "id": f"low_balance:{txid}",
            "type": "balance.low",
            "account": fields.get("account", ""),
            "balance": int(fields.get("balance", "0")),
            "threshold": int(fields.get("threshold", "0")),
            "transaction_id": txid,
            "created_at": units.iso(int(fields.get("ts", "0"))),
            "created": int(fields.get("ts", "0")),  # deprecated: unix ms; use created_at
        },
    )


async def enqueue(b: Billing, account: str, payload: dict[str, object]) -> str:
    """Queues a notification (``payload["id"]`` is its delivery id: queued once) to the
    account's endpoint."""
    endpoint = await b.notifications.endpoint(account)
    if endpoint is None or not endpoint["enabled"]:
        return "no endpoint"
    url = endpoint["url"]
    queued = await b.notifications.enqueue(
        str(payload["id"]), account, url, netguard.webhook_host(url), payload, b.clock()
    )
    return "queued" if queued else "already queued"


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    secret: str,
    *,
    timeout_s: float,
    allow_private: bool,
) -> str | None:
    """One attempt: None if the endpoint took it (2xx), else what went wrong: ``HTTP <status>``
    (a redirect too: not followed) or a category (netguard.error_category)."""
    if netguard.url_refusal(url, allow_private=allow_private) is not None:
        return "refused_address"
    headers = {"Content-Type": "application/json", HEADER: sign(body, secret)}
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as r:
            return None if 200 <= r.status < 300 else f"HTTP {r.status}"
    except asyncio.CancelledError:
        raise
    except Exception as e:  # whatever it was, the record says only its kind
        return netguard.error_category(e)


class Deliverer:
    """Starts due deliveries as concurrent tasks within the in-flight limits.

    A due delivery is claimed only when a slot for it is free (overall, for its endpoint and
    for its host), so a delivery never waits inside a slot, and one whose endpoint or host is
    full stays due for the next pass; the SQL query leaves those endpoints and hosts out, so
    their backlog cannot fill the page of due deliveries either. ``on_done`` is called when a
    delivery ends (a slot is free: look again)."""

    def __init__(
        self,
        b: Billing,
        session: aiohttp.ClientSession,
        *,
        on_done: Callable[[], None] = lambda: None,
    ) -> None:
        self.b = b
        self.session = session
        self.on_done = on_done
        self.limit = b.settings.notify_concurrency
        self.per_endpoint = b.settings.notify_per_endpoint
        self.per_host = b.settings.notify_per_host
        self._tasks: set[asyncio.Task[None]] = set()
        self._endpoints: collections.Counter[str] = collections.Counter()
        self._hosts: collections.Counter[str] = collections.Counter()
        self._ids: set[str] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start_due(self) -> int:
        """Claims and starts what is due and fits; returns how many were started."""
        free = self.limit - len(self._tasks)
        if free <= 0:
            return 0
        b = self.b
        rows = await b.notifications.due(
            b.clock(),
            limit=free,
            exclude_urls=[u for u, n in self._endpoints.items() if n >= self.per_endpoint],
            exclude_hosts=[h for h, n in self._hosts.items() if n >= self.per_host],
        )
        lease_ms = int(b.settings.notify_timeout_s * 1000) + LEASE_MARGIN_MS
        started = 0
        for d in rows:
            if len(self._tasks) >= self.limit:
                break
            if (
                d["id"] in self._ids
                or self._endpoints[d["url"]] >= self.per_endpoint
                or self._hosts[d["host"]] >= self.per_host
            ):
                continue  # filled up within this page: next pass
            if not await b.notifications.claim(d["id"], d["attempts"], b.clock(), lease_ms):
                continue  # another worker has it
            self._endpoints[d["url"]] += 1
            self._hosts[d["host"]] += 1
            self._ids.add(d["id"])
            task = asyncio.create_task(self._deliver(d, d["attempts"] + 1))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, d=d))
            started += 1
        return started

    def _done(self, task: asyncio.Task[None], d: dict[str, Any]) -> None:
        self._tasks.discard(task)
        self._ids.discard(d["id"])
        for counter, key in ((self._endpoints, d["url"]), (self._hosts, d["host"])):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        if not task.cancelled() and task.exception() is not None:
            # The store failed to record the outcome: the lease runs out, it is tried again.
            log.warning("low-balance webhook %s: %s", d["id"], task.exception())
        self.on_done()

    async def _deliver(self, d: dict[str, Any], attempt: int) -> None:
        b, settings = self.b, self.b.settings
        endpoint = await b.notifications.endpoint(d["account"])
        if endpoint is None:
            error: str | None = "endpoint removed"
            status = "dead"
        else:
            error = await send(
                self.session,
                d["url"],
                orjson.dumps(d["payload"]),
                endpoint["secret"],
                timeout_s=settings.notify_timeout_s,
                allow_private=settings.notify_allow_private,
            )
            if error is None:
                status = "delivered"
            elif attempt >= settings.notify_max_attempts:
                status = "dead"
            else:
                status = "pending"
        now = b.clock()
        await b.notifications.finish(
            d["id"],
            status,
            attempt=attempt,
            error=error,
            next_attempt_ms=now + backoff_ms(attempt) if status == "pending" else 0,
            now_ms=now,
        )

    async def close(self) -> None:
        """Stops the deliveries in flight (their leases run out: they are tried again)."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
