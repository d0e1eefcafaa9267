"""`rebuild` restores Redis from the SQL ledger (on SQLite and PostgreSQL).

After FLUSHALL and a rebuild the ledger holds the same state (everything but rate-limiter TATs
and the streams), passes reconcile, and answers as before: balances and buckets, replays of
idempotency keys, grant ids, holds, settles and refunds (never charging or crediting twice), API
keys, and the transactions that later calls and deadlines write. Also covered: one account only,
refusing to overwrite an account without replace, replace discarding what only Redis had (and
pushing a correction made in SQL), the retention window, and random operation sequences.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.errors import (
    IdempotencyConflict,
    SidecarError,
    UnknownAccount,
    UnknownHold,
    UnknownTransaction,
)
from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import (
    Allowed,
    HoldResult,
    RateLimit,
)
from sidecar.lua import Scripts
from sidecar.persistence.db import create_engine, migrate
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.rebuild_redis import AccountExists, restore_account
from sidecar.persistence.rebuild_sql import RebuildError, read_account, snapshot
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.embedded import RedisServer
from tests.conftest import FakeClock, outbox_entries
from tests.conftest import snapshot as redis_snapshot
from tests.model import LedgerModel
from tests.persistence.conftest import correct_bucket, empty, rows
from tests.persistence.test_writer import drain, make_writer
from tests.test_ledger_properties import RETENTION_MS, Scenario, define_plans, sequences

ACCOUNTS = ("acme", "beta", "idle")
EPHEMERAL_PREFIXES = (b"kt:", b"rt:")
MINUTE = 60_000


# -- the ledger before the flush ----------------------------------------------------------


@dataclass
class Story:
    """What a busy ledger did: the ids and keys the probes refer to."""

    t0: int = 0  # when it started
    usage: dict[str, str] = field(default_factory=dict)  # idempotency key -> transaction id
    settles: dict[str, str] = field(default_factory=dict)  # hold id -> its settle's transaction
    key_ids: dict[str, str] = field(default_factory=dict)  # name -> key id
    keys: dict[str, str] = field(default_factory=dict)  # name -> the key itself


async def busy(ledger: Ledger, clock: FakeClock) -> Story:
    """Three accounts: settings, grants (purchase with metadata, promo priority, expiring ones:
    one expires with credits left, one spent before its expiry, one expires while held),
    usages (with an API key, into the overdraft), holds active / settled / released / lapsed
    / settled above the hold (into the overdraft, part uncovered),
    refunds (partial, the rest with the amount omitted, one forfeited, one repaying debt and
    one turning into a new bucket), API keys (rate-limited, plain, revoked)."""
    s = Story(t0=clock.now)
    api = ApiKeys(ledger)
    t0 = s.t0
    await ledger.configure_account(
        "acme", overdraft_limit=50, low_balance_threshold=20, rate_limit=RateLimit(1000, 1000, 500)
    )
    await ledger.configure_account("beta", overdraft_limit=30)
    await ledger.configure_account("idle", low_balance_threshold=-5)
    for name, rl in (("active", RateLimit(100, 1000, 50)), ("plain", None), ("revoked", None)):
        info, key = await api.create("acme", name=f"ci/{name}", rate_limit=rl)
        s.key_ids[name], s.keys[name] = info.key_id, key
    await api.revoke(s.key_ids["revoked"])
    info, key = await api.create("beta", name="beta")
    s.key_ids["beta"], s.keys["beta"] = info.key_id, key

    await ledger.grant(
        "acme", "paid", 100, source="purchase", metadata={"order": 7, "url": "https://x/y"}
    )
    await ledger.grant("acme", "drained", 3, priority=-3, expires_at=t0 + 2 * MINUTE)
    await ledger.grant("acme", "held-exp", 5, priority=-2, expires_at=t0 + MINUTE)
    await ledger.grant(
        "acme", "promo", 30, source="promo", priority=-1, expires_at=t0 + 50 * MINUTE
    )
    await ledger.grant("acme", "unused-exp", 5, priority=9, expires_at=t0 + MINUTE)
    await ledger.grant("acme", "later", 40, priority=2, expires_at=t0 + 30 * 24 * 60 * MINUTE)

    async def use(account: str, cost: int, key: str, **kw: Any) -> None:
        r = await ledger.deduct(account, cost, key, **kw)
        assert isinstance(r, Allowed) and not r.replayed
        s.usage[key] = r.transaction_id

    await use("acme", 4, "r1", key_id=s.key_ids["active"], description="chat")  # drained, held-exp
    await ledger.hold("acme", "h-active", 10, 20 * MINUTE)  # held-exp 4, promo 6
    await ledger.hold("acme", "h-settle", 8, 20 * MINUTE)
    s.settles["h-settle"] = (await ledger.settle("acme", "h-settle", 5)).transaction_id
    await ledger.hold("acme", "h-release", 3, 20 * MINUTE)
    await ledger.release("acme", "h-release")
    await ledger.hold("acme", "h-lapse", 2, 1000)
    clock.advance(2000)
    await use("acme", 20, "r2", key_id=s.key_ids["plain"])
    await ledger.refund("acme", "rf-part", s.usage["r2"], 5)
    await ledger.refund("acme", "rf-rest", s.usage["r2"])  # the rest: amount omitted
    clock.advance(MINUTE)  # held-exp expires held (no txn), unused-exp with 5 left, h-lapse
    await use("acme", 2, "r3")
    clock.advance(MINUTE)  # drained expires empty (no txn)
    await ledger.refund("acme", "rf-u1", s.usage["r1"], 2)  # its buckets expired: forfeited

    await ledger.grant("beta", "b1", 10, expires_at=t0 + 30 * 24 * 60 * MINUTE)
    await use("beta", 25, "b-r1")  # 15 into the overdraft
    await ledger.refund("beta", "b-rf1", s.usage["b-r1"], 5)  # repays debt
    await ledger.grant("beta", "b2", 20)  # repays the remaining debt of 10
    await ledger.refund("beta", "b-rf2", s.usage["b-r1"], 10)  # no debt left: a new bucket
    await use("beta", 1, "b-r2", key_id=s.key_ids["beta"])
    await ledger.hold("beta", "b-h0", 2, 20 * MINUTE)
    # leaves h:<bucket> = 0 behind
    s.settles["b-h0"] = (await ledger.settle("beta", "b-h0", 2)).transaction_id
    # settled above the hold: beta's 14, 30 of overdraft, 33 not covered
    await ledger.hold("beta", "b-h-over", 3, 20 * MINUTE)
    s.settles["b-h-over"] = (await ledger.settle("beta", "b-h-over", 80)).transaction_id
    # its overdraft first (repays the debt), then 10 of its draws, in reverse
    await ledger.refund("beta", "b-rf-over", s.settles["b-h-over"], 40)
    await ledger.grant("beta", "b3", 100)
    # the last calls: a settings change (a clock SQL only knows from the settings entry)
    await ledger.configure_account(
        "acme", overdraft_limit=50, low_balance_threshold=15, rate_limit=RateLimit(1000, 1000, 500)
    )
    return s


async def check_story_coverage(engine: AsyncEngine) -> None:
    """The busy ledger has what its docstring says, as SQL sees it."""
    types = dict(await rows(engine, "SELECT type, count(*) FROM credit_transactions GROUP BY type"))
    assert set(types) == {
        "purchase",
        "grant",
        "usage",
        "hold",
        "settle",
        "release",
        "refund",
        "expiry",
    }
    states = await rows(engine, "SELECT DISTINCT state FROM credit_holds")
    assert {s[0] for s in states} == {"active", "settled", "released", "expired"}
    silent = await rows(
        engine,
        "SELECT bucket_id FROM credit_balances b WHERE NOT expired AND remaining = 0 "
        "AND expires_ms <= (SELECT clock_ms FROM accounts a WHERE a.id = b.account) "
        "ORDER BY bucket_id",
    )
    assert [r[0] for r in silent] == ["drained", "held-exp"]  # expired in Redis, not in SQL
    zero_held = await rows(
        engine,
        "SELECT count(*) FROM credit_balances WHERE held = 0 AND "
        "bucket_id IN (SELECT bucket_id FROM credit_allocations WHERE held_delta > 0)",
    )
    assert zero_held[0][0] > 0  # buckets a hold drew on, holding nothing now
    (refund_bucket,) = await rows(
        engine, "SELECT bucket_id FROM credit_balances WHERE source = 'refund'"
    )
    assert refund_bucket[0].startswith("refund:")
    (forfeit,) = await rows(
        engine,
        "SELECT amount FROM credit_transactions WHERE type='refund' "
        "AND source_transaction_id IN (SELECT id FROM credit_transactions "
        "WHERE idempotency_key = 'r1')",
    )
    assert forfeit[0] == 0


# -- comparing ----------------------------------------------------------------------------


async def redis_state(redis: RedisClient, keys: KeySpace) -> dict[bytes, Any]:
    """Every key and its content, without the streams (outbox, events: not restored), the
    rate limiters' TATs (tat, kt:<key>, rt:<route> in the account hashes: they start fresh), the
    plan stamps (they only order concurrent plan changes; a rebuild takes fresh ones) and
    the attempt tokens of idempotency records (at: kept by no SQL row, a restored record is
    never voided, see sidecar/lua/void.lua; a replay adds its own)."""
    prefix = keys.account_prefix(0).encode()
    out: dict[bytes, Any] = {}
    everything: dict[bytes, Any] = await redis_snapshot(redis)
    for key, (kind, value) in everything.items():
        if kind == "stream" or key.endswith(b":plans:stamps"):  # (plan.lua's ordering stamps)
            continue
        if kind == "hash" and key.startswith(prefix):
            assert isinstance(value, dict)
            value = {
                f: v
                for f, v in value.items()
                if f != b"tat" and not f.startswith(EPHEMERAL_PREFIXES)
            }
        if kind == "string" and b":i:" in key:  # an idempotency record (sidecar/ledger/keyspace.py)
            assert isinstance(value, bytes)
            value = {f: v for f, v in json.loads(value).items() if f != "at"}
        out[key] = (kind, value)
    return out


def strip_ids(v: Any) -> Any:
    """A result without the transaction ids that each run draws anew."""
    if (
        dataclasses.is_dataclass(v)
        and not isinstance(v, type)
        and any(f.name == "transaction_id" for f in dataclasses.fields(v))
    ):
        return dataclasses.replace(v, transaction_id="")
    return v


async def outcome(call: Awaitable[Any]) -> Any:
    """A call's result, or the class of the domain error it raised."""
    try:
        return await call
    except SidecarError as e:
        return type(e)


async def answers(ledger: Ledger, s: Story) -> dict[str, Any]:
    """What the ledger answers to calls that change nothing: balances, replays, conflicts,
    lapsed holds, API keys (a fresh ApiKeys: nothing cached)."""
    api = ApiKeys(ledger)
    u = s.usage
    out: dict[str, Any] = {f"balance {a}": await ledger.balance(a) for a in ACCOUNTS}
    calls: dict[str, Awaitable[Any]] = {
        "replay r1": ledger.deduct("acme", 4, "r1", key_id=s.key_ids["active"], description="chat"),
        "r1 for another request": ledger.deduct("acme", 4, "r1", key_id=s.key_ids["active"]),
        "replay b-r1": ledger.deduct("beta", 25, "b-r1"),
        "conflicting r2": ledger.deduct("acme", 21, "r2"),
        "replay grant": ledger.grant(
            "acme", "paid", 100, source="purchase", metadata={"url": "https://x/y", "order": 7}
        ),
        "replay promo grant": ledger.grant(
            "acme", "promo", 30, source="promo", priority=-1, expires_at=s.t0 + 50 * MINUTE
        ),
        "conflicting grant": ledger.grant("acme", "paid", 101, source="purchase"),
        "replay refund": ledger.refund("acme", "rf-part", u["r2"], 5),
        "replay refund of the rest": ledger.refund("acme", "rf-rest", u["r2"]),
        "the rest, now with an amount": ledger.refund("acme", "rf-rest", u["r2"], 15),
        "fully refunded": ledger.refund("acme", "rf-again", u["r2"]),
        "replay forfeited refund": ledger.refund("acme", "rf-u1", u["r1"], 2),
        "replay refund into a bucket": ledger.refund("beta", "b-rf2", u["b-r1"], 10),
        "replay hold": ledger.hold("acme", "h-active", 10, 20 * MINUTE),
        "replay settle": ledger.settle("acme", "h-settle", 5),
        "settle again, other amount": ledger.settle("acme", "h-settle", 6),
        "replay settle above the hold": ledger.settle("beta", "b-h-over", 80),
        "settle above the hold, for what it charged": ledger.settle("beta", "b-h-over", 47),
        "replay refund of a settle above the hold": ledger.refund(
            "beta", "b-rf-over", s.settles["b-h-over"], 40
        ),
        "settle a released hold": ledger.settle("acme", "h-release", 1),
        "replay release": ledger.release("acme", "h-release"),
        "release a lapsed hold": ledger.release("acme", "h-lapse"),
        "settle a lapsed hold": ledger.settle("acme", "h-lapse", 1),
        "revoked key": ledger.deduct("acme", 1, "r-revoked", key_id=s.key_ids["revoked"]),
        "unknown hold": ledger.settle("idle", "h-active", 1),
        "unknown usage": ledger.refund("idle", "rf", u["r1"]),
        "keys of acme": api.list("acme"),
        "keys of beta": api.list("beta"),
    }
    for name, call in calls.items():
        out[name] = await outcome(call)
    for name, key in s.keys.items():
        out[f"resolve {name}"] = await api.resolve(key)
    return out


async def moves(ledger: Ledger, clock: FakeClock, s: Story) -> list[Any]:
    """Calls that write, then an hour later (promo expires, closed holds are purged): their
    results without the new transaction ids."""
    results = [
        await ledger.refund("acme", "rf-new", s.usage["r3"], 1),
        await ledger.refund("acme", "rf-settle", s.settles["h-settle"], 2),  # a settle's charge
        await ledger.settle("acme", "h-active", 3),  # 3 of held-exp's 4, which expired: 1 lost
        await ledger.deduct("acme", 6, "r-new", key_id=s.key_ids["active"]),
        await ledger.grant("acme", "g-new", 10),
        await ledger.deduct("beta", 3, "b-new", key_id=s.key_ids["beta"]),
        await ledger.refund("beta", "b-rf3", s.usage["b-r1"]),
        await ledger.refund("beta", "b-rf-over2", s.settles["b-h-over"]),  # the rest: 7
        await ledger.hold("beta", "b-h", 4, 10 * MINUTE),
    ]
    clock.advance(60 * MINUTE)
    results += [await ledger.sweep(), await ledger.balance("acme"), await ledger.balance("beta")]
    return [strip_ids(r) for r in results]


async def new_transactions(redis: RedisClient, keys: KeySpace, after: int) -> list[dict[str, Any]]:
    """The outbox transactions from the ``after``-th entry on, without their ids."""
    entries = (await outbox_entries(redis))[after:]
    return [{k: v for k, v in e.items() if k != "id"} for e in entries if e["kind"] == "txn"]


