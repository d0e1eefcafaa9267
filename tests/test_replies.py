"""The script reply decoders (sidecar/ledger/replies.py), on replies as either client hands
them over.

The ledger tests run every decoder against the real scripts; these pin the layouts and the
statuses that become errors, without Redis.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from sidecar.errors import BalanceOverflow, HoldExpired
from sidecar.ledger import replies
from sidecar.ledger.results import (
    ALLOWED_FIELDS,
    Allowed,
    Balance,
    Bucket,
    CloseResult,
    GrantResult,
    HoldResult,
    Insufficient,
    PlanState,
    RateLimit,
    RateLimited,
    RefundResult,
    RestoreCounts,
    Revoked,
    RevokeResult,
    VoidResult,
    new_allowed,
)


def as_bytes(reply: Any) -> Any:
    """The reply as hiredis hands it over when replies are not decoded."""
    if isinstance(reply, list):
        return [as_bytes(x) for x in reply]
    return reply.encode() if isinstance(reply, str) else reply


both = pytest.mark.parametrize("wire", [lambda r: r, as_bytes], ids=["str", "bytes"])


@both
def test_deduct_decodes_every_status(wire: Any) -> None:
    assert replies.deduct(wire(["ok", "tx_1", 90, 10, 0, 1]), 10) == Allowed(
        "tx_1", 90, 10, False, True
    )
    assert replies.deduct(wire(["ok", "tx_1", 90, 10, 1, 0]), 10) == Allowed(
        "tx_1", 90, 10, True, False
    )
    assert replies.deduct(wire(["insufficient", 5, 10]), 10) == Insufficient(5, 10)
    assert replies.deduct(wire(["rate_limited", 250]), 10) == RateLimited(250)
    assert replies.deduct(wire(["revoked"]), 10) == Revoked()


@both
def test_the_transaction_id_is_text(wire: Any) -> None:
    r = replies.deduct(wire(["ok", "tx_1", 90, 10, 0, 0]), 10)
    assert isinstance(r, Allowed)
    assert type(r.transaction_id) is str


@both
def test_grant_and_refund_overflow_is_balance_overflow(wire: Any) -> None:
    assert replies.grant(wire(["ok", "tx_1", 100, 1])) == GrantResult("tx_1", 100, True)
    assert replies.refund(wire(["ok", "tx_2", 100, 7, 3, 0])) == RefundResult(
        "tx_2", 100, 7, 3, False
    )
    for decode in (replies.grant, replies.refund):
        with pytest.raises(BalanceOverflow):
            decode(wire(["overflow"]))


@both
def test_hold_and_close_carry_the_callers_hold_id(wire: Any) -> None:
    assert replies.hold(wire(["ok", "tx_1", 50, 9000, 0, "active"]), "h1", 10) == HoldResult(
        "h1", "tx_1", 50, 9000, "active", False
    )
    assert replies.hold(wire(["insufficient", 5, 10]), "h1", 10) == Insufficient(5, 10)
    assert replies.close_hold(
        wire(["ok", "tx_2", 60, 40, 1, 2, "settled", 0]), "h1"
    ) == CloseResult("h1", "tx_2", 60, 40, 2, "settled", True)
    # a settle above the hold that neither the balance nor the overdraft covered in full
    assert replies.close_hold(
        wire(["ok", "tx_2", -5, 55, 0, 0, "settled", 7]), "h1"
    ) == CloseResult("h1", "tx_2", -5, 55, 0, "settled", False, uncovered=7)


@both
def test_closing_a_lapsed_hold_names_its_release(wire: Any) -> None:
    with pytest.raises(HoldExpired, match="hold h1 expired and was released by transaction tx_9"):
        replies.close_hold(wire(["hold_expired", "tx_9", 60]), "h1")


@both
def test_revoke_reads_nothing_changed_as_no_transaction(wire: Any) -> None:
    assert replies.revoke(wire(["", 0, 0, 0, 70, 0, 0, 30, 2])) == RevokeResult(
        None, 0, 0, 0, 70, target=30, version=2
    )
    assert replies.revoke(wire(["tx_3", 10, 5, 1, 60, 4, 0, 20, 3])) == RevokeResult(
        "tx_3", 10, 5, 1, 60, pending=4, given_back=0, target=20, version=3
    )


@both
def test_balance_decodes_buckets_and_optional_settings(wire: Any) -> None:
    meta = {"credits": 100, "created": 5, "priority": 1, "source": "grant", "metadata": ""}
    meta2 = meta | {"expires": 99, "metadata": orjson.dumps({"a": 1}).decode()}
    reply = [
        60,
        70,
        5,
        10,
        20,
        "",
        [],
        3,
        [["b1", 40, 5, orjson.dumps(meta).decode()], ["b2", 30, 0, orjson.dumps(meta2).decode()]],
        [],
        [],
    ]
    assert replies.balance(wire(reply), "acme") == Balance(
        account="acme",
        balance=60,
        available=70,
        held=5,
        debt=10,
        overdraft_limit=20,
        low_balance_threshold=None,
        rate_limit=None,
        created_at=3,
        buckets=[
            Bucket("b1", 100, 40, 5, 5, None, 1, "grant", {}),
            Bucket("b2", 100, 30, 0, 5, 99, 1, "grant", {"a": 1}),
        ],
    )
    reply[5], reply[6], reply[8], reply[10] = "0", [10, 1000, 2], [], ["pro", "7", "99"]
    b = replies.balance(wire(reply), "acme")
    assert b.low_balance_threshold == 0
    assert b.rate_limit == RateLimit(10, 1000, 2)
    assert b.plan == PlanState("pro", 7, 99)


@both
def test_the_small_replies(wire: Any) -> None:
    assert replies.account(wire([1])) is True
    assert replies.account(wire([0])) is False
    assert replies.autotopup(wire([42])) == 42
    assert replies.expire(3) == 3
    assert replies.apikey(wire('{"key_id":"k"}')) == '{"key_id":"k"}'
    assert replies.restore(wire([1, 2, 3, 4, 5])) == RestoreCounts(1, 2, 3, 4, 5)
    assert replies.lease(1) is True
    assert replies.lease(0) is False


@both
def test_a_void_reads_its_refund_only_when_it_voided(wire: Any) -> None:
    assert replies.void(wire(["voided", "tx_9", 100, 5, 0])) == VoidResult("voided", "tx_9", 5)
    assert replies.void(wire(["voided", "", 100, 0, 0])) == VoidResult("voided", "", 0)
    assert replies.void(wire(["marked", 1])) == VoidResult("marked")
    for status in ("absent", "changed", "mismatch", "untracked", "not_run", "overflow"):
        assert replies.void(wire([status])) == VoidResult(status)


def test_the_fast_allowed_is_an_ordinary_allowed() -> None:
    assert [f.name for f in dataclasses.fields(Allowed)] == list(ALLOWED_FIELDS)
    a = new_allowed("tx_1", 90, 10, True, False)
    assert a == Allowed("tx_1", 90, 10, True, False)
    assert hash(a) == hash(Allowed("tx_1", 90, 10, True, False))
    assert a.allowed is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.balance = 0  # type: ignore[misc]
