"""How the ledger's calls turn Python values into script arguments: transaction ids, canonical
metadata, the wall clock, and the marker of a setting left as it is (:data:`KEEP`)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from typing import Any

import orjson


class Keep:
    """The value of a setting :meth:`Ledger.update_account` leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = Keep()
KEEP_ARG = "-"  # account.lua's "keep" argument


class DefaultPlan:
    """The plan :meth:`Ledger.configure_account` gives when none is named: the default plan
    for a new account (docs/plans.md), none for one that exists."""

    def __repr__(self) -> str:
        return "DEFAULT_PLAN"


DEFAULT_PLAN = DefaultPlan()
DEFAULT_PLAN_ARG = "*"  # account.lua's "the default plan" argument


def setting_arg(v: int | str | Keep | None) -> str | int:
    """A setting as account.lua takes it: '-' keeps it, '' is none."""
    if isinstance(v, Keep):
        return KEEP_ARG
    return "" if v is None else v


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# Transaction ids need to be unique, not secret: 128 random bits from a generator seeded from
# the OS once per process, without uuid4's system call per id (a hot-path cost).
_ids = random.Random(int.from_bytes(os.urandom(32), "big"))
# A forked child must not repeat its parent's ids.
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_transaction_id() -> str:
    return f"tx_{_ids.getrandbits(128):032x}"


def encode_metadata(metadata: Mapping[str, Any] | None) -> str:
    """Canonical JSON (sorted keys) so the same metadata always gives the same fingerprint."""
    if not metadata:
        return ""
    return orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode()