# -- tests --------------------------------------------------------------------------------


async def test_flushall_then_rebuild_restores_the_state_and_every_answer(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, redis: RedisClient
) -> None:
    """After FLUSHALL + rebuild: the same keys and contents (but TATs and streams), reconcile is
    clean, every answer (balances, replays, conflicts, lapsed holds, keys) is the same, replays
    write nothing, and later calls and deadlines give the same results and transactions (seq
    continuing); idempotency and usage records live on for what is left of the retention."""
    s = await busy(ledger, clock)
    await drain(make_writer(ledger, engine))
    await check_story_coverage(engine)
    assert await reconcile(redis, ledger.keys, engine) == []
    before = await redis_state(redis, ledger.keys)
    answered = await answers(ledger, s)
    assert await redis_state(redis, ledger.keys) == before  # the answers wrote nothing
    assert answered["replay r1"].replayed and answered["replay refund of the rest"].replayed
    assert answered["replay promo grant"].replayed
    # the refund that omitted its amount is replayed as such, and only as such
    assert answered["the rest, now with an amount"] is IdempotencyConflict
    assert answered["release a lapsed hold"].state == "expired"
    at = clock.now
    outbox_len = await redis.xlen(ledger.keys.outbox(0))
    moved = await moves(ledger, clock, s)
    moved_txns = await new_transactions(redis, ledger.keys, outbox_len)

    await redis.flushall()
    clock.now = at
    restored = await rebuild(
        redis, ledger.keys, engine, now_ms=clock.now, retention_ms=ledger.retention_ms
    )
    assert restored == len(ACCOUNTS)
    assert await redis_state(redis, ledger.keys) == before
    assert await reconcile(redis, ledger.keys, engine) == []
    assert await answers(ledger, s) == answered
    assert await redis_state(redis, ledger.keys) == before
    assert await redis.xlen(ledger.keys.outbox(0)) == 0  # the rebuild wrote no transaction

    usage_times = dict(
        await rows(engine, "SELECT id, created_ms FROM credit_transactions WHERE type = 'usage'")
    )
    for account in ("acme", "beta"):
        for key, tx in s.usage.items():
            if not key.startswith("b-" if account == "beta" else "r"):
                continue
            left = usage_times[tx] + ledger.retention_ms - clock.now
            for k in (ledger.keys.idempotency(account, key), ledger.keys.usage(account, tx)):
                assert left - 5000 < await redis.pttl(k) <= left, k

    assert await moves(ledger, clock, s) == moved
    assert await new_transactions(redis, ledger.keys, 0) == moved_txns


async def test_clawbacks_survive_flushall_and_rebuild_with_what_they_wait_for(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, redis: RedisClient
) -> None:
    """Clawbacks (revoke.lua's state, carried by their transactions), one taken from a hold's
    credits, one lowered again while it waits for another hold, come back as they were; the
    restored pending part is taken when its hold ends."""
    await ledger.configure_account("acme")
    for bucket in ("purchase:cs_1:li", "purchase:cs_2:li", "purchase:cs_3:li"):
        await ledger.grant("acme", bucket, 100, source="purchase")
    await ledger.hold("acme", "h", 300, 20 * MINUTE)  # all of it
    await ledger.revoke(
        "acme", "cs_1", 100, buckets=["purchase:cs_1:li"], policy="unspent", version=1
    )
    await ledger.revoke(
        "acme", "cs_2", 60, buckets=["purchase:cs_2:li"], policy="negative", version=1
    )
    await ledger.release("acme", "h")  # takes cs_1's 100 and cs_2's 60
    await ledger.hold("acme", "h2", 40, 20 * MINUTE)
    await ledger.revoke(
        "acme", "cs_2", 100, buckets=["purchase:cs_2:li"], policy="negative", version=2
    )
    await ledger.revoke(
        "acme", "cs_2", 80, buckets=["purchase:cs_2:li"], policy="negative", version=3
    )
    await drain(make_writer(ledger, engine))
    before = await redis_state(redis, ledger.keys)
    await redis.flushall()
    await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=3_600_000)
    after = await redis_state(redis, ledger.keys)
    hash_key = ledger.keys.for_account("acme").account.encode()
    mine = {k: v for k, v in before[hash_key][1].items() if k.startswith((b"cb", b"pc:"))}
    assert set(mine) == {b"cb:cs_1", b"cbs:cs_1", b"cb:cs_2", b"cbs:cs_2"} | {
        f"pc:purchase:cs_{i}:li".encode() for i in (1, 2)
    }
    assert {k: v for k, v in after[hash_key][1].items() if k.startswith((b"cb", b"pc:"))} == mine
    assert await reconcile(redis, ledger.keys, engine) == []
    r = await ledger.release("acme", "h2")  # 20 of the 40 back are cs_2's pending credits
    b = await ledger.balance("acme")
    assert {x.id: x.remaining for x in b.buckets} == {
        "purchase:cs_2:li": 20,
        "purchase:cs_3:li": 100,
    }
    assert r.balance == 120


