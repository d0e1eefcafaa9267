"""The outbox writer on SQLite and PostgreSQL: every transaction reaches SQL once, the SQL
ledger equals Redis, redelivery is a no-op, poison entries are dead-lettered, trimming never
drops an unwritten entry, and an admin's SQL correction survives replays."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.outbox import FIELD
from sidecar.ledger.results import (
    RateLimit,
)
from sidecar.persistence.db import create_engine
from sidecar.persistence.outbox_status import outbox_status
from sidecar.persistence.reconcile import reconcile
from sidecar.persistence.writer import GROUP, OutboxWriter
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock
from tests.persistence.conftest import correct_bucket, rows


def make_writer(ledger: Ledger, engine: AsyncEngine, **kw: Any) -> OutboxWriter:
    return OutboxWriter(ledger.redis, engine, ledger.keys, **kw)


async def drain(writer: OutboxWriter) -> int:
    """Runs the writer until the outbox has nothing left for it; returns entries handled."""
    await writer.ensure_group(0)
    total = 0
    while n := await writer.step(0):
        total += n
    return total


async def busy_ledger(ledger: Ledger, clock: FakeClock) -> None:
    """Every kind of transaction on two accounts: grants (one expiring), usage, overdraft,
    a hold settled and one released, a refund, an expiry, settings changes and keys."""
    await ledger.configure_account("acme", overdraft_limit=5)
    await ledger.configure_account("beta", rate_limit=RateLimit(100, 1000, 100))
    await ledger.grant("acme", "paid", 100, source="purchase", metadata={"order": 7})
    await ledger.grant("acme", "promo", 20, priority=-1, expires_at=clock.now + 60_000)
    await ledger.grant("acme", "late", 7, priority=5, expires_at=clock.now + 60_000)
    await ledger.grant("beta", "g", 10)
    used = await ledger.deduct("acme", 30, "r1", description="chat")
    await ledger.deduct("beta", 3, "r1")
    await ledger.hold("acme", "h1", 40, 600_000)
    await ledger.settle("acme", "h1", 25)
    await ledger.hold("acme", "h2", 5, 600_000)
    await ledger.release("acme", "h2")
    assert used.allowed
    await ledger.refund("acme", "rf1", used.transaction_id, 10)
    clock.advance(61_000)
    await ledger.deduct("acme", 60, "r2")  # expires the promo bucket first
    await ledger.configure_account("acme", overdraft_limit=0, low_balance_threshold=3)
    keys = ApiKeys(ledger)
    info, _ = await keys.create("acme", name="ci")
    await keys.revoke(info.key_id)


async def test_every_transaction_reaches_sql_once_and_sql_equals_redis(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    await busy_ledger(ledger, clock)
    writer = make_writer(ledger, engine)
    await drain(writer)
    status = await outbox_status(ledger.redis, ledger.keys, clock.now)
    assert status[0]["unwritten"] == 0 and status[0]["dead_letters"] == 0
    assert await reconcile(ledger.redis, ledger.keys, engine) == []

    txns = await rows(engine, "SELECT type, count(*) FROM credit_transactions GROUP BY type")
    assert dict(txns) == {
        "purchase": 1,
        "grant": 3,
        "usage": 3,
        "hold": 2,
        "settle": 1,
        "release": 1,
        "refund": 1,
        "expiry": 1,
    }
    (acme,) = await rows(
        engine,
        "SELECT overdraft_limit, low_balance_threshold, balance, created_at FROM accounts "
        "WHERE id = 'acme'",
    )
    assert acme[0] == 0 and acme[1] == 3 and acme[2] == (await ledger.balance("acme")).balance
    assert acme[3] is not None
    (beta,) = await rows(engine, "SELECT rate_limit_requests FROM accounts WHERE id = 'beta'")
    assert beta[0] == 100
    promo = await rows(
        engine,
        "SELECT credits, remaining, expired, expires_at FROM credit_balances "
        "WHERE bucket_id = 'late'",
    )
    assert promo[0][:3] == (7, 0, True) and promo[0][3] is not None
    holds = await rows(engine, "SELECT hold_id, state, charged FROM credit_holds ORDER BY hold_id")
    assert [tuple(h) for h in holds] == [("h1", "settled", 25), ("h2", "released", 0)]
    (key,) = await rows(engine, "SELECT account, revoked_at, length(hash) FROM api_keys")
    assert key[0] == "acme" and key[1] is not None and key[2] == 64
    allocs = await rows(
        engine,
        "SELECT a.bucket_id, a.remaining_delta FROM credit_allocations a "
        "JOIN credit_transactions t ON t.id = a.transaction_id WHERE t.idempotency_key = 'r1' "
        "AND t.account = 'acme' ORDER BY a.bucket_id",
    )
    assert sorted(tuple(a) for a in allocs) == [("paid", -10), ("promo", -20)]


async def test_redelivery_after_a_crash_between_commit_and_ack_is_a_noop(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await busy_ledger(ledger, clock)
    crashing = make_writer(ledger, engine)

    async def crash(*_: Any) -> None:
        raise ConnectionError("killed after the SQL commit, before XACK")

    await crashing.ensure_group(0)
    with monkeypatch.context() as m:
        m.setattr(ledger.redis, "xack", crash)
        with pytest.raises(ConnectionError):
            await crashing.step(0)
    before = await rows(engine, "SELECT count(*) FROM credit_transactions")
    assert before[0][0] > 0

    pending = await ledger.redis.xpending(ledger.keys.outbox(0), GROUP)
    assert pending["pending"] > 0
    await drain(make_writer(ledger, engine))  # a new process: re-reads its pending entries
    after = await rows(engine, "SELECT count(*), count(DISTINCT id) FROM credit_transactions")
    assert after[0][0] == after[0][1] == before[0][0]
    assert (await ledger.redis.xpending(ledger.keys.outbox(0), GROUP))["pending"] == 0
    assert await reconcile(ledger.redis, ledger.keys, engine) == []


async def test_replaying_the_whole_outbox_changes_nothing(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    await busy_ledger(ledger, clock)
    await drain(make_writer(ledger, engine))
    dump = await rows(engine, "SELECT * FROM credit_balances ORDER BY account, bucket_id")
    await ledger.redis.xgroup_setid(ledger.keys.outbox(0), GROUP, "0")
    assert await drain(make_writer(ledger, engine)) > 0
    assert await rows(engine, "SELECT * FROM credit_balances ORDER BY account, bucket_id") == dump
    assert await reconcile(ledger.redis, ledger.keys, engine) == []


async def test_an_admin_correction_in_sql_survives_an_older_entry_replayed(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    """The correction is stamped with the account's current seq (README: correcting a
    balance); entries up to that seq, replayed later, must not overwrite it."""
    await ledger.configure_account("acme")
    await ledger.grant("acme", "paid", 100)
    await ledger.deduct("acme", 30, "r1")
    await drain(make_writer(ledger, engine))
    await correct_bucket(engine, "acme", "paid", 90)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM credit_allocations"))
        await conn.execute(text("DELETE FROM credit_transactions"))  # even if rows are gone
    await ledger.redis.xgroup_setid(ledger.keys.outbox(0), GROUP, "0")
    await drain(make_writer(ledger, engine))
    (paid,) = await rows(engine, "SELECT remaining FROM credit_balances WHERE bucket_id='paid'")
    assert paid[0] == 90
    # A newer transaction moves the row forward again (after `rebuild`, Redis would agree).
    await ledger.deduct("acme", 5, "r2")
    await drain(make_writer(ledger, engine))
    (paid,) = await rows(engine, "SELECT remaining FROM credit_balances WHERE bucket_id='paid'")
    assert paid[0] == 65


async def test_poison_entries_go_to_the_dead_letter_stream_after_n_tries(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    await ledger.configure_account("acme")
    await ledger.grant("acme", "paid", 10)
    outbox = ledger.keys.outbox(0)
    bad = {"kind": "txn", "id": "bad", "account": "acme", "seq": "x"}
    await ledger.redis.xadd(outbox, {FIELD: orjson.dumps(bad)})
    await ledger.redis.xadd(outbox, {FIELD: b'{"kind": "mystery"}'})
    await ledger.redis.xadd(outbox, {"kind": "txn"})  # no d field at all
    await ledger.deduct("acme", 1, "r1")
    writer = make_writer(ledger, engine, max_attempts=3)
    await drain(writer)
    dead: Any = await ledger.redis.xrange(ledger.keys.dead_letters(0))
    assert len(dead) == 3
    assert b"not an integer" in dead[0][1][b"dl_error"]
    assert b"unknown entry kind" in dead[1][1][b"dl_error"]
    assert b"no field" in dead[2][1][b"dl_error"]
    assert dead[0][1][b"dl_attempts"] == b"3"
    assert (await ledger.redis.xpending(outbox, GROUP))["pending"] == 0
    # the ledger itself agrees; what reconcile reports is the three dead letters
    diffs = await reconcile(ledger.redis, ledger.keys, engine)
    assert [d.what.split(" (")[0] for d in diffs] == ["dead letter"] * 3
    status = await outbox_status(ledger.redis, ledger.keys, ledger.clock())
    assert status[0]["dead_letters"] == 3 and status[0]["unwritten"] == 0


async def test_trimming_keeps_every_unwritten_entry(
    ledger: Ledger, engine: AsyncEngine, redis: RedisClient
) -> None:
    await ledger.configure_account("acme")
    await ledger.grant("acme", "paid", 10_000)
    writer = make_writer(ledger, engine, batch_size=50)
    await drain(writer)
    assert await writer.trim(0, force=True) == 2  # written: may go
    for i in range(300):
        await ledger.deduct("acme", 1, f"r{i}")
    await writer.step(0)  # 50 written, the rest not even read
    await writer._read(ledger.keys.outbox(0), ">", block=False)  # 50 read, then it "crashed"
    assert await writer.trim(0, force=True) == 50
    assert await redis.xlen(ledger.keys.outbox(0)) == 250
    await drain(make_writer(ledger, engine, batch_size=50))  # the restarted writer
    assert await reconcile(ledger.redis, ledger.keys, engine) == []
    (n,) = await rows(engine, "SELECT count(*) FROM credit_transactions")
    assert n[0] == 301


async def test_no_trimming_before_any_writer_has_read(ledger: Ledger, engine: AsyncEngine) -> None:
    await ledger.configure_account("acme")
    writer = make_writer(ledger, engine)
    assert await writer.trim(0, force=True) == 0
    await writer.ensure_group(0)
    assert await writer.trim(0, force=True) == 0
    assert await ledger.redis.xlen(ledger.keys.outbox(0)) == 1


async def test_sql_down_keeps_entries_pending_until_it_is_back(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    await busy_ledger(ledger, clock)
    down = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    writer = make_writer(ledger, down)
    await writer.ensure_group(0)
    with pytest.raises((OperationalError, OSError)):
        await writer.step(0)
    await down.dispose()
    status = await outbox_status(ledger.redis, ledger.keys, clock.now)
    assert status[0]["pending"] > 0 and status[0]["unwritten"] > 0
    writer.engine = engine
    writer._pending_first[0] = True  # what the run loop does after a failure
    await drain(writer)
    assert await reconcile(ledger.redis, ledger.keys, engine) == []
    status = await outbox_status(ledger.redis, ledger.keys, clock.now)
    assert status[0]["unwritten"] == 0 and status[0]["lag_s"] == 0


async def test_malformed_and_sql_refused_entries_are_dead_lettered_not_retried_forever(
    ledger: Ledger, engine: AsyncEngine, database_url: str
) -> None:
    """A grant whose bucket lacks its credits cannot be parsed; a description with a NUL
    (which the API refuses, but an entry can still carry) is refused by PostgreSQL with a
    plain driver error. Both end in the dead-letter stream; the entries after them are
    written."""
    await ledger.configure_account("acme")
    outbox = ledger.keys.outbox(0)
    base: dict[str, Any] = {"kind": "txn", "account": "acme", "amount": 5, "balance": 5}
    base |= {"debt": 0, "ts": 1800000000000, "alloc": [], "buckets": []}
    t1 = base | {"id": "t1", "seq": 901, "type": "grant", "bucket": {"id": "b"}}
    t2 = base | {"id": "t2", "seq": 902, "type": "usage", "desc": "x\x00y"}
    await ledger.redis.xadd(outbox, {FIELD: orjson.dumps(t1)})
    await ledger.redis.xadd(outbox, {FIELD: orjson.dumps(t2)})
    await ledger.grant("acme", "g", 10)
    await drain(make_writer(ledger, engine, max_attempts=2))
    dead: Any = await ledger.redis.xrange(ledger.keys.dead_letters(0))
    reasons = [f[b"dl_error"].decode() for _, f in dead]
    assert "field credits is missing" in reasons[0]
    nul_refused = database_url.startswith("postgresql")
    assert len(dead) == (2 if nul_refused else 1)
    status = await outbox_status(ledger.redis, ledger.keys, ledger.clock())
    assert status[0]["unwritten"] == 0
    (g,) = await rows(engine, "SELECT amount FROM credit_transactions WHERE type = 'grant'")
    assert g[0] == 10


async def test_nul_characters_are_refused_before_anything_is_written(ledger: Ledger) -> None:
    from sidecar.errors import InvalidInput

    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 10)
    length = await ledger.redis.xlen(ledger.keys.outbox(0))
    with pytest.raises(InvalidInput, match="NUL"):
        await ledger.deduct("acme", 1, "r1", description="a\x00b")
    assert await ledger.redis.xlen(ledger.keys.outbox(0)) == length


async def test_a_retried_settings_dead_letter_keeps_its_place_in_the_order(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    """Settings are ordered by outbox id; a dead letter moved back gets a new id but carries
    its first one (orig_id), so it cannot overwrite the newer settings written meanwhile."""
    await ledger.configure_account("acme", overdraft_limit=7)
    await ledger.configure_account("acme", overdraft_limit=9)
    entries: Any = await ledger.redis.xrange(ledger.keys.outbox(0))
    first_id, first = entries[0]
    await drain(make_writer(ledger, engine))
    await ledger.redis.xadd(ledger.keys.outbox(0), {**first, b"orig_id": first_id})
    await drain(make_writer(ledger, engine))
    (acme,) = await rows(engine, "SELECT overdraft_limit FROM accounts WHERE id = 'acme'")
    assert acme[0] == 9


async def test_a_caught_up_writer_lingers_then_writes_what_gathered_in_one_batch(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    """After a batch smaller than batch_size the writer waits linger_s before reading again,
    so what arrives meanwhile is committed together; a stop cuts the wait short."""
    import asyncio

    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 100)
    writer = make_writer(ledger, engine, linger_s=30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        for _ in range(1000):  # the account and the grant: one small batch
            if writer.stats.written >= 2:
                break
            await asyncio.sleep(0.01)
        batches = writer.stats.batches
        for i in range(5):
            await ledger.deduct("acme", 1, f"r{i}")
        await asyncio.sleep(0.5)
        assert writer.stats.written == 2 and writer.stats.batches == batches  # lingering
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)  # the stop ends the linger at once
    assert await drain(writer) == 5  # all five, pending for the next run, in one batch


async def test_a_writer_waiting_to_migrate_holds_its_leases_and_writes_once_ready(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    """While its preparation (the schema migration, retried while SQL is unreachable) runs,
    the writer holds and renews its leases: a lease left free means no writer is alive, and
    `serve` would restart one that is only waiting for SQL."""
    import asyncio

    await ledger.configure_account("acme")
    writer = make_writer(ledger, engine, lease_ms=1200)  # renewed every 400 ms
    ready = asyncio.Event()
    stop = asyncio.Event()

    async def prepare() -> None:
        await ready.wait()

    task = asyncio.create_task(writer.run(stop, prepare=prepare))
    lease = ledger.keys.writer_lease(0)
    try:
        for _ in range(500):
            if await ledger.redis.get(lease):
                break
            await asyncio.sleep(0.01)
        holders = set()
        for _ in range(75):  # 1.5 s: more than a lease period, several renewals
            holders.add(await ledger.redis.get(lease))
            await asyncio.sleep(0.02)
        assert holders == {writer.token.encode()}
        assert writer.stats.written == 0
        ready.set()
        for _ in range(500):
            if writer.stats.written:
                break
            await asyncio.sleep(0.01)
        assert writer.stats.written == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert await ledger.redis.get(lease) is None  # released at stop


async def unacknowledged(redis: RedisClient, stream: str) -> int:
    """What `unwritten` must be: entries still in the stream that are pending or after the
    group's last-delivered id (each once)."""
    (group,) = [g for g in await redis.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode())]
    last = group["last-delivered-id"]
    last = tuple(int(x) for x in (last.decode() if isinstance(last, bytes) else last).split("-"))
    pel: Any = await redis.xpending_range(stream, GROUP, "-", "+", 100_000)
    pending = {p["message_id"] for p in pel}
    entries: Any = await redis.xrange(stream)
    return sum(
        1 for i, _ in entries if i in pending or tuple(int(x) for x in i.decode().split("-")) > last
    )


