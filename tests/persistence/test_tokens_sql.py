"""The sidecar's own API tokens in the SQL ledger (on SQLite and PostgreSQL): the writer mirrors
the kind=token entries (create, rotate, revoke: one row per token, hashes only), an older entry
replayed never overwrites a newer one, a malformed one is a dead letter naming its problem;
`rebuild` puts every record back into Redis as token.lua wrote it (so every token still
verifies) and `reconcile` compares them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger import token_entry
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.outbox import FIELD, PoisonEntry
from sidecar.ledger.token_cache import TokenCache
from sidecar.ledger.tokens import VERSION_FIELD, Tokens, token_hash
from sidecar.lua import Scripts
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.rebuild_tokens import lua_json
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock
from tests.persistence.conftest import rows
from tests.persistence.test_writer import drain, make_writer

MINUTE = 60_000
# Everything cjson.encode escapes (but NUL, which token.lua refuses), and text it does not.
AWKWARD_NAME = "".join(chr(i) for i in range(1, 32)) + ' "quoted" back\\slash a/b \x7f é 日本 🔑'


@pytest.fixture
def sharded(redis: RedisClient, clock: FakeClock) -> Iterator[Ledger]:
    ledger = Ledger(redis, KeySpace(shards=3), retention_ms=3_600_000, clock=clock)
    yield ledger
    ledger.close()


async def token_rows(engine: AsyncEngine) -> dict[str, tuple[Any, ...]]:
    found = await rows(
        engine,
        "SELECT id, name, scopes, account_prefix, token_hash, previous, created_ms, rotated_ms, "
        "revoked_ms FROM api_tokens",
    )
    return {
        r[0]: (r[1], orjson.loads(r[2]), r[3], r[4], orjson.loads(r[5]), r[6], r[7], r[8])
        for r in found
    }


async def records(ledger: Ledger) -> dict[bytes, bytes]:
    """Shard 0's tokens hash without its version."""
    raw: dict[Any, Any] = await ledger.redis.hgetall(ledger.keys.tokens())
    return {k: v for k, v in raw.items() if k != VERSION_FIELD.encode()}