async def test_credits_a_lowered_clawback_gives_back_reach_sql_and_survive_rebuild(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, redis: RedisClient
) -> None:
    """A clawback that became debt, repaid by a later grant, then given back (a won dispute):
    the new clawback:<tx> bucket and the cancelled debt reach SQL (reconcile is clean) and
    come back after a rebuild."""
    await ledger.configure_account("acme")
    await ledger.grant("acme", "purchase:cs_1:li", 100, source="purchase")
    await ledger.deduct("acme", 100, "spend")
    await ledger.revoke(
        "acme", "cs_1", 100, buckets=["purchase:cs_1:li"], policy="negative", version=1
    )
    await ledger.grant("acme", "later", 150)
    r = await ledger.revoke(
        "acme", "cs_1", 0, buckets=["purchase:cs_1:li"], policy="negative", version=2
    )
    assert (r.given_back, r.balance) == (100, 150)
    await drain(make_writer(ledger, engine))
    assert await reconcile(redis, ledger.keys, engine) == []
    types = await rows(engine, "SELECT type, amount FROM credit_transactions ORDER BY seq")
    assert [tuple(t) for t in types][-1] == ("revoke", 100)
    before = await redis_state(redis, ledger.keys)
    await redis.flushall()
    await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=3_600_000)
    assert await redis_state(redis, ledger.keys) == before
    assert (await ledger.balance("acme")).balance == 150


async def test_rebuilding_one_account_restores_only_that_account(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, redis: RedisClient
) -> None:
    """rebuild(account=...) writes that account's keys, its due entry and its API keys' index
    entries, exactly as they were, and nothing of any other account."""
    s = await busy(ledger, clock)
    await drain(make_writer(ledger, engine))
    before = await redis_state(redis, ledger.keys)
    await redis.flushall()
    assert (
        await rebuild(
            redis, ledger.keys, engine, account="beta", now_ms=clock.now, retention_ms=3_600_000
        )
        == 1
    )
    after = await redis_state(redis, ledger.keys)
    k = ledger.keys
    beta = {
        *(x.encode() for x in k.for_account("beta").common() if x != k.due(0)),
        k.api_keys("beta").encode(),
        *(k.idempotency("beta", key).encode() for key in s.usage if key.startswith("b-")),
        *(k.usage("beta", tx).encode() for key, tx in s.usage.items() if key.startswith("b-")),
        *(k.usage("beta", tx).encode() for h, tx in s.settles.items() if h.startswith("b-")),
    }
    assert {key: v for key, v in before.items() if key in beta} == {
        key: v for key, v in after.items() if key in beta
    }
    shared = {k.due(0).encode(), k.api_key_index().encode(), k.api_key_accounts().encode()}
    assert set(after) == (beta & set(before)) | shared
    assert after[k.due(0).encode()][1] == [
        (m, score) for m, score in before[k.due(0).encode()][1] if m == b"beta"
    ]
    assert after[k.api_key_accounts().encode()][1] == {s.key_ids["beta"].encode(): b"beta"}
    assert list(after[k.api_key_index().encode()][1].values()) == [
        f"beta/{s.key_ids['beta']}".encode()
    ]
    with pytest.raises(UnknownAccount):
        await ledger.balance("acme")


async def test_rebuild_refuses_to_overwrite_an_account_that_exists_without_replace(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, redis: RedisClient
) -> None:
    """Without replace nothing is written when any account to restore exists in Redis, and
    restore.lua itself refuses (EXISTS) when the account appears after that check."""
    await busy(ledger, clock)
    await drain(make_writer(ledger, engine))
    untouched = await redis_snapshot(redis)
    with pytest.raises(AccountExists, match="3 account"):
        await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=3_600_000)
    assert await redis_snapshot(redis) == untouched

    await redis.flushall()
    await ledger.configure_account("beta")  # recreated by someone before the rebuild
    untouched = await redis_snapshot(redis)
    with pytest.raises(AccountExists, match="beta"):
        await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=3_600_000)
    assert await redis_snapshot(redis) == untouched

    async with snapshot(engine) as conn:
        state = await read_account(conn, "beta", now_ms=clock.now, retention_ms=3_600_000)
    assert state is not None
    with pytest.raises(AccountExists, match="beta already exists"):
        await restore_account(
            redis,
            ledger.keys,
            Scripts.register(redis).restore,
            state,
            replace=False,
            now_ms=clock.now,
            retention_ms=3_600_000,
        )
    assert await redis_snapshot(redis) == untouched


