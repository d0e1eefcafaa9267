"""Notifications to an account's endpoint, signed JSON webhooks retried with exponential
backoff: ``balance.low`` each time a debit takes its balance below its low-balance threshold,
and ``auto_topup.action_required`` when an auto top-up charge needs the customer.

Signature, in Stripe's scheme so customers can reuse their verification code:
``Credit-Sidecar-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
Deliveries are stored in SQL first (id = the event's id, so a re-read event is not sent
twice), then sent; an endpoint that keeps failing gets ``notify_max_attempts`` tries.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import aiohttp
import orjson

from sidecar.billing.context import Billing

HEADER = "Credit-Sidecar-Signature"
LEASE_MS = 30_000


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
    account = fields.get("account", "")
    endpoint = await b.store.endpoint(account)
    if endpoint is None or not endpoint["enabled"]:
        return "no endpoint"
    txid = fields.get("transaction_id", event_id)
    delivery_id = f"low_balance:{txid}"
    payload: dict[str, object] = {
        "id": delivery_id,
        "type": "balance.low",
        "account": account,
        "balance": int(fields.get("balance", "0")),
        "threshold": int(fields.get("threshold", "0")),
        "transaction_id": txid,
        "created": int(fields.get("ts", "0")),
    }
    queued = await b.store.enqueue_delivery(
        delivery_id, account, endpoint["url"], payload, b.clock()
    )
    return "queued" if queued else "already queued"


async def enqueue(b: Billing, account: str, payload: dict[str, object]) -> str:
    """Queues a notification (``payload["id"]`` is its delivery id: queued once) to the
    account's endpoint."""
    endpoint = await b.store.endpoint(account)
    if endpoint is None or not endpoint["enabled"]:
        return "no endpoint"
    delivery_id = str(payload["id"])
    queued = await b.store.enqueue_delivery(
        delivery_id, account, endpoint["url"], payload, b.clock()
    )
    return "queued" if queued else "already queued"


async def deliver_due(b: Billing, session: aiohttp.ClientSession) -> int:
    """One pass over the deliveries that are due; returns how many were attempted."""
    now = b.clock()
    done = 0
    for d in await b.store.due_deliveries(now):
        if not await b.store.claim_delivery(d["id"], d["attempts"], now, LEASE_MS):
            continue  # another worker has it
        done += 1
        attempt = d["attempts"] + 1
        endpoint = await b.store.endpoint(d["account"])
        if endpoint is None:
            await b.store.finish_delivery(
                d["id"], "dead", error="endpoint removed", next_attempt_ms=0, now_ms=now
            )
            continue
        body = orjson.dumps(d["payload"])
        headers = {"Content-Type": "application/json", HEADER: sign(body, endpoint["secret"])}
        error: str | None = None
        try:
            async with session.post(
                d["url"], data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as r:
                if not 200 <= r.status < 300:
                    error = f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            error = f"{type(e).__name__}: {e}"[:500]
        if error is None:
            await b.store.finish_delivery(
                d["id"], "delivered", error=None, next_attempt_ms=0, now_ms=now
            )
        elif attempt >= b.settings.notify_max_attempts:
            await b.store.finish_delivery(
                d["id"], "dead", error=error, next_attempt_ms=0, now_ms=now
            )
        else:
            await b.store.finish_delivery(
                d["id"],
                "pending",
                error=error,
                next_attempt_ms=now + backoff_ms(attempt),
                now_ms=now,
            )
    return done
