"""API keys: an account owns many (its credits are pooled across them).

A key is shown once, at creation; Redis keeps only its SHA-256 (in a global index that
maps the hash to account and key id) and a record without the secret. The hot path
resolves a presented key through an in-process cache, so the common case costs no
extra round trip. The cache never has to be invalidated for correctness: the deduct
script itself refuses a key that is no longer active on its account.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, overload

import orjson
from cachetools import LRUCache, TTLCache

from sidecar.errors import IdempotencyConflict, UnknownAccount, UnknownKey
from sidecar.ledger import replies, windows
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.redis_calls import (
    store_call,
)
from sidecar.ledger.results import (
    RateLimit,
    SpendLimit,
    SpendWindow,
)

KEY_PREFIX = "csk_"


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    account: str
    key_id: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    account: str
    name: str
    prefix: str
    created_at: int
    rate_limit: RateLimit | None
    revoked_at: int | None
    spend_limit: SpendLimit | None = None
    spend: SpendWindow | None = None  # the limit's current window (listings)

    @classmethod
    def from_record(cls, raw: bytes | str, spend: SpendWindow | None = None) -> KeyInfo:
        r: dict[str, Any] = orjson.loads(raw)
        rl = r.get("rate_limit")
        return cls(
            key_id=r["key_id"],
            account=r["account"],
            name=r["name"],
            prefix=r["prefix"],
            created_at=int(r["created_at"]),
            rate_limit=RateLimit(rl["requests"], rl["period_ms"], rl["burst"]) if rl else None,
            revoked_at=int(r["revoked_at"]) if r.get("revoked_at") else None,
            spend_limit=windows.limit_from_json(r.get("spend_limit")),
            spend=spend,
        )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_record(
    key_id: str,
    account: str,
    *,
    name: str,
    prefix: str,
    created_at: int,
    rate_limit: RateLimit | None,
    digest: str,
    spend_limit: SpendLimit | None = None,
) -> dict[str, Any]:
    """A key's stored record (apikey.lua keeps it as given; a revocation adds revoked_at, a
    limit change sets spend_limit)."""
    record = {
        "key_id": key_id,
        "account": account,
        "name": name,
        "prefix": prefix,
        "created_at": created_at,
        "rate_limit": (
            {
                "requests": rate_limit.requests,
                "period_ms": rate_limit.period_ms,
                "burst": rate_limit.burst,
            }
            if rate_limit
            else None
        ),
        "hash": digest,
    }
    if spend_limit is not None:
        record["spend_limit"] = windows.limit_to_json(spend_limit)
    return record


def rate_spec(rate_limit: RateLimit | None) -> str:
    """A key's rate limit as the account hash's k:<key id> field holds it ('' = none)."""
    return f"{rate_limit.requests}:{rate_limit.period_ms}:{rate_limit.burst}" if rate_limit else ""


class ApiKeys:
    """Creates, lists, revokes and resolves API keys."""

    def __init__(self, ledger: Ledger, *, cache_size: int = 100_000) -> None:
        self.ledger = ledger
        self.redis = ledger.redis
        self.keys = ledger.keys
        self._known: LRUCache[str, KeyIdentity] = LRUCache(cache_size)
        # Unknown keys are remembered briefly so a flood of bad keys stays off Redis.
        self._unknown: TTLCache[str, bool] = TTLCache(10_000, ttl=5)

    @overload
    async def create(
        self,
        account: str,
        *,
        name: str = "",
        rate_limit: RateLimit | None = None,
        spend_limit: SpendLimit | None = None,
        idempotency_key: None = None,
    ) -> tuple[KeyInfo, str]: ...

    @overload
    async def create(
        self,
        account: str,
        *,
        name: str = "",
        rate_limit: RateLimit | None = None,
        spend_limit: SpendLimit | None = None,
        idempotency_key: str | None,
    ) -> tuple[KeyInfo, str | None]: ...

    async def create(
        self,
        account: str,
        *,
        name: str = "",
        rate_limit: RateLimit | None = None,
        spend_limit: SpendLimit | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[KeyInfo, str | None]:
        """A new key for ``account``: its record, and the key itself (shown only now).

        With ``idempotency_key``, a repeat with the same parameters (name, rate limit, spending
        limit) within the idempotency retention creates nothing: it returns the key the first
        call made, as it is now, and None for the key itself (only its hash is kept, so it is
        never shown twice); with other parameters it is an IdempotencyConflict. Concurrent
        calls with one idempotency key make one key (apikey.lua decides atomically)."""
        key_id = "key_" + secrets.token_hex(8)
        key = f"{KEY_PREFIX}{secrets.token_urlsafe(32)}"
        digest = hash_key(key)
        record = key_record(
            key_id,
            account,
            name=name,
            prefix=key[:12],
            created_at=self.ledger.clock(),
            rate_limit=rate_limit,
            digest=digest,
            spend_limit=spend_limit,
        )
        script_keys = [self.keys.api_keys(account)]
        args: list[str | int] = [
            "create",
            key_id,
            orjson.dumps(record).decode(),
            rate_spec(rate_limit),
            spend_limit.spec() if spend_limit else "",
        ]
        if idempotency_key:
            script_keys.append(self.keys.key_idempotency(account, idempotency_key))
            args.append(idempotency_key)
        try:
            raw, replayed = replies.apikey_created(
                await self.ledger.run_script(self.ledger.scripts.apikey, account, script_keys, args)
            )
        except IdempotencyConflict as e:
            raise IdempotencyConflict(str(e), field="idempotency_key") from None
        found = orjson.loads(raw)
        if replayed and found.get("revoked_at"):
            return KeyInfo.from_record(raw), None  # (revoked since: not resolvable again)
        # The key is active on its account first, then resolvable: a crash in between
        # leaves an unusable key that can still be listed and revoked, or that a replay
        # (which writes these again) makes usable.
        key_id, digest = found["key_id"], found["hash"]
        await store_call(
            self.redis.hset(self.keys.api_key_accounts(), key_id, account), self.ledger.deadline_s
        )
        await store_call(
            self.redis.hset(self.keys.api_key_index(), digest, f"{account}/{key_id}"),
            self.ledger.deadline_s,
        )
        return KeyInfo.from_record(raw), None if replayed else key

    async def list(self, account: str) -> list[KeyInfo]:
        if not await store_call(
            self.redis.exists(self.keys.for_account(account).account), self.ledger.deadline_s
        ):
            raise UnknownAccount(f"account {account} does not exist")
        raw: dict[Any, Any] = await store_call(
            self.redis.hgetall(self.keys.api_keys(account)), self.ledger.deadline_s
        )
        records = [orjson.loads(v) for v in raw.values()]
        limited = [r["key_id"] for r in records if r.get("spend_limit")]
        states: list[Any] = []
        anchor: int | None = None
        if limited:
            # (an account on a plan counts its windows from the plan's anchor: pl, pan)
            *states, plan, pan = await store_call(
                self.redis.hmget(
                    self.keys.for_account(account).account,
                    [*(f"ks:{k}" for k in limited), "pl", "pan"],
                ),
                self.ledger.deadline_s,
            )
            anchor = int(pan) if plan and pan else None
        state_of = dict(zip(limited, states, strict=True))
        now = self.ledger.clock()
        infos = []
        for r in records:
            limit = windows.limit_from_json(r.get("spend_limit"))
            state = state_of.get(r["key_id"])
            spend = None
            if limit is not None and not r.get("revoked_at"):  # (a revoked key spends nothing)
                spend = windows.current(limit, state.decode() if state else None, now, anchor)
            infos.append(KeyInfo.from_record(orjson.dumps(r), spend))
        return sorted(infos, key=lambda k: (k.created_at, k.key_id))

    async def set_spend_limit(self, key_id: str, limit: SpendLimit | None) -> KeyInfo:
        """Sets (None: removes) a key's spending limit; the same window keeps what was spent."""
        account = await self._account_of(key_id)
        raw = replies.apikey(
            await self.ledger.run_script(
                self.ledger.scripts.apikey,
                account,
                [self.keys.api_keys(account)],
                ["limit", key_id, limit.spec() if limit else ""],
            )
        )
        return KeyInfo.from_record(raw)

    async def _account_of(self, key_id: str) -> str:
        account = await store_call(
            self.redis.hget(self.keys.api_key_accounts(), key_id), self.ledger.deadline_s
        )
        if account is None:
            raise UnknownKey(f"key {key_id} does not exist")
        return str(account.decode())

    async def revoke(self, key_id: str) -> KeyInfo:
        account = await store_call(
            self.redis.hget(self.keys.api_key_accounts(), key_id), self.ledger.deadline_s
        )
        if account is None:
            raise UnknownKey(f"key {key_id} does not exist")
        account = account.decode()
        raw = replies.apikey(
            await self.ledger.run_script(
                self.ledger.scripts.apikey,
                account,
                [self.keys.api_keys(account)],
                ["revoke", key_id],
            )
        )
        digest = orjson.loads(raw)["hash"]
        await store_call(self.redis.hdel(self.keys.api_key_index(), digest), self.ledger.deadline_s)
        self._known.pop(digest, None)
        return KeyInfo.from_record(raw)

    async def resolve(self, key: str) -> KeyIdentity | None:
        """The account and key id of a presented key, or None when it is unknown.

        A revoked key may still resolve from another process's cache; the deduct script
        refuses it, so callers must pass the key id on to the ledger."""
        digest = hash_key(key)
        ident = self._known.get(digest)
        if ident is not None:
            return ident
        if digest in self._unknown:
            return None
        raw = await store_call(
            self.redis.hget(self.keys.api_key_index(), digest), self.ledger.deadline_s
        )
        if raw is None:
            self._unknown[digest] = True
            return None
        account, _, key_id = raw.decode().rpartition("/")
        ident = KeyIdentity(account, key_id)
        self._known[digest] = ident
        return ident
