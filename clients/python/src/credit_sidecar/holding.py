"""A hold around a block of work, shared by both clients: :class:`Holding` (what the block
sets to charge), releasing quietly after the block failed, and settling or releasing shielded
from cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from credit_sidecar import errors
from credit_sidecar._base import log
from credit_sidecar.models import Hold, HoldClosed

T = TypeVar("T")


class Holding:
    """A hold in a ``holding`` block: ``settle(actual)`` (or ``add(n)``) sets what to charge at
    the end of the block; nothing set, or an exception, releases the hold. Under ``fail_open``
    with the sidecar unreachable ``hold`` is None and nothing is charged."""

    def __init__(self, account: str, hold: Hold | None) -> None:
        self.account = account
        self.hold = hold
        self.amount: int | None = None
        self.result: HoldClosed | None = None

    @property
    def hold_id(self) -> str | None:
        return self.hold.hold_id if self.hold else None

    def settle(self, amount: int) -> None:
        self.amount = amount

    def add(self, amount: int) -> None:
        self.amount = (self.amount or 0) + amount


def quietly(release: Callable[[], HoldClosed]) -> None:
    """Releasing after the block failed: the block's own error is the one to raise."""
    try:
        release()
    except errors.CreditSidecarError as e:
        log.warning("credit-sidecar: releasing a hold failed (it lapses at its ttl): %s", e.message)


async def aquietly(release: Awaitable[HoldClosed]) -> None:
    try:
        await release
    except errors.CreditSidecarError as e:
        log.warning("credit-sidecar: releasing a hold failed (it lapses at its ttl): %s", e.message)


async def shielded(aw: Awaitable[T]) -> T:
    """``aw`` run to its end even if the caller is cancelled meanwhile (the cancellation goes
    on after it): a hold's settle or release must not be lost with the request."""
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
