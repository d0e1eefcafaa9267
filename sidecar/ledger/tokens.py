"""The sidecar's own API tokens (docs/tokens.md): named, scoped, rotated with a grace period,
revoked; distinct from the API keys customers call the business's API with.

A token is ``cst_<id>_<secret>``, shown once. Redis keeps only its SHA-256, in one record per
token in shard 0's tokens hash (sidecar/lua/token.lua, which also appends the kind=token outbox
entry the SQL ledger mirrors). Every serving process holds all records in memory and follows
their changes (sidecar/ledger/token_cache.py), so checking a token costs no round trip.

The two bootstrap tokens of the settings (``SIDECAR_ADMIN_TOKEN``, ``SIDECAR_SERVICE_TOKEN``)
are not stored: they are :class:`Caller`s with fixed scopes.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import orjson
from redis.exceptions import NoScriptError

from sidecar.errors import UnknownToken
from sidecar.ledger.arguments import new_transaction_id
from sidecar.ledger.calls import Ledger
from sidecar.ledger.redis_calls import store_call
from sidecar.redis.client import text as _text

log = logging.getLogger(__name__)

Scope = Literal["admin", "service", "read", "portal", "checkout"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
TOKEN_PREFIX = "cst_"  # noqa: S105 (the prefix, not a secret)
ID_LENGTH = 16
_ID_ALPHABET = string.ascii_lowercase + string.digits
MAX_GRACE_MS = 30 * 86_400_000
VERSION_FIELD = "~v"


def _int(v: bytes | str) -> int | None:
    """An integer of the tokens' bookkeeping hashes, None for what is not one."""
    try:
        return int(v)
    except ValueError:
        return None


