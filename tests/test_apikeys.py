"""API keys: shown once, stored only as SHA-256, resolved through an in-process cache, and
refused by the deduct script the moment they are revoked (even from a stale cache)."""

from __future__ import annotations

import asyncio

import pytest

from sidecar import errors
from sidecar.ledger.apikeys import ApiKeys, hash_key
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.results import (
    Allowed,
    RateLimit,
    RateLimited,
    Revoked,
)
from sidecar.redis.client import RedisClient
from tests.conftest import FakeClock, snapshot


@pytest.fixture
async def apikeys(ledger: Ledger) -> ApiKeys:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 100)
    return ApiKeys(ledger)


async def test_key_is_stored_only_as_its_hash(apikeys: ApiKeys, redis: RedisClient) -> None:
    info, key = await apikeys.create("a", name="ci")
    assert key.startswith("csk_") and info.prefix == key[:12]
    dump = repr(await snapshot(redis))
    assert key not in dump and key[12:] not in dump
    assert hash_key(key) in dump


async def test_created_key_resolves_to_its_account(apikeys: ApiKeys) -> None:
    info, key = await apikeys.create("a")
    ident = await apikeys.resolve(key)
    assert ident is not None and (ident.account, ident.key_id) == ("a", info.key_id)
    assert await apikeys.resolve(key + "x") is None
    assert await apikeys.resolve("") is None


async def test_listing_shows_metadata_never_the_key(apikeys: ApiKeys, clock: FakeClock) -> None:
    a, key_a = await apikeys.create("a", name="one")
    clock.advance(1)
    b, _ = await apikeys.create("a", name="two", rate_limit=RateLimit(5, 1000, 5))
    listed = await apikeys.list("a")
    assert [k.key_id for k in listed] == [a.key_id, b.key_id]
    assert listed[1].rate_limit == RateLimit(5, 1000, 5)
    assert key_a not in repr(listed)


async def test_revoked_key_is_refused_at_once_even_from_a_stale_cache(
    apikeys: ApiKeys, ledger: Ledger
) -> None:
    info, key = await apikeys.create("a")
    other_process = ApiKeys(ledger)
    ident = await other_process.resolve(key)  # cached there
    assert ident is not None
    ok = await ledger.deduct("a", 1, "r1", key_id=ident.key_id)
    assert isinstance(ok, Allowed)
    revoked = await apikeys.revoke(info.key_id)
    assert revoked.revoked_at is not None
    assert await apikeys.resolve(key) is None
    stale = await other_process.resolve(key)
    assert stale == ident
    assert isinstance(await ledger.deduct("a", 1, "r2", key_id=stale.key_id), Revoked)
    assert (await ledger.balance("a")).balance == 99


async def test_revoking_twice_keeps_the_first_time_and_unknown_key_is_404(
    apikeys: ApiKeys,
) -> None:
    info, _ = await apikeys.create("a")
    first = await apikeys.revoke(info.key_id)
    again = await apikeys.revoke(info.key_id)
    assert first.revoked_at == again.revoked_at
    with pytest.raises(errors.UnknownKey):
        await apikeys.revoke("key_nope")


async def test_key_for_unknown_account_is_refused(apikeys: ApiKeys) -> None:
    with pytest.raises(errors.UnknownAccount):
        await apikeys.create("ghost")


async def test_a_key_cannot_spend_another_accounts_credits(
    apikeys: ApiKeys, ledger: Ledger
) -> None:
    """A key id is only active on its own account: presenting it for another is refused."""
    await ledger.configure_account("b")
    await ledger.grant("b", "g", 100)
    info, _ = await apikeys.create("a")
    assert isinstance(await ledger.deduct("b", 1, "r", key_id=info.key_id), Revoked)
    assert (await ledger.balance("b")).balance == 100


async def test_key_rate_limit_applies_per_key(apikeys: ApiKeys, ledger: Ledger) -> None:
    slow, _ = await apikeys.create("a", rate_limit=RateLimit(1, 1000, 1))
    fast, _ = await apikeys.create("a")
    assert isinstance(await ledger.deduct("a", 1, "r1", key_id=slow.key_id), Allowed)
    assert isinstance(await ledger.deduct("a", 1, "r2", key_id=slow.key_id), RateLimited)
    assert isinstance(await ledger.deduct("a", 1, "r3", key_id=fast.key_id), Allowed)