async def test_replace_discards_what_only_redis_had_and_restores_sql(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, redis: RedisClient
) -> None:
    """With replace (and force, since Redis is ahead of SQL), an existing account's keys are
    replaced by SQL's state: a usage SQL never saw is gone with its idempotency and usage
    records, an API key SQL never saw is gone from the account and from the global index, and
    the rate limiters start fresh."""
    s = await busy(ledger, clock)
    await drain(make_writer(ledger, engine))
    before = await redis_state(redis, ledger.keys)
    api = ApiKeys(ledger)
    await ledger.deduct("acme", 7, "not-in-sql", key_id=s.key_ids["active"])
    _, stray_key = await api.create("acme", name="not in sql")
    await api.revoke(s.key_ids["plain"])
    changed = await redis_state(redis, ledger.keys)
    assert changed != before
    # Redis holds a usage SQL lacks: replacing would undo it, so it takes force.
    with pytest.raises(RebuildError, match="not have yet for 1 account"):
        await rebuild(
            redis, ledger.keys, engine, replace=True, now_ms=clock.now, retention_ms=3_600_000
        )
    assert await redis_state(redis, ledger.keys) == changed
    assert await rebuild(
        redis,
        ledger.keys,
        engine,
        replace=True,
        force=True,
        now_ms=clock.now,
        retention_ms=3_600_000,
    ) == len(ACCOUNTS)
    assert await redis_state(redis, ledger.keys) == before
    fresh = ApiKeys(ledger)
    assert await fresh.resolve(stray_key) is None
    assert await fresh.resolve(s.keys["plain"]) is not None
    acme: Any = await redis.hgetall(ledger.keys.for_account("acme").account)
    assert b"tat" not in acme and not any(f.startswith(EPHEMERAL_PREFIXES) for f in acme)
    again = await rebuild(
        redis, ledger.keys, engine, replace=True, now_ms=clock.now, retention_ms=3_600_000
    )
    assert again == len(ACCOUNTS) and await redis_state(redis, ledger.keys) == before


async def test_a_bucket_corrected_in_sql_reaches_redis_with_rebuild_replace(
    ledger: Ledger, engine: AsyncEngine, redis: RedisClient
) -> None:
    """README, "Correcting a balance": after an UPDATE of a bucket in SQL (stamped with the
    account's seq), rebuild --account --replace makes Redis spend the corrected amount."""
    await ledger.configure_account("acme")
    await ledger.grant("acme", "paid", 100)
    await ledger.deduct("acme", 30, "r1")
    await drain(make_writer(ledger, engine))
    await correct_bucket(engine, "acme", "paid", 90)
    await rebuild(
        redis,
        ledger.keys,
        engine,
        account="acme",
        replace=True,
        now_ms=ledger.clock(),
        retention_ms=ledger.retention_ms,
    )
    b = await ledger.balance("acme")
    assert (b.balance, b.buckets[0].remaining) == (90, 90)
    replay = await ledger.deduct("acme", 30, "r1")
    assert isinstance(replay, Allowed) and replay.replayed and replay.balance == 70
    await ledger.deduct("acme", 5, "r2")
    await drain(make_writer(ledger, engine))
    (paid,) = await rows(engine, "SELECT remaining FROM credit_balances WHERE bucket_id='paid'")
    assert paid[0] == 85 == (await ledger.balance("acme")).balance


async def test_only_records_within_the_retention_come_back_and_live_what_is_left_of_it(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, redis: RedisClient
) -> None:
    """Usages older than the retention lose their idempotency and usage records (a refund is
    refused, the key charges anew), closed holds past the retention are not restored, the rest
    lives what is left of the retention, and deadlines that passed while Redis was down are
    processed after the rebuild as they would have been."""
    await ledger.configure_account("acme")  # retention: 60 minutes
    await ledger.grant("acme", "paid", 100)
    await ledger.grant("acme", "promo", 10, priority=-1, expires_at=clock.now + 65 * MINUTE)
    old = await ledger.deduct("acme", 1, "old")
    await ledger.hold("acme", "h-old", 1, MINUTE)
    await ledger.release("acme", "h-old")
    clock.advance(30 * MINUTE)
    mid = await ledger.deduct("acme", 1, "mid")
    await ledger.hold("acme", "h-mid", 1, MINUTE)
    await ledger.settle("acme", "h-mid", 1)
    await ledger.hold("acme", "h-ttl", 2, 32 * MINUTE)
    clock.advance(30 * MINUTE + 1)
    await ledger.deduct("acme", 1, "late")  # purges h-old
    await drain(make_writer(ledger, engine))
    assert isinstance(old, Allowed) and isinstance(mid, Allowed)

    await redis.flushall()
    clock.advance(10 * MINUTE)  # Redis was down meanwhile: h-ttl and promo are past due
    await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=ledger.retention_ms)
    k = ledger.keys
    assert not await redis.exists(k.idempotency("acme", "old"), k.usage("acme", old.transaction_id))
    assert sorted(await redis.hkeys(k.for_account("acme").holds)) == [b"h-mid", b"h-ttl"]
    left = 20 * MINUTE - 1  # of mid's retention
    for key in (k.idempotency("acme", "mid"), k.usage("acme", mid.transaction_id)):
        assert left - 5000 < await redis.pttl(key) <= left

    assert await ledger.sweep() == 2  # h-ttl's release, then promo's expiry
    txns = await outbox_entries(redis)
    assert [(t["type"], t["amount"], t["seq"]) for t in txns] == [
        ("release", 2, 11),
        ("expiry", -6, 12),
    ]
    assert await outcome(ledger.refund("acme", "rf", old.transaction_id)) is UnknownTransaction
    assert await outcome(ledger.settle("acme", "h-old", 1)) is UnknownHold
    r = await ledger.deduct("acme", 1, "old")
    assert isinstance(r, Allowed) and not r.replayed
    r = await ledger.deduct("acme", 1, "mid")
    assert isinstance(r, Allowed) and r.replayed and r.transaction_id == mid.transaction_id
    refunded = await ledger.refund("acme", "rf", mid.transaction_id)
    assert (refunded.refunded, refunded.forfeited) == (1, 1)  # it came from promo, expired
    assert (await ledger.settle("acme", "h-mid", 1)).replayed