def new_token(token_id: str | None = None) -> tuple[str, str]:
    """A token's id (a new one unless given: a rotation keeps it) and a new token for it
    (``cst_<id>_<secret>``, a secret of 256 random bits)."""
    token_id = token_id or "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def token_hash(token: bytes | str) -> str:
    """What Redis and SQL keep of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).hexdigest()


def token_id_of(token: bytes) -> str | None:
    """The id a presented token names (``cst_<id>_…``), or None if it is not of that form."""
    head = TOKEN_PREFIX.encode()
    if not token.startswith(head) or len(token) < len(head) + ID_LENGTH + 2:
        return None
    raw = token[len(head) : len(head) + ID_LENGTH]
    if token[len(head) + ID_LENGTH : len(head) + ID_LENGTH + 1] != b"_":
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if all(c in _ID_ALPHABET for c in text) else None


@dataclass(frozen=True, slots=True)
class Previous:
    hash: str
    expires: int  # ms: valid until then


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as token.lua stores it (no secret)."""

    id: str
    name: str
    scopes: frozenset[Scope]
    account_prefix: str | None
    hash: str
    previous: tuple[Previous, ...]
    created_at: int
    rotated_at: int | None
    revoked_at: int | None

    @classmethod
    def from_json(cls, raw: bytes | str) -> TokenRecord:
        r: dict[str, Any] = orjson.loads(raw)
        prev = r.get("previous") or []
        return cls(
            id=r["id"],
            name=r["name"],
            scopes=frozenset(cast(list[Scope], r["scopes"])),
            account_prefix=r.get("account_prefix"),
            hash=r["hash"],
            previous=tuple(Previous(p["hash"], int(p["expires"])) for p in prev),
            created_at=int(r["created_at"]),
            rotated_at=r.get("rotated_at"),
            revoked_at=r.get("revoked_at"),
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request to the sidecar's API: a stored token (``token_id``), or a bootstrap
    token of the settings (``token_id`` ``bootstrap:admin`` / ``bootstrap:service``)."""

    token_id: str
    name: str
    scopes: frozenset[Scope]
    account_prefix: str | None = None

    def allows(self, scopes: Sequence[Scope]) -> bool:
        """Whether it holds one of ``scopes`` (admin holds them all)."""
        return "admin" in self.scopes or any(s in self.scopes for s in scopes)

    def may_touch(self, account: str) -> bool:
        return self.account_prefix is None or account.startswith(self.account_prefix)


BOOTSTRAP_ADMIN = Caller("bootstrap:admin", "SIDECAR_ADMIN_TOKEN", frozenset({"admin"}))
# what the service token could call before scopes existed: checks, holds, usage, checkouts,
# the package catalogue
BOOTSTRAP_SERVICE = Caller(
    "bootstrap:service", "SIDECAR_SERVICE_TOKEN", frozenset({"service", "checkout"})
)


class Tokens:
    """Creates, rotates, revokes and reads the stored tokens (the admin API's ``/v1/tokens``)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.redis = ledger.redis
        self.keys = ledger.keys

    async def _run(self, token_id: str, mode: str, args: Sequence[str | int]) -> TokenRecord:
        ledger = self.ledger
        script = ledger.scripts.token
        keys = [self.keys.tokens(), self.keys.outbox(0)]
        argv: list[str | int] = [
            token_id,
            ledger.clock(),
            new_transaction_id(),
            ledger.retention_ms,
            ledger.script_deadline(),
            mode,
            *args,
        ]

        async def invoke() -> Any:
            try:
                return await script(keys=keys, args=argv)
            except NoScriptError:  # flushed between the reload and the EVALSHA: EVAL cannot miss
                return await self.redis.eval(cast(str, script.script), 2, *keys, *argv)

        reply = await store_call(invoke(), ledger.deadline_s)
        return TokenRecord.from_json(reply[0])

    async def create(
        self, name: str, scopes: Sequence[Scope], account_prefix: str | None = None
    ) -> tuple[TokenRecord, str]:
        """A new token and its secret (shown once)."""
        token_id, token = new_token()
        scope_json = orjson.dumps(list(dict.fromkeys(scopes))).decode()
        record = await self._run(
            token_id, "create", [name, scope_json, account_prefix or "", token_hash(token)]
        )
        return record, token

    async def rotate(self, token_id: str, grace_ms: int) -> tuple[TokenRecord, str]:
        """A new secret for ``token_id``; the one it replaces stays valid for ``grace_ms``."""
        _, token = new_token(token_id)
        record = await self._run(token_id, "rotate", [token_hash(token), grace_ms])
        return record, token

    async def revoke(self, token_id: str) -> TokenRecord:
        return await self._run(token_id, "revoke", [])

    async def get(self, token_id: str) -> TokenRecord:
        raw = await store_call(
            self.redis.hget(self.keys.tokens(), token_id), self.ledger.deadline_s
        )
        if raw is None or token_id == VERSION_FIELD:
            raise UnknownToken(f"token {token_id} does not exist")
        return TokenRecord.from_json(raw)

    async def all(self) -> tuple[int, dict[str, TokenRecord]]:
        """The version and every token, by id. A record that cannot be read is left out (and
        logged): its token is refused, and one bad record does not stop every process from
        following the others (a revocation never applied) nor every change from answering."""
        raw: dict[Any, Any] = await store_call(
            self.redis.hgetall(self.keys.tokens()), self.ledger.deadline_s
        )
        version = 0
        found: dict[str, TokenRecord] = {}
        for k, v in raw.items():
            key = _text(k)
            if key == VERSION_FIELD:
                version = int(v)
                continue
            try:
                found[key] = TokenRecord.from_json(v)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                log.error("token %r: unreadable record left out (%s: %s)", key, type(e).__name__, e)
        return version, found

    async def last_used(self) -> dict[str, int]:
        raw: dict[Any, Any] = await store_call(
            self.redis.hgetall(self.keys.token_use()), self.ledger.deadline_s
        )
        out = {_text(k): _int(v) for k, v in raw.items()}
        return {k: v for k, v in out.items() if v is not None}  # (others not this version's)

    async def version(self) -> int:
        v = await store_call(
            self.redis.hget(self.keys.tokens(), VERSION_FIELD), self.ledger.deadline_s
        )
        return int(v or 0)

    async def _workers_script(self, *args: str | int) -> Any:
        script = self.ledger.scripts.token_workers
        keys = [self.keys.token_workers()]

        async def invoke() -> Any:
            try:
                return await script(keys=keys, args=list(args))
            except NoScriptError:  # flushed between the reload and the EVALSHA: EVAL cannot miss
                return await self.redis.eval(cast(str, script.script), 1, *keys, *args)

        return await store_call(invoke(), self.ledger.deadline_s)

    async def report_applied(self, worker: str, version: int) -> None:
        """``worker`` serves with ``version`` of the tokens, and is alive now (Redis's clock:
        sidecar/lua/token_workers.lua)."""
        await self._workers_script("report", worker, version)

    async def workers(self) -> tuple[int, dict[str, tuple[int, int]]]:
        """Redis's time now (ms), and each serving process's report: the version it applied,
        and when it last said so, on that same clock."""
        reply = await self._workers_script("read")
        now, flat = int(reply[0]), reply[1:]
        out: dict[str, tuple[int, int]] = {}
        for k, v in zip(flat[::2], flat[1::2], strict=True):
            version, _, at = v.partition(b":" if isinstance(v, bytes) else ":")
            report = (_int(version), _int(at))
            if report[0] is not None and report[1] is not None:  # else not this version's
                out[_text(k)] = (report[0], report[1])
        return now, out

    async def forget_workers(self, workers: Sequence[str]) -> None:
        if workers:
            await store_call(
                self.redis.hdel(self.keys.token_workers(), *workers), self.ledger.deadline_s
            )

    async def record_use(self, used: dict[str, int]) -> None:
        if used:
            await store_call(
                self.redis.hset(self.keys.token_use(), mapping=cast(Any, used)),
                self.ledger.deadline_s,
            )
