"""Settling a hold whose settle failed for want of the sidecar. The streamed work is done and was
counted, so its charge is sent again in the background, with the same hold id (a settle is
idempotent by hold id: charged once however many attempts reach the sidecar), until the hold's
TTL would have released it. Past that the sidecar answers ``hold_expired`` and the charge is
lost: logged as an error, never taken twice, never taken from credits the customer got back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime

from credit_sidecar import errors
from credit_sidecar.async_client import AsyncClient
from credit_sidecar.models import Hold
from credit_sidecar.sync_client import Client

log = logging.getLogger("credit_sidecar")

# Pauses between attempts, in seconds; the last one repeats.
BACKOFF_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# How long to keep trying when the hold's expiry is unknown.
UNKNOWN_TTL_S = 3600.0

_tasks: set[asyncio.Task[bool]] = set()  # referenced until done (the loop keeps weak refs)


def pending() -> set[asyncio.Task[bool]]:
    """The settles still being retried on this process's loops."""
    return set(_tasks)


def _until(hold: Hold) -> float:
    """When the hold lapses (epoch seconds)."""
    if hold.expires_at:
        try:
            return datetime.fromisoformat(hold.expires_at).timestamp()
        except ValueError:
            pass
    return time.time() + UNKNOWN_TTL_S


def _pauses(until: float) -> list[float]:
    """The pauses before each attempt, the last one at the hold's expiry at most."""
    out: list[float] = []
    at = time.time()
    i = 0
    while True:
        pause = BACKOFF_S[min(i, len(BACKOFF_S) - 1)]
        if at + pause >= until:
            out.append(max(0.0, until - at))
            return out
        out.append(pause)
        at += pause
        i += 1


def _gave_up(hold: Hold, amount: int, e: errors.CreditSidecarError) -> bool:
    log.error(
        "credit-sidecar: hold %s of %s not settled for %s credits, its charge is lost: %s",
        hold.hold_id,
        hold.account,
        amount,
        e,
    )
    return False


def _landed(hold: Hold, amount: int) -> bool:
    log.warning("credit-sidecar: hold %s settled late for %s credits", hold.hold_id, amount)
    return True


async def _settle_until_lapsed(client: AsyncClient, hold: Hold, amount: int) -> bool:
    last: errors.CreditSidecarError | None = None
    for pause in _pauses(_until(hold)):
        await asyncio.sleep(pause)
        try:
            await client.settle(hold.hold_id, amount, account=hold.account)
        except errors.SidecarUnavailable as e:
            last = e
            continue
        except errors.CreditSidecarError as e:  # hold_expired, or closed otherwise
            return _gave_up(hold, amount, e)
        return _landed(hold, amount)
    assert last is not None
    return _gave_up(hold, amount, last)


def settle_later(client: AsyncClient, hold: Hold, amount: int) -> asyncio.Task[bool]:
    """Keeps settling ``hold`` for ``amount`` in the background until it lands (True) or the
    hold has lapsed (False, logged as an error)."""
    task = asyncio.get_running_loop().create_task(_settle_until_lapsed(client, hold, amount))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def settle_later_sync(client: Client, hold: Hold, amount: int) -> threading.Thread:
    """As :func:`settle_later`, for the sync client: in a daemon thread."""

    def run() -> None:
        last: errors.CreditSidecarError | None = None
        for pause in _pauses(_until(hold)):
            time.sleep(pause)
            try:
                client.settle(hold.hold_id, amount, account=hold.account)
            except errors.SidecarUnavailable as e:
                last = e
                continue
            except errors.CreditSidecarError as e:
                _gave_up(hold, amount, e)
                return
            _landed(hold, amount)
            return
        assert last is not None
        _gave_up(hold, amount, last)

    thread = threading.Thread(target=run, name=f"settle-{hold.hold_id}", daemon=True)
    thread.start()
    return thread
