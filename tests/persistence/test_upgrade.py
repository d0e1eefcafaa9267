"""Upgrading in place from the previous script contract (tests/previous/): a Redis populated by
the previous scripts, with its outbox entries not yet written to SQL, keeps working: old
idempotency records still replay (by cost, all they bind) and are never voided (they list no
attempt tokens), the writer takes the old entries, reconcile is clean, and rebuild restores the
old records as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.audit import AuditEntry, AuditLog, verify
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.results import (
    Allowed,
    SpendLimit,
    SpendLimited,
)
from sidecar.ledger.token_cache import TokenCache
from sidecar.ledger.tokens import Tokens
from sidecar.ledger.voids import Void, request_digest, send_void
from sidecar.persistence.audit_store import walk
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock
from tests.persistence.test_writer import drain, make_writer
from tests.test_plans import DAY, define

PREVIOUS = Path(__file__).parents[1] / "previous"


async def previous(
    redis: RedisClient, name: str, ledger: Ledger, keys: list[str], args: list[Any]
) -> Any:
    """Runs the previous release's script ``name`` as that release called it (common ARGV:
    account, now, transaction id, retention)."""
    source = (PREVIOUS / "_lib.lua").read_text() + "\n" + (PREVIOUS / f"{name}.lua").read_text()
    account = str(args[0])
    common = ledger.keys.for_account(account).common()[:6]  # the previous release had six
    return await redis.eval(source, len(common) + len(keys), *common, *keys, *args)


async def populate(redis: RedisClient, ledger: Ledger, clock: FakeClock) -> str:
    """acme with 100 credits and one check of 3 (idempotency key r1), by the previous scripts;
    returns the check's transaction id."""
    now, ret = clock.now, ledger.retention_ms
    await previous(redis, "account", ledger, [], ["acme", now, "tx_a", ret, 0, "", "", "", ""])
    await previous(
        redis, "grant", ledger, [], ["acme", now, "tx_g", ret, "g", 100, "", 0, "manual", "", ""]
    )
    k = ledger.keys
    reply = await previous(
        redis,
        "deduct",
        ledger,
        [k.idempotency("acme", "r1"), k.usage("acme", "tx_u"), k.events_for("acme")],
        ["acme", now, "tx_u", ret, 3, "r1", "chat", "", "", "", "", "", ""],
    )
    assert reply[0] == b"ok"
    return "tx_u"


