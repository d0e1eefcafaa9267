"""Key naming: every key one script call touches hashes to one Redis Cluster slot."""

from __future__ import annotations

from redis.crc import key_slot

from sidecar.ledger.keyspace import KeySpace


def test_all_keys_of_an_account_share_one_slot_with_its_shard_streams() -> None:
    ks = KeySpace(shards=16)
    for account in ("acme", "user:42", "x.y-z_1"):
        keys = [
            *ks.for_account(account).common(),
            ks.idempotency(account, "req-1"),
            ks.usage(account, "tx_1"),
            ks.events_for(account),
        ]
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys


def test_accounts_spread_over_shards() -> None:
    ks = KeySpace(shards=8)
    shards = {ks.shard_of(f"acct-{i}") for i in range(200)}
    assert shards == set(range(8))


def test_one_shard_puts_everything_in_one_tag() -> None:
    ks = KeySpace()
    assert ks.for_account("a").outbox == ks.outbox(0) == "cs:{0}:outbox"


def test_per_request_keys_of_different_accounts_never_collide() -> None:
    """Ids may contain ':'; account "a" + key "b:c" and account "a:b" + key "c" stay apart."""
    ks = KeySpace()
    assert ks.idempotency("a", "b:c") != ks.idempotency("a:b", "c")
    assert ks.usage("a", "b:c") != ks.usage("a:b", "c")


def test_the_tokens_and_audit_keys_share_shard_0s_slot_with_its_outbox() -> None:
    """token.lua writes the tokens hash and appends to shard 0's outbox in one call; the
    processes' reports, last uses and the audit head live beside them (one Cluster slot)."""
    ks = KeySpace(shards=16)
    keys = [ks.tokens(), ks.token_workers(), ks.token_use(), ks.audit_head(), ks.outbox(0)]
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys
