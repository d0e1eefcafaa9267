"""The outbox transaction entry's decoder (sidecar/ledger/outbox.py ``txn``): what it reads, and the
reasons it gives for entries it refuses (they become the dead letters' ``dl_error``)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sidecar.ledger import outbox
from sidecar.ledger.outbox import NewBucket, PoisonEntry

BASE: dict[str, Any] = {
    "kind": "txn",
    "id": "tx_1",
    "account": "acme",
    "seq": 1,
    "type": "usage",
    "amount": -5,
    "balance": 95,
    "debt": 0,
    "ts": 1_800_000_000_000,
    "alloc": [["b1", -5]],
    "buckets": [["b1", 95, 0]],
}


def test_a_usage_decodes_to_its_typed_fields_and_details() -> None:
    e = BASE | {"desc": "chat", "meta": "", "idempotency_key": "r1", "overdraft": 0, "fp": "ab"}
    t = outbox.read_txn({outbox.FIELD: orjson.dumps(e).decode()})
    assert t is not None
    assert (t.id, t.account, t.seq, t.type, t.amount, t.balance, t.ts) == (
        "tx_1",
        "acme",
        1,
        "usage",
        -5,
        95,
        1_800_000_000_000,
    )
    assert t.alloc == [("b1", -5)] and t.buckets == [("b1", 95, 0)] and t.held == []
    assert t.desc == "chat" and t.meta is None and t.idempotency_key == "r1"
    assert t.details == {
        "alloc": [["b1", -5]],
        "buckets": [["b1", 95, 0]],
        "overdraft": 0,
        "fp": "ab",
    }
    assert t.request_fp == "ab" and t.replay_ms is None and t.overdraft == 0


def test_other_kinds_are_not_transactions() -> None:
    assert outbox.read_txn({outbox.FIELD: '{"kind":"account"}'}) is None


def test_a_grant_carries_its_new_bucket() -> None:
    bucket = {"id": "g", "credits": 10, "source": "manual", "fp": "f", "priority": 2}
    t = outbox.txn(BASE | {"type": "grant", "amount": 10, "bucket": bucket})
    assert t.bucket == NewBucket("g", 10, "manual", 2, BASE["ts"], None, "f")


def test_holds_and_closes_carry_their_hold() -> None:
    hold = outbox.txn(BASE | {"type": "hold", "hold_id": "h", "held": [["b1", 5]], "expires": 9})
    assert hold.hold_expires == 9 and hold.held == [("b1", 5)]
    settle = outbox.txn(BASE | {"type": "settle", "hold_id": "h", "state": "settled"})
    assert settle.hold_state == "settled" and settle.hold_expires is None
    assert outbox.txn(BASE | {"type": "release", "hold_id": "h"}).hold_state == "release"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"seq": "1"}, "field seq is missing or not an integer: '1'"),
        ({"seq": 0}, "field seq out of range: 0"),
        ({"account": ""}, "field account is missing, not text or too long"),
        ({"type": "bogus"}, "unknown transaction type 'bogus'"),
        ({"debt": -1}, "field debt out of range: -1"),
        ({"ts": 253_402_300_800_000}, "field ts out of range"),
        ({"alloc": None}, "alloc is not a list"),
        ({"alloc": [["b", 1.5]]}, "alloc has a malformed element"),
        ({"held": [["b"]]}, "held has a malformed element"),
        ({"buckets": [["b", "1", 0]]}, "buckets is malformed"),
        ({"charged": True}, "field charged is missing or not an integer: 'True'"),
        ({"desc": 5}, "field desc is not text"),
        ({"meta": 5}, "field meta is not text"),
        ({"type": "grant", "bucket": "g"}, "bucket is malformed"),
        ({"type": "grant", "bucket": {"id": "g"}}, "field credits is missing"),
        ({"type": "settle", "hold_id": "h", "state": 1}, "field state is not text"),
        ({"type": "hold", "hold_id": "h", "expires": -1}, "field expires out of range: -1"),
    ],
)
def test_malformed_entries_are_refused_naming_the_problem(
    change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(PoisonEntry) as e:
        outbox.txn(BASE | change)
    assert reason in str(e.value)


def test_an_entry_that_is_not_json_is_poison() -> None:
    with pytest.raises(PoisonEntry, match="not JSON"):
        outbox.read_txn({outbox.FIELD: "{"})


def test_a_sql_row_reads_back_as_its_entry() -> None:
    e = BASE | {"desc": "chat", "idempotency_key": "r1", "overdraft": 0}
    t = outbox.txn(e)
    row = {
        "id": "tx_1",
        "account": "acme",
        "seq": 1,
        "type": "usage",
        "amount": -5,
        "balance_after": 95,
        "debt_after": 0,
        "created_ms": BASE["ts"],
        "description": "chat",
        "metadata": None,
        "idempotency_key": "r1",
        "hold_id": None,
        "source_transaction_id": None,
        "key_id": None,
        "route": None,
        "details": t.details,
    }
    assert outbox.TxnEntry.from_sql(row) == t