async def test_a_previous_idempotency_record_still_replays_by_its_cost(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    tx = await populate(redis, ledger, clock)
    record = orjson.loads(await redis.get(ledger.keys.idempotency("acme", "r1")) or b"")
    assert "fp" not in record  # written by the previous script
    r = await ledger.deduct("acme", 3, "r1", description="chat")
    assert isinstance(r, Allowed) and r.replayed and r.transaction_id == tx
    # the cost is all an old record binds: another description is still its replay
    r = await ledger.deduct("acme", 3, "r1", description="other")
    assert isinstance(r, Allowed) and r.replayed
    assert (await ledger.balance("acme")).balance == 97
    # new checks bind the whole request
    assert isinstance(await ledger.deduct("acme", 3, "r2", description="chat"), Allowed)
    assert (await ledger.balance("acme")).balance == 94


async def test_pending_previous_outbox_entries_reach_sql_and_rebuild_restores_their_records(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    tx = await populate(redis, ledger, clock)
    await ledger.deduct("acme", 2, "r2", description="new")  # a new-contract entry after them
    assert await drain(make_writer(ledger, engine)) == 4
    assert await reconcile(redis, ledger.keys, engine) == []
    before = {key: await redis.get(ledger.keys.idempotency("acme", key)) for key in ("r1", "r2")}
    await rebuild(
        redis,
        ledger.keys,
        engine,
        replace=True,
        now_ms=clock.now,
        retention_ms=ledger.retention_ms,
    )
    after = {key: await redis.get(ledger.keys.idempotency("acme", key)) for key in ("r1", "r2")}
    # restored as they were, but without attempt tokens (SQL keeps none): never voided
    assert {k: orjson.loads(v or b"") for k, v in after.items()} == {
        k: {f: x for f, x in orjson.loads(v or b"").items() if f != "at"} for k, v in before.items()
    }
    r = await ledger.deduct("acme", 3, "r1", description="chat")
    assert isinstance(r, Allowed) and r.replayed and r.transaction_id == tx
    assert (await ledger.balance("acme")).balance == 95
    assert await reconcile(redis, ledger.keys, engine) == []


async def test_a_clawback_of_the_previous_release_keeps_working_and_survives_rebuild(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """A refund the previous revoke.lua took back (cb:<purchase> = its target, no breakdown;
    its 'revoke' entry still in the outbox): today's revoke.lua raises it from there, and
    giving credits back returns only what it took itself (not the earlier 300: how they were
    taken was not kept); the writer takes the old entry and rebuild restores the clawback."""
    now, ret = clock.now, ledger.retention_ms
    await previous(redis, "account", ledger, [], ["acme", now, "tx_a", ret, 0, "", "", "", ""])
    await previous(
        redis,
        "grant",
        ledger,
        [],
        ["acme", now, "tx_g", ret, "purchase:cs_1:li", 1000, "", 0, "purchase", "", ""],
    )
    reply = await previous(
        redis,
        "revoke",
        ledger,
        [],
        ["acme", now, "tx_r", ret, "cs_1", 300, "unspent", '["purchase:cs_1:li"]', "refund"],
    )
    assert int(reply[1]) == 300
    r = await ledger.revoke(
        "acme", "cs_1", 500, buckets=["purchase:cs_1:li"], policy="unspent", version=1
    )
    assert (r.taken, r.target, r.balance) == (200, 500, 500)
    r = await ledger.revoke(
        "acme", "cs_1", 0, buckets=["purchase:cs_1:li"], policy="unspent", version=2
    )
    assert (r.given_back, r.balance) == (200, 700)
    assert await drain(make_writer(ledger, engine)) == 5
    assert await reconcile(redis, ledger.keys, engine) == []
    account = ledger.keys.for_account("acme").account

    async def clawbacks() -> dict[bytes, bytes]:
        raw: dict[bytes, bytes] = await redis.hgetall(account)  # type: ignore[assignment]
        return {k: v for k, v in raw.items() if k.startswith((b"cb", b"pc:"))}

    before = await clawbacks()
    await rebuild(redis, ledger.keys, engine, replace=True, now_ms=clock.now, retention_ms=ret)
    assert await clawbacks() == before
    assert (await ledger.balance("acme")).balance == 700


async def test_a_record_of_the_previous_scripts_is_never_voided(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    """It lists no attempts (the previous scripts had no tokens): one of them may have
    delivered its 200, so a void of a lost replay of it keeps the charge, and a replay with a
    token records nothing on it."""
    tx = await populate(redis, ledger, clock)
    key = ledger.keys.idempotency("acme", "r1")
    before = await redis.get(key)
    r = await ledger.deduct("acme", 3, "r1", description="chat")
    assert isinstance(r, Allowed) and r.replayed and r.transaction_id == tx
    assert await redis.get(key) == before
    void = Void("acme", "r1", "t1", 3, request_digest("", "", "chat", "", ""), 0)
    assert await send_void(ledger, void) == "kept"
    assert await redis.get(key) == before
    assert (await ledger.balance("acme")).balance == 97


async def test_a_previous_account_takes_a_spending_limit_that_survives_rebuild(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """Accounts and pending entries of the previous scripts have no spending limit: one set
    today counts from then, is enforced, reaches SQL with the old entries, and rebuild restores
    it with what was spent."""
    await populate(redis, ledger, clock)
    await ledger.update_account("acme", spend_limit=SpendLimit(10, "month"))
    assert isinstance(await ledger.deduct("acme", 6, "r2"), Allowed)  # the old 3 do not count
    refused = await ledger.deduct("acme", 5, "r3")
    assert isinstance(refused, SpendLimited) and refused.window.spent == 6
    assert await drain(make_writer(ledger, engine)) == 5
    assert await reconcile(redis, ledger.keys, engine) == []
    await rebuild(
        redis,
        ledger.keys,
        engine,
        replace=True,
        now_ms=clock.now,
        retention_ms=ledger.retention_ms,
    )
    spend = (await ledger.balance("acme")).spend
    assert spend is not None and spend.spent == 6 and spend.limit == SpendLimit(10, "month")
    assert isinstance(await ledger.deduct("acme", 5, "r4"), SpendLimited)
    assert isinstance(await ledger.deduct("acme", 4, "r5"), Allowed)


async def test_a_hold_taken_before_the_upgrade_settles_above_it_and_survives_rebuild(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """A hold record and its entry are as the previous release wrote them (hold.lua did not
    change; no `uncovered`), the hold's entry still pending: settling it above its amount
    works, reaches SQL with the old entries (credit_holds.uncovered, Alembic 0008), and a
    rebuild keeps the settle's replay and conflict."""
    await populate(redis, ledger, clock)
    await ledger.hold("acme", "h", 10, 60_000)
    raw = await redis.hget(ledger.keys.for_account("acme").holds, "h")
    assert raw is not None and b"uncovered" not in raw
    settled = await ledger.settle("acme", "h", 120)  # 10 held + the 87 left; 23 not covered
    assert (settled.charged, settled.uncovered, settled.balance) == (97, 23, 0)
    assert await drain(make_writer(ledger, engine)) == 5
    assert await reconcile(redis, ledger.keys, engine) == []
    await rebuild(
        redis,
        ledger.keys,
        engine,
        replace=True,
        now_ms=clock.now,
        retention_ms=ledger.retention_ms,
    )
    again = await ledger.settle("acme", "h", 120)
    assert again.replayed and (again.transaction_id, again.uncovered) == (
        settled.transaction_id,
        23,
    )


async def test_a_previous_account_goes_on_a_plan_renews_and_survives_rebuild(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """An account of the previous scripts (no plan fields; its entries still pending) takes a
    plan: its allowance is issued at once and renewed at the boundary, the old and new
    entries reach SQL together, and a rebuild keeps the next renewal (issued once)."""
    await populate(redis, ledger, clock)
    await define(redis, ledger.keys, "daily", 10, "day")
    config = await ledger.update_account("acme", plan="daily")
    assert config.plan == "daily"
    assert (await ledger.balance("acme")).balance == 97 + 10
    clock.advance(DAY)
    assert (await ledger.balance("acme")).balance == 97 + 10  # reset: the old 10 expired
    assert await drain(make_writer(ledger, engine)) > 5
    assert await reconcile(redis, ledger.keys, engine) == []
    await rebuild(
        redis,
        ledger.keys,
        engine,
        replace=True,
        now_ms=clock.now,
        retention_ms=ledger.retention_ms,
    )
    assert (await ledger.balance("acme")).balance == 107  # not issued again
    clock.advance(DAY)
    assert (await ledger.balance("acme")).balance == 107  # the next day's, once


async def test_tokens_and_audit_entries_join_pending_previous_entries_and_survive_rebuild(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """A Redis of the previous release (no tokens hash, no audit head; its entries still
    pending): a token made and rotated and an audit entry appended after the upgrade reach SQL
    with the old entries, reconcile is clean, the trail verifies, and after a FLUSHALL and
    rebuild the token still verifies."""
    await populate(redis, ledger, clock)
    tokens = Tokens(ledger)
    record, _ = await tokens.create("app", ["read"])
    _, secret = await tokens.rotate(record.id, 60_000)
    await AuditLog(redis, ledger.keys, 5.0).append(
        AuditEntry(
            clock.now,
            "bootstrap:admin",
            "admin",
            "req-1",
            "token.rotate",
            None,
            record.id,
            "upgrade",
            None,
            {"token": "***"},
        )
    )
    assert await drain(make_writer(ledger, engine)) >= 6
    assert await reconcile(redis, ledger.keys, engine) == []
    rows = await walk(engine)
    assert [r.body["action"] for r in rows] == ["token.rotate"]
    assert verify(rows, None) == []
    await redis.flushall()
    await rebuild(
        redis,
        ledger.keys,
        engine,
        replace=True,
        now_ms=clock.now,
        retention_ms=ledger.retention_ms,
    )
    cache = TokenCache(Tokens(ledger), clock, worker="after")
    await cache.refresh()
    caller = cache.verify(secret.encode())
    assert caller is not None and caller.token_id == record.id


async def test_keys_of_before_idempotent_creation_keep_working_and_replays_survive_rebuild(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """apikey.lua's create took no idempotency key before: keys made that way (the same
    record, the same fields) are listed, usable and revocable next to an idempotent create; a
    rebuild from SQL leaves the creation's record (kept apart from the check's ``i:`` records)
    and the replay still answers the same key."""
    await populate(redis, ledger, clock)
    keys = ApiKeys(ledger)
    old, old_secret = await keys.create("acme", name="before")  # the previous call's shape
    new, secret = await keys.create("acme", name="portal", idempotency_key="ui-1")
    assert secret is not None
    await drain(make_writer(ledger, engine))
    assert await reconcile(redis, ledger.keys, engine) == []
    await rebuild(
        redis,
        ledger.keys,
        engine,
        replace=True,
        now_ms=clock.now,
        retention_ms=ledger.retention_ms,
    )
    again, none = await keys.create("acme", name="portal", idempotency_key="ui-1")
    assert none is None and again.key_id == new.key_id
    assert {k.key_id for k in await keys.list("acme")} == {old.key_id, new.key_id}
    ident = await keys.resolve(old_secret)
    assert ident is not None and ident.key_id == old.key_id
    r = await ledger.deduct("acme", 1, "r9", key_id=old.key_id)
    assert isinstance(r, Allowed)
    await keys.revoke(old.key_id)