async def test_unwritten_counts_each_unacknowledged_entry_still_in_the_stream_once(
    ledger: Ledger, engine: AsyncEngine, redis: RedisClient
) -> None:
    """Redis's numbers are not the answer: its pending count keeps entries deleted from the
    stream, a group moved back to replay has its pending entries after that id too, and its
    lag counts entries trimmed away after the last-delivered id."""
    await ledger.configure_account("acme")
    await ledger.grant("acme", "paid", 10_000)
    writer = make_writer(ledger, engine, batch_size=50)
    stream = ledger.keys.outbox(0)

    async def agrees() -> int:
        (shard,) = await outbox_status(ledger.redis, ledger.keys, ledger.clock())
        assert shard["unwritten"] == await unacknowledged(redis, stream)
        return int(shard["unwritten"])

    await drain(writer)
    for i in range(300):
        await ledger.deduct("acme", 1, f"r{i}")
    await writer.step(0)  # 50 written
    await writer._read(stream, ">", block=False)  # 50 read, not written
    assert await writer.trim(0, force=True) == 52
    assert await agrees() == 250
    pel: Any = await redis.xpending_range(stream, GROUP, "-", "+", 1)
    await redis.xdel(stream, pel[0]["message_id"])  # a pending entry deleted
    assert await agrees() == 249
    await redis.xgroup_setid(stream, GROUP, "0")  # moved back to replay everything
    assert await agrees() == 249
    await drain(writer)
    assert await agrees() == 0
    for i in range(100):
        await ledger.deduct("acme", 1, f"s{i}")
    await writer.step(0)
    await redis.xtrim(stream, maxlen=20, approximate=False)  # past the last-delivered id
    assert await agrees() == 20