async def test_an_account_sql_cannot_restore_is_refused_with_its_reason(
    ledger: Ledger, engine: AsyncEngine, redis: RedisClient
) -> None:
    """An account missing from SQL, or with a bucket whose defining entry never reached SQL,
    stops the rebuild with a message naming it, before anything of it is written."""
    with pytest.raises(RebuildError, match="nope is not in the SQL ledger"):
        await rebuild(redis, ledger.keys, engine, account="nope", now_ms=1, retention_ms=1000)
    await ledger.configure_account("acme")
    await ledger.grant("acme", "paid", 10)
    await drain(make_writer(ledger, engine))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE credit_balances SET credits = NULL"))
    await redis.flushall()
    with pytest.raises(RebuildError, match="bucket paid is incomplete in SQL"):
        await rebuild(
            redis, ledger.keys, engine, now_ms=ledger.clock(), retention_ms=ledger.retention_ms
        )
    assert await redis.keys("*") == []


async def test_restore_lua_validates_the_whole_state_before_writing(
    ledger: Ledger, engine: AsyncEngine, redis: RedisClient
) -> None:
    """An invalid state (here: active holds that do not match what their buckets hold, a
    negative seq, a hold drawn from an unknown bucket, a key record that is not JSON) is
    refused by the script with INVALID, and even with replace the existing account is left as
    it was: nothing is written."""
    await ledger.configure_account("acme")
    await ledger.grant("acme", "paid", 10)
    await ledger.hold("acme", "h", 4, MINUTE)
    await drain(make_writer(ledger, engine))
    async with snapshot(engine) as conn:
        state = await read_account(conn, "acme", now_ms=ledger.clock(), retention_ms=MINUTE)
    assert state is not None
    untouched = await redis_snapshot(redis)
    script = Scripts.register(redis).restore
    bad_states: list[dict[str, Any]] = [
        {"buckets": [b | {"held": 3} for b in state.document["buckets"]]},
        {"seq": -1},
        {"holds": [h | {"alloc": [["nope", 4]]} for h in state.document["holds"]]},
        {"keys": [{"id": "k", "record": "not json", "rate": ""}]},
    ]
    for bad in bad_states:
        broken = dataclasses.replace(state, document={**state.document, **bad})
        with pytest.raises(RebuildError, match="account acme: "):
            await restore_account(
                redis, ledger.keys, script, broken, replace=True, now_ms=1, retention_ms=MINUTE
            )
        assert await redis_snapshot(redis) == untouched


# -- property: any operation sequence ---------------------------------------------------


def _without_unused_plans(state: dict[bytes, Any], keys: KeySpace) -> dict[bytes, Any]:
    """The state with the plans hashes' zero counts left out (n:<plan> of a plan its shard's
    accounts all left: a rebuild never counts them up, so never down to 0 either)."""
    for shard in range(keys.shards):
        key = keys.plans(shard).encode()
        if key in state:
            kind, value = state[key]
            value = {f: v for f, v in value.items() if not (f.startswith(b"n:") and v == b"0")}
            state[key] = (kind, value)
    return state


_migrated: set[str] = set()