async def test_the_writer_mirrors_tokens_into_sql(
    ledger: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    tokens = Tokens(ledger)
    app, _ = await tokens.create("web app", ["checkout", "portal"], account_prefix="org_1:")
    ops, first = await tokens.create("ops", ["admin"])
    created = clock.now
    await drain(make_writer(ledger, engine))
    assert await token_rows(engine) == {
        app.id: ("web app", ["checkout", "portal"], "org_1:", app.hash, [], created, None, None),
        ops.id: ("ops", ["admin"], None, ops.hash, [], created, None, None),
    }

    clock.advance(MINUTE)
    ops, _ = await tokens.rotate(ops.id, 5 * MINUTE)
    clock.advance(MINUTE)
    await tokens.revoke(app.id)
    await drain(make_writer(ledger, engine))
    got = await token_rows(engine)
    rotated = created + MINUTE
    assert got[ops.id] == (
        "ops",
        ["admin"],
        None,
        ops.hash,
        [{"hash": token_hash(first), "expires": rotated + 5 * MINUTE}],
        created,
        rotated,
        None,
    )
    assert got[app.id][6:] == (None, clock.now)  # revoked, never rotated
    assert ops.hash != token_hash(first)


async def test_an_older_token_entry_replayed_changes_nothing(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    tokens = Tokens(ledger)
    t, _ = await tokens.create("ci", ["read"])
    await tokens.revoke(t.id)
    entries: Any = await ledger.redis.xrange(ledger.keys.outbox(0))
    first_id, first = entries[0]
    await drain(make_writer(ledger, engine))
    await ledger.redis.xadd(ledger.keys.outbox(0), {**first, b"orig_id": first_id})
    await drain(make_writer(ledger, engine))
    assert (await token_rows(engine))[t.id][7] is not None  # still revoked


GOOD: dict[str, Any] = {
    "kind": "token",
    "id": "tx_1",
    "token_id": "abc123",
    "ts": 5,
    "record": {
        "id": "abc123",
        "name": "ops",
        "scopes": ["admin", "read"],
        "account_prefix": None,
        "hash": "a" * 64,
        "previous": [{"expires": 9, "hash": "b" * 64}],
        "created_at": 1,
        "rotated_at": 5,
        "revoked_at": None,
    },
}


def _record(**change: Any) -> dict[str, Any]:
    return {"record": GOOD["record"] | change}


@pytest.mark.parametrize(
    "change",
    [
        {"token_id": "ABC123"},
        {"token_id": "a" * 65},
        {"token_id": "abc_123"},
        {"id": 7},
        {"ts": -1},
        {"ts": "5"},
        {"record": "{}"},
        {"record": {k: v for k, v in GOOD["record"].items() if k != "revoked_at"}},
        _record(last_used=3),
        _record(id="other1"),
        _record(name=""),
        _record(name="x" * 201),
        _record(name="a\x00b"),
        _record(scopes=[]),
        _record(scopes="admin"),
        _record(scopes=["admin", "root"]),
        _record(scopes=["read", "read"]),
        _record(account_prefix=""),
        _record(account_prefix="a b"),
        _record(hash="A" * 64),
        _record(hash="a" * 63),
        _record(previous=[{"expires": 9, "hash": "B" * 64}]),
        _record(previous=[{"expires": "9", "hash": "b" * 64}]),
        _record(previous=[{"hash": "b" * 64}]),
        _record(previous=[{"expires": 9, "hash": "b" * 64}] * 9),
        _record(created_at=None),
        _record(rotated_at="5"),
        _record(revoked_at=1.5),
    ],
)
def test_the_token_entry_decoder_refuses_what_token_lua_never_writes(
    change: dict[str, Any],
) -> None:
    t = token_entry.token(GOOD)
    assert t.token_id == "abc123" and t.token.scopes == {"admin", "read"}
    with pytest.raises(PoisonEntry):
        token_entry.token(GOOD | change)


async def test_a_malformed_token_entry_is_a_dead_letter_naming_the_problem(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    bad = GOOD | _record(hash="NOT-A-HASH")
    await ledger.redis.xadd(ledger.keys.outbox(0), {FIELD: orjson.dumps(bad)})
    good, _ = await Tokens(ledger).create("ops", ["admin"])
    await drain(make_writer(ledger, engine, max_attempts=1))
    dead: Any = await ledger.redis.xrange(ledger.keys.dead_letters(0))
    assert len(dead) == 1
    assert b"hash is not 64 lowercase hex digits" in dead[0][1][b"dl_error"]
    assert list(await token_rows(engine)) == [good.id]
    (difference,) = await reconcile(ledger.redis, ledger.keys, engine)
    assert difference.account == "token abc123" and "dead letter" in difference.what


async def test_the_records_lua_json_writes_are_the_bytes_token_lua_wrote(
    ledger: Ledger, clock: FakeClock
) -> None:
    tokens = Tokens(ledger)
    t, _ = await tokens.create(AWKWARD_NAME, ["read", "portal"], account_prefix="a.b:c-")
    clock.advance(MINUTE)
    await tokens.rotate(t.id, MINUTE)
    await tokens.rotate(t.id, 2 * MINUTE)
    plain, _ = await tokens.create("plain", ["service"])
    await tokens.revoke(plain.id)
    for raw in (await records(ledger)).values():
        assert lua_json(orjson.loads(raw)).encode() == raw


async def test_rebuild_after_a_flushall_puts_every_token_back_as_it_was(
    sharded: Ledger, clock: FakeClock, engine: AsyncEngine
) -> None:
    redis, keys = sharded.redis, sharded.keys
    tokens = Tokens(sharded)
    app, app_first = await tokens.create(AWKWARD_NAME, ["checkout"], account_prefix="org_1:")
    clock.advance(MINUTE)
    app, app_now = await tokens.rotate(app.id, 10 * MINUTE)
    gone, gone_token = await tokens.create("gone", ["admin"])
    await tokens.revoke(gone.id)
    ops, ops_token = await tokens.create("ops", ["admin", "read"])
    await sharded.configure_account("org_1:acme")
    await drain_all(sharded, engine)
    before = await records(sharded)
    running = TokenCache(tokens, clock)  # a serving process that saw the tokens before
    await running.refresh()
    old_version = running.version

    await redis.flushall()
    restored = await rebuild(
        redis, keys, engine, now_ms=clock.now, retention_ms=sharded.retention_ms
    )
    assert restored == 1
    assert await records(sharded) == before  # byte for byte
    version = await tokens.version()
    assert version >= clock.now > old_version  # past any version a process still holds
    for shard in range(keys.shards):  # a rebuild appends nothing for SQL to write again
        assert await redis.xlen(keys.outbox(shard)) == 0

    fresh = TokenCache(tokens, clock)
    for cache in (running, fresh):
        await cache.refresh()
        assert cache.version == version
        for token, expected in ((app_now, app.id), (app_first, app.id), (ops_token, ops.id)):
            caller = cache.verify(token.encode())
            assert caller is not None and caller.token_id == expected
        assert cache.verify(gone_token.encode()) is None
    clock.advance(10 * MINUTE)  # the replaced secret's grace is over
    assert fresh.verify(app_first.encode()) is None
    assert fresh.verify(app_now.encode()) is not None
    assert await reconcile(redis, keys, engine) == []


async def test_rebuild_restores_a_change_redis_lost_and_keeps_one_sql_lacks(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    redis, keys, tokens = ledger.redis, ledger.keys, Tokens(ledger)
    lost, _ = await tokens.create("lost", ["admin"])
    ahead, _ = await tokens.create("ahead", ["read"])
    await tokens.revoke(lost.id)
    await drain(make_writer(ledger, engine))
    revoked = await redis.hget(keys.tokens(), lost.id)
    # Redis lost the revoke (restarted from an older snapshot) ...
    unrevoked = orjson.loads(revoked or b"") | {"revoked_at": None}
    await redis.hset(keys.tokens(), lost.id, orjson.dumps(unrevoked))
    # ... and revoked another token the writer has not written yet
    await tokens.revoke(ahead.id)
    newer = await redis.hget(keys.tokens(), ahead.id)
    version = await tokens.version()

    await rebuild(redis, keys, engine, now_ms=ledger.clock(), retention_ms=ledger.retention_ms)
    assert await redis.hget(keys.tokens(), lost.id) == revoked
    assert await redis.hget(keys.tokens(), ahead.id) == newer
    assert await tokens.version() > version
    diffs = await reconcile(redis, keys, engine)
    assert [(d.account, d.what) for d in diffs] == [(f"token {ahead.id}", "record")]
    await drain(make_writer(ledger, engine))
    assert await reconcile(redis, keys, engine) == []


async def test_rebuild_with_nothing_to_restore_leaves_the_tokens_version_alone(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    tokens = Tokens(ledger)
    await tokens.create("ops", ["admin"])
    await drain(make_writer(ledger, engine))
    version = await tokens.version()
    await rebuild(
        ledger.redis, ledger.keys, engine, now_ms=ledger.clock(), retention_ms=ledger.retention_ms
    )
    assert await tokens.version() == version


async def test_reconcile_names_a_token_redis_and_sql_disagree_on(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    tokens = Tokens(ledger)
    a, _ = await tokens.create("a", ["admin"])
    b, _ = await tokens.create("b", ["read"])
    await drain(make_writer(ledger, engine))
    assert await reconcile(ledger.redis, ledger.keys, engine) == []
    key = ledger.keys.tokens()
    await ledger.redis.hdel(key, a.id)
    widened = orjson.loads(await ledger.redis.hget(key, b.id) or b"") | {"scopes": ["admin"]}
    await ledger.redis.hset(key, b.id, orjson.dumps(widened))
    await ledger.redis.hset(key, "redisonly", orjson.dumps(widened | {"id": "redisonly"}))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO api_tokens (id, name, scopes, token_hash, previous, created_ms, "
                "version) VALUES ('sqlonly', 'x', '[\"read\"]', :h, '[]', 1, '0')"
            ),
            {"h": "c" * 64},
        )
    diffs = {(d.account, d.what) for d in await reconcile(ledger.redis, ledger.keys, engine)}
    assert diffs == {
        (f"token {a.id}", "missing in redis"),
        (f"token {b.id}", "record"),
        ("token sqlonly", "missing in redis"),
        ("token redisonly", "missing in sql"),
    }


async def drain_all(ledger: Ledger, engine: AsyncEngine) -> None:
    writer = make_writer(ledger, engine)
    for shard in range(ledger.keys.shards):
        await writer.ensure_group(shard)
        while await writer.step(shard):
            pass


async def test_restore_tokens_lua_leaves_a_record_changed_since_it_was_read(
    ledger: Ledger,
) -> None:
    redis, key, tokens = ledger.redis, ledger.keys.tokens(), Tokens(ledger)
    t, _ = await tokens.create("ops", ["admin"])
    read = await redis.hget(key, t.id) or b""
    await tokens.revoke(t.id)  # token.lua changes it after the rebuild read it
    revoked = await redis.hget(key, t.id)
    version = await tokens.version()
    script = Scripts.register(redis).restore_tokens
    now = ledger.clock()
    # (token.lua starts a version at its clock: the version moves past it and past now)
    assert await script(keys=[key], args=[now, t.id, read, b"{}", "new1", "", b"{}"]) == [
        1,
        max(version + 1, now),
    ]
    assert await redis.hget(key, t.id) == revoked  # kept: not the record the rebuild read
    assert await redis.hget(key, "new1") == b"{}"  # absent, as read: written
    # a version already past the rebuild's clock still moves forward
    await redis.hset(key, VERSION_FIELD, now + 5)
    assert await script(keys=[key], args=[now, "new2", "", b"{}"]) == [1, now + 6]