async def test_outbox_status_ignores_a_lag_that_redis_restored_wrong(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    """After the embedded Redis was SIGKILLed under load and restarted from its AOF, Redis 7.0
    reported the writer group's lag as 13,269 with the group at the stream's last entry and 7
    entries in the stream: `reconcile` noted 13,269 entries not in SQL, the outbox alert and a
    shutdown's drain read the same number. Nothing is unwritten once the group has read to the
    end, and a lag longer than the stream is not believed. The group's entries-read is what
    went wrong; it is set here as Redis restored it."""
    await busy_ledger(ledger, clock)
    writer = make_writer(ledger, engine)
    await drain(writer)
    await writer.trim(0, force=True)  # as the writer does: the stream keeps what is unwritten
    stream = ledger.keys.outbox(0)
    last = (await ledger.redis.xinfo_stream(stream))["last-generated-id"]
    await ledger.redis.execute_command("XGROUP", "SETID", stream, GROUP, last, "ENTRIESREAD", 1)
    group = [
        g for g in await ledger.redis.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode())
    ]
    assert group[0]["lag"] > 0  # what Redis says
    status = await outbox_status(ledger.redis, ledger.keys, clock.now)
    assert status[0]["unwritten"] == 0 and status[0]["lag_s"] == 0
    # entries added after it are counted, however wrong Redis' lag
    await ledger.deduct("beta", 1, "r9")
    status = await outbox_status(ledger.redis, ledger.keys, clock.now)
    assert status[0]["unwritten"] == 1