async def _roundtrip(redis_url: str, database_url: str, ops: list[Any]) -> None:
    """Runs ``ops``, drains, snapshots, flushes, rebuilds; the state must be the same."""
    redis = connect(redis_url)
    engine = create_engine(database_url)
    try:
        if database_url not in _migrated:
            await migrate(engine)
            _migrated.add(database_url)
        await empty(engine)
        await redis.flushall()
        clock = FakeClock()
        keys = KeySpace()
        ledger = Ledger(redis, keys, retention_ms=RETENTION_MS, clock=clock)
        s = Scenario(redis, ledger, LedgerModel(clock, RETENTION_MS), clock)
        await define_plans(redis, s.model)
        for op in ops:
            call = await s.apply(op)
            if call is None:
                continue
            _, result = await s.real(call)
            if isinstance(result, Allowed) and not result.replayed:
                s.usages.append(result.transaction_id)
            if isinstance(result, HoldResult) and not result.replayed:
                s.holds.append((call.args[0], result.hold_id))
        accounts = ("a", "b")
        for a in accounts:  # what is due now is processed, as any call would
            await ledger.expire(a)
        await drain(make_writer(ledger, engine))
        before = _without_unused_plans(await redis_state(redis, keys), keys)
        await redis.flushall()
        # The plans themselves: put back as tests/persistence/test_plans_sql.py's rebuild does
        # (the accounts' restore needs them), the default too; their counts come from it.
        await define_plans(redis, LedgerModel(clock, RETENTION_MS), s.plans)
        default = s.model.default_plan
        for shard in range(keys.shards):
            if default is not None:
                await redis.hset(keys.plans(shard), "default", default)
        n = await rebuild(redis, keys, engine, now_ms=clock.now, retention_ms=RETENTION_MS)
        for a in accounts:
            name = keys.for_account(a).account
            if name.encode() in before:  # the clock lags behind calls that wrote no transaction
                restored: Any = await redis.hget(name, "clock")  # (but never runs ahead)
                assert int(restored) <= int(before[name.encode()][1][b"clock"])
            # then what is due is processed here too: none of it writes a transaction
            assert await ledger.expire(a) == 0
        after = _without_unused_plans(await redis_state(redis, keys), keys)
        assert n == sum(1 for a in accounts if keys.for_account(a).account.encode() in before)
        assert await reconcile(redis, keys, engine) == []

        times = dict(
            await rows(
                engine,
                "SELECT id, created_ms FROM credit_transactions WHERE type IN ('usage', 'settle')",
            )
        )
        kept: dict[bytes, Any] = {}
        for key, value in before.items():
            tx = None
            if b":u:" in key:
                tx = key.decode().rsplit("/", 1)[1]
            elif b":i:" in key:
                tx = value[1]["tx"]
            if tx is not None and times[tx] + RETENTION_MS <= clock.now:
                continue  # past the retention on the ledger's clock (Redis' TTL is real time)
            kept[key] = value
        for a in accounts:
            hash_key = keys.for_account(a).account.encode()
            if hash_key in kept:
                del kept[hash_key][1][b"clock"], after[hash_key][1][b"clock"]
        assert after == kept
    finally:
        await redis.aclose()
        await engine.dispose()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=sequences)
def test_any_operation_sequence_survives_flushall_and_rebuild(
    redis_server: RedisServer, database_url: str, ops: list[Any]
) -> None:
    """Any sequence of configure / grant / deduct / hold / settle / release / refund / clock
    moves / sweeps, drained into SQL, comes back from a rebuild with the same state: buckets,
    burn order, deadlines, holds, due entries, and the records still within the retention (the
    clock may lag behind calls that wrote no transaction, never run ahead)."""
    asyncio.run(_roundtrip(redis_server.url, database_url, ops))


async def test_replace_refuses_atomically_when_checks_were_acknowledged_after_sql_was_read(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, redis: RedisClient
) -> None:
    """The 'Redis is ahead of SQL' guard is a compare-and-set inside restore.lua: a check
    acknowledged between the SQL read and the restore makes the restore refuse, writing
    nothing, instead of undoing the check and reusing its sequence number."""
    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 100)
    await drain(make_writer(ledger, engine))
    async with snapshot(engine) as conn:
        state = await read_account(conn, "acme", now_ms=clock.now, retention_ms=3_600_000)
    assert state is not None
    acked = await ledger.deduct("acme", 7, "between")  # after the read, before the restore
    assert isinstance(acked, Allowed)
    before = await redis_snapshot(redis)
    script = Scripts.register(redis).restore
    with pytest.raises(RebuildError, match="up to seq 2 in Redis, SQL only up to 1"):
        await restore_account(
            redis,
            ledger.keys,
            script,
            state,
            replace=True,
            now_ms=clock.now,
            retention_ms=3_600_000,
        )
    assert await redis_snapshot(redis) == before
    assert (await ledger.balance("acme")).balance == 93
    # force still replaces (the operator's explicit choice)
    await restore_account(
        redis,
        ledger.keys,
        script,
        state,
        replace=True,
        force=True,
        now_ms=clock.now,
        retention_ms=3_600_000,
    )
    assert (await ledger.balance("acme")).balance == 100


async def test_reconcile_reports_the_sequence_collisions_an_undone_check_leaves(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine, redis: RedisClient
) -> None:
    """A forced restore from a stale snapshot undoes an acknowledged check; the next check
    reuses its seq, SQL refuses it (dead letter), and the totals happen to agree again:
    reconcile still names the collision instead of calling the ledger clean."""
    await ledger.configure_account("acme")
    await ledger.grant("acme", "g", 100)
    await drain(make_writer(ledger, engine))
    async with snapshot(engine) as conn:
        stale = await read_account(conn, "acme", now_ms=clock.now, retention_ms=3_600_000)
    assert stale is not None
    await ledger.deduct("acme", 7, "acked")
    await drain(make_writer(ledger, engine))
    script = Scripts.register(redis).restore
    await restore_account(
        redis,
        ledger.keys,
        script,
        stale,
        replace=True,
        force=True,
        now_ms=clock.now,
        retention_ms=3_600_000,
    )
    await ledger.deduct("acme", 7, "reused-seq")
    await drain(make_writer(ledger, engine, max_attempts=1))
    (diff,) = await reconcile(redis, ledger.keys, engine)
    assert diff.account == "acme" and diff.what.startswith("sequence collision")
    assert "seq 2" in diff.what
    assert await reconcile(redis, ledger.keys, engine, "acme") == [diff]