async def test_route_rate_limit_and_free_route(apikeys: ApiKeys, ledger: Ledger) -> None:
    route = RateLimit(1, 1000, 1)
    assert isinstance(await ledger.deduct("a", 1, "r1", route="images", route_limit=route), Allowed)
    assert isinstance(
        await ledger.deduct("a", 1, "r2", route="images", route_limit=route), RateLimited
    )
    free = await ledger.deduct("a", 0, "r3")
    assert isinstance(free, Allowed) and free.transaction_id == "" and free.balance == 99


async def test_listing_keys_of_unknown_account_is_refused(apikeys: ApiKeys) -> None:
    with pytest.raises(errors.UnknownAccount):
        await apikeys.list("ghost")


# -- idempotent creation -------------------------------------------------------------------


async def test_a_create_with_an_idempotency_key_replays_the_same_key_without_its_secret(
    apikeys: ApiKeys, ledger: Ledger, redis: RedisClient
) -> None:
    info, key = await apikeys.create("a", name="ci", idempotency_key="k-1")
    assert key is not None and key.startswith("csk_")
    again, secret = await apikeys.create("a", name="ci", idempotency_key="k-1")
    assert secret is None and again == info  # the same key; its secret is never shown twice
    assert [k.key_id for k in await apikeys.list("a")] == [info.key_id]
    # kept as long as the other idempotency records
    ttl = await redis.pttl(ledger.keys.key_idempotency("a", "k-1"))
    assert 0 < ttl <= ledger.retention_ms
    with pytest.raises(errors.IdempotencyConflict) as e:
        await apikeys.create("a", name="other", idempotency_key="k-1")
    assert e.value.field == "idempotency_key"
    with pytest.raises(errors.IdempotencyConflict):
        await apikeys.create(
            "a", name="ci", rate_limit=RateLimit(5, 1000, 5), idempotency_key="k-1"
        )
    # another idempotency key, or none, makes another key
    _, other = await apikeys.create("a", name="ci", idempotency_key="k-2")
    _, plain = await apikeys.create("a", name="ci")
    assert other and plain and len(await apikeys.list("a")) == 3


async def test_concurrent_creates_with_one_idempotency_key_make_one_key(
    apikeys: ApiKeys,
) -> None:
    results = await asyncio.gather(
        *(apikeys.create("a", name="n", idempotency_key="burst") for _ in range(20))
    )
    assert len({info.key_id for info, _ in results}) == 1
    secrets = [key for _, key in results if key is not None]
    assert len(secrets) == 1
    assert len(await apikeys.list("a")) == 1
    assert await apikeys.resolve(secrets[0]) is not None


async def test_idempotency_keys_are_per_account(apikeys: ApiKeys, ledger: Ledger) -> None:
    await ledger.configure_account("b")
    a, _ = await apikeys.create("a", idempotency_key="same")
    b, key_b = await apikeys.create("b", idempotency_key="same")
    assert a.key_id != b.key_id and key_b is not None and b.account == "b"


async def test_a_replay_after_a_revocation_answers_the_revoked_key_and_never_revives_it(
    apikeys: ApiKeys,
) -> None:
    info, key = await apikeys.create("a", idempotency_key="k")
    assert key is not None
    await apikeys.revoke(info.key_id)
    again, secret = await apikeys.create("a", idempotency_key="k")
    assert secret is None and again.key_id == info.key_id and again.revoked_at is not None
    assert await apikeys.resolve(key) is None


async def test_a_replay_completes_a_create_cut_short_and_a_lost_key_is_made_anew(
    apikeys: ApiKeys, ledger: Ledger, redis: RedisClient
) -> None:
    info, key = await apikeys.create("a", idempotency_key="k")
    assert key is not None
    # a crash after the script, before the key was resolvable
    await redis.hdel(ledger.keys.api_key_index(), hash_key(key))
    apikeys._unknown.clear()
    apikeys._known.clear()
    assert await apikeys.resolve(key) is None
    await apikeys.create("a", idempotency_key="k")
    apikeys._unknown.clear()  # (this process remembered it as unknown for a few seconds)
    ident = await apikeys.resolve(key)
    assert ident is not None and ident.key_id == info.key_id
    # the key's record is gone (Redis rebuilt without it): the record is ignored
    await redis.hdel(ledger.keys.api_keys("a"), info.key_id)
    fresh, secret = await apikeys.create("a", idempotency_key="k")
    assert secret is not None and fresh.key_id != info.key_id


async def test_a_bad_idempotency_key_is_refused_by_the_script(apikeys: ApiKeys) -> None:
    with pytest.raises(errors.InvalidInput) as e:
        await apikeys.create("a", idempotency_key="a b")
    assert e.value.field == "idempotency_key"
    assert await apikeys.list("a") == []
