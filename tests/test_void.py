"""Voids (void.lua, sidecar/ledger/voids.py): a check whose every attempt lost its reply is refunded
and forgotten; an attempt that got its 200 keeps the charge; an attempt that never ran, a void
sent twice, or a void of another request changes nothing. Attempts are run here as the ledger
runs them, with their token; a "lost" attempt is one whose reply the test ignores."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import StoreUnavailable
from sidecar.ledger.arguments import (
    wall_clock_ms,
)
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
)
from sidecar.ledger.voids import Void, request_digest, send_void
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.embedded import RedisServer
from tests.conftest import PROPERTY_EXAMPLES, outbox_entries, snapshot

ACCOUNT = "acme"


async def attempt(
    ledger: Ledger,
    key: str,
    token: str,
    *,
    cost: int = 5,
    desc: str = "GET /v1/a",
    deadline: int | None = None,
    txid: str | None = None,
) -> Any:
    """One call attempt of a check, as Ledger.deduct sends it (the reply is the test's to
    ignore: a lost reply)."""
    k = ledger.keys
    txid = txid or f"tx_{token}"
    keys = [
        *k.for_account(ACCOUNT).common(),
        k.idempotency(ACCOUNT, key),
        k.usage(ACCOUNT, txid),
        k.events_for(ACCOUNT),
    ]
    args: list[str | int] = [
        ACCOUNT,
        ledger.clock(),
        txid,
        ledger.retention_ms,
        ledger.script_deadline() if deadline is None else deadline,
    ]
    args += [cost, key, desc, "", "key1", "", "", "", "", "", "", token]
    await ledger.redis.hset(k.for_account(ACCOUNT).account, "k:key1", "")
    return await ledger.scripts.deduct(keys=keys, args=args)


def void_of(key: str, token: str, *, cost: int = 5, desc: str = "GET /v1/a") -> Void:
    return Void(ACCOUNT, key, token, cost, request_digest("key1", "", desc, "", ""), 0)


async def balance(ledger: Ledger) -> int:
    return (await ledger.balance(ACCOUNT)).balance


async def record(ledger: Ledger, key: str) -> dict[str, Any] | None:
    raw = await ledger.redis.get(ledger.keys.idempotency(ACCOUNT, key))
    return None if raw is None else dict(orjson.loads(raw))


@pytest.fixture
async def acme(ledger: Ledger) -> Ledger:
    await ledger.configure_account(ACCOUNT)
    await ledger.grant(ACCOUNT, "g", 100)
    return ledger


async def test_a_check_whose_only_attempt_was_lost_is_refunded_and_forgotten(
    acme: Ledger, redis: RedisClient
) -> None:
    await attempt(acme, "r1", "t1")  # ran and charged; its reply never arrived
    assert await balance(acme) == 95
    assert await send_void(acme, void_of("r1", "t1")) == "voided"
    assert await balance(acme) == 100
    assert await record(acme, "r1") is None
    refund = [e for e in await outbox_entries(redis) if e.get("type") == "refund"]
    assert len(refund) == 1
    assert refund[0]["source_transaction_id"] == "tx_t1" and refund[0]["amount"] == 5
    assert refund[0]["void"] == "t1" and refund[0]["refund_id"] == "void.t1"
    # the usage is fully refunded, as by a refund of it
    with pytest.raises(Exception, match="fully refunded"):
        await acme.refund(ACCOUNT, "rf1", "tx_t1")
    # a retry is a new request, charged once
    r = await attempt(acme, "r1", "t2")
    assert r[0] == b"ok" and r[4] == 0 and await balance(acme) == 95


async def test_a_void_after_a_replay_that_got_its_200_keeps_the_charge(acme: Ledger) -> None:
    await attempt(acme, "r1", "t1")  # lost
    r = await attempt(acme, "r1", "t2")  # the client's retry: a replay, answered 200
    assert r[0] == b"ok" and r[4] == 1
    assert await send_void(acme, void_of("r1", "t1")) == "marked"
    assert await balance(acme) == 95
    r = await attempt(acme, "r1", "t3")  # still a replay of the charge
    assert r[4] == 1 and await balance(acme) == 95


async def test_a_void_before_the_retry_makes_the_retry_a_new_request(acme: Ledger) -> None:
    await attempt(acme, "r1", "t1")  # lost
    assert await send_void(acme, void_of("r1", "t1")) == "voided"
    r = await attempt(acme, "r1", "t2")
    assert r[0] == b"ok" and r[4] == 0 and r[1] == b"tx_t2"
    assert await balance(acme) == 95
    # the first attempt's void, sent again, does not touch the new charge
    assert await send_void(acme, void_of("r1", "t1")) == "not_run"
    assert await balance(acme) == 95


async def test_two_lost_attempts_are_refunded_once_both_are_voided(acme: Ledger) -> None:
    await attempt(acme, "r1", "t1")  # lost
    await attempt(acme, "r1", "t2")  # a replay, lost too
    assert await send_void(acme, void_of("r1", "t2")) == "marked"
    assert await balance(acme) == 95  # t1 may still have delivered its 200
    assert await send_void(acme, void_of("r1", "t1")) == "voided"
    assert await balance(acme) == 100


async def test_an_attempt_that_got_its_200_between_two_lost_ones_keeps_the_charge(
    acme: Ledger,
) -> None:
    await attempt(acme, "r1", "t1")  # lost
    await attempt(acme, "r1", "t2")  # answered 200
    await attempt(acme, "r1", "t3")  # lost
    assert await send_void(acme, void_of("r1", "t1")) == "marked"
    assert await send_void(acme, void_of("r1", "t3")) == "marked"
    assert await balance(acme) == 95
    assert (await record(acme, "r1") or {})["vd"] == ["t1", "t3"]


async def test_a_void_of_an_attempt_that_never_ran_changes_nothing(
    acme: Ledger, redis: RedisClient
) -> None:
    # refused past its deadline: nothing charged, no record
    with pytest.raises(Exception, match="CS LATE"):
        await attempt(acme, "r1", "t1", deadline=wall_clock_ms() - 1)
    before = await snapshot(redis)
    assert await send_void(acme, void_of("r1", "t1")) == "absent"
    # an attempt of a check that another attempt charged (and answered)
    await attempt(acme, "r2", "t2")
    before = await snapshot(redis)
    assert await send_void(acme, void_of("r2", "t9")) == "not_run"
    assert await snapshot(redis) == before
    assert await balance(acme) == 95


async def test_a_void_sent_twice_changes_nothing_the_second_time(
    acme: Ledger, redis: RedisClient
) -> None:
    await attempt(acme, "r1", "t1")  # lost
    await attempt(acme, "r1", "t2")  # lost
    assert await send_void(acme, void_of("r1", "t1")) == "marked"
    before = await snapshot(redis)
    assert await send_void(acme, void_of("r1", "t1")) == "marked"
    assert await snapshot(redis) == before
    assert await send_void(acme, void_of("r1", "t2")) == "voided"
    before = await snapshot(redis)
    assert await send_void(acme, void_of("r1", "t2")) == "absent"
    assert await snapshot(redis) == before
    assert await balance(acme) == 100


async def test_a_void_of_another_request_under_the_same_key_changes_nothing(
    acme: Ledger, redis: RedisClient
) -> None:
    await attempt(acme, "r1", "t1")  # lost
    before = await snapshot(redis)
    assert await send_void(acme, void_of("r1", "t1", desc="GET /v1/b")) == "kept"
    assert await send_void(acme, void_of("r1", "t1", cost=6)) == "kept"
    assert await snapshot(redis) == before
    assert await balance(acme) == 95


async def test_the_void_digest_is_the_one_deduct_stores(acme: Ledger) -> None:
    parts = ("key_1", "route-a", "GET /v1/é?x", '{"a":1}', "q" * 32)
    await acme.redis.hset(acme.keys.for_account(ACCOUNT).account, "k:key_1", "")
    await acme.deduct(
        ACCOUNT,
        1,
        "r1",
        key_id=parts[0],
        route=parts[1],
        description=parts[2],
        metadata={"a": 1},
        request=parts[4],
    )
    assert (await record(acme, "r1") or {})["fp"] == request_digest(*parts)


async def test_a_void_refunds_what_an_earlier_refund_left(acme: Ledger) -> None:
    await attempt(acme, "r1", "t1")  # lost
    await acme.refund(ACCOUNT, "rf1", "tx_t1", 2)  # support saw the charge and refunded part
    assert await balance(acme) == 97
    assert await send_void(acme, void_of("r1", "t1")) == "voided"
    assert await balance(acme) == 100


async def test_a_voided_overdraft_check_repays_its_debt(ledger: Ledger) -> None:
    await ledger.configure_account(ACCOUNT, overdraft_limit=10)
    await ledger.grant(ACCOUNT, "g", 3)
    await attempt(ledger, "r1", "t1")  # lost: 3 from the grant, 2 of debt
    b = await ledger.balance(ACCOUNT)
    assert (b.balance, b.debt) == (-2, 2)
    assert await send_void(ledger, void_of("r1", "t1")) == "voided"
    b = await ledger.balance(ACCOUNT)
    assert (b.balance, b.debt, b.available) == (3, 0, 3)


async def test_a_replay_with_a_token_past_its_deadline_is_refused_and_records_nothing(
    acme: Ledger, redis: RedisClient
) -> None:
    """Its caller gave up on it and may void it; a 200 that arrived in the margin would be a
    charge the void does not know of."""
    await attempt(acme, "r1", "t1")
    before = await snapshot(redis)
    with pytest.raises(Exception, match="CS LATE"):
        await attempt(acme, "r1", "t2", deadline=wall_clock_ms() - 1)
    assert await snapshot(redis) == before
    assert await send_void(acme, void_of("r1", "t2")) == "not_run"


async def test_an_attempt_list_past_its_bound_is_never_voided(acme: Ledger) -> None:
    for i in range(20):  # a record lists 16 attempts; more mark it as not voidable
        await attempt(acme, "r1", f"t{i}")
    rec = await record(acme, "r1") or {}
    assert len(rec["at"]) == 16 and rec["ax"] == 1
    for i in range(16):
        assert await send_void(acme, void_of("r1", f"t{i}")) == "marked"
    assert await balance(acme) == 95


async def test_a_record_without_tokens_is_never_voided(acme: Ledger, redis: RedisClient) -> None:
    """Written without a token (by the previous scripts, or restored by rebuild, which keeps no
    tokens): replays record none, and a void of it keeps the charge."""
    await attempt(acme, "r1", "")
    assert "at" not in (await record(acme, "r1") or {})
    r = await attempt(acme, "r1", "t2")
    assert r[4] == 1 and "at" not in (await record(acme, "r1") or {})
    assert await send_void(acme, void_of("r1", "t2")) == "kept"
    assert await balance(acme) == 95


async def test_deduct_queues_a_void_only_when_its_call_may_have_run(acme: Ledger) -> None:
    late = Ledger(acme.redis, acme.keys, clock=acme.clock, deadline_s=0.5, deadline_margin_ms=0)
    try:
        late._script_deadline_ms = -1_000  # refused past its deadline: Redis answered LATE
        with pytest.raises(StoreUnavailable):
            await late.deduct(ACCOUNT, 5, "r1")
        assert len(late.voids) == 0 and late.voids.outcomes == {}
    finally:
        late.close()
    r = await acme.deduct(ACCOUNT, 5, "r2")
    assert isinstance(r, Allowed) and len(acme.voids) == 0


async def test_a_full_void_queue_drops_the_newest_and_keeps_the_oldest(ledger: Ledger) -> None:
    """The oldest voids are those of the attempts made as Redis stalled, the likeliest to have
    run; later ones (Redis already unavailable) are mostly no-ops."""
    small = Ledger(ledger.redis, ledger.keys, clock=ledger.clock, void_queue_max=2)
    try:
        far = wall_clock_ms() + 3_600_000  # not sent during the test
        for token in ("t1", "t2", "t3"):
            small.voids.put(Void(ACCOUNT, "r1", token, 5, "0" * 16, far))
        assert len(small.voids) == 2
        assert small.voids.outcomes == {"queued": 2, "dropped": 1}
        assert [v.token for v in small.voids._pending] == ["t1", "t2"]
    finally:
        small.close()


async def test_a_replay_without_a_token_makes_its_record_unvoidable(acme: Ledger) -> None:
    await attempt(acme, "r1", "t1")  # lost
    r = await attempt(acme, "r1", "")  # answered 200, but lists no attempt
    assert r[4] == 1 and (await record(acme, "r1") or {})["ax"] == 1
    assert await send_void(acme, void_of("r1", "t1")) == "marked"
    assert await balance(acme) == 95


# Any ordering of a check's attempts (each answered, lost, or run past its deadline) and of
# the voids of the lost ones (each after its attempt, as the sidecar sends them).
Event = tuple[str, int]  # ("answered" | "lost" | "late", attempt) or ("void", attempt)


@st.composite
def orderings(draw: st.DrawFn) -> list[Event]:
    kinds = draw(st.lists(st.sampled_from(["answered", "lost", "late"]), min_size=1, max_size=12))
    events: list[Event] = []
    pending: list[int] = []  # lost or late attempts not voided yet
    for i, kind in enumerate(kinds):
        while pending:  # some voids go out before the next attempt
            send: bool = draw(st.booleans())
            if not send:
                break
            events.append(("void", pending.pop(draw(st.integers(0, len(pending) - 1)))))
        events.append((kind, i))
        if kind != "answered":
            pending.append(i)
    while pending:
        events.append(("void", pending.pop(draw(st.integers(0, len(pending) - 1)))))
    return events


@settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(orderings())
def test_any_ordering_of_attempts_and_voids_charges_exactly_the_answered_charges(
    redis_server: RedisServer, events: list[Event]
) -> None:
    """Once every lost attempt is voided: a charge (usage) stays iff an answered attempt was
    answered with it, and is refunded in full otherwise; the balance agrees."""

    async def run() -> None:
        client = connect(redis_server.url)
        ledger = Ledger(client, KeySpace(), retention_ms=3_600_000)
        try:
            await client.flushall()
            await ledger.configure_account(ACCOUNT)
            await ledger.grant(ACCOUNT, "g", 100)
            answered_with: set[str] = set()
            for kind, i in events:
                if kind == "void":
                    await send_void(ledger, void_of("r1", f"t{i}"))
                    continue
                late = wall_clock_ms() - 1 if kind == "late" else None
                try:
                    r = await attempt(ledger, "r1", f"t{i}", deadline=late, txid=f"tx_{i}")
                except Exception as e:  # only a late attempt fails, and changes nothing
                    assert kind == "late" and "CS LATE" in str(e)
                    continue
                if kind == "answered":
                    answered_with.add(r[1].decode())
            usages = [e for e in await outbox_entries(client) if e.get("type") == "usage"]
            voided = {
                e["source_transaction_id"]
                for e in await outbox_entries(client)
                if e.get("type") == "refund" and e.get("void")
            }
            for u in usages:
                assert (u["id"] in voided) == (u["id"] not in answered_with), (u["id"], events)
            assert await balance(ledger) == 100 - 5 * len(answered_with)
        finally:
            ledger.close()
            await client.aclose()

    asyncio.run(run())
