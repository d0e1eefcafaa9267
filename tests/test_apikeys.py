"""API keys: shown once, stored only as SHA-256, resolved through an in-process cache, and
refused by the deduct script the moment they are revoked (even from a stale cache)."""

from __future__ import annotations

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
