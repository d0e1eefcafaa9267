"""The ledger's Lua scripts, shipped as package data of this package, and their loader: it
registers them once per Redis client.

Each script is ``sidecar/lua/_lib.lua`` followed by the script's own file; ``register_script``
keeps the SHA and reloads the script after a NOSCRIPT (script cache flush, restart).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from redis.commands.core import AsyncScript

from sidecar.redis.client import RedisClient

NAMES = (
    "account",
    "grant",
    "deduct",
    "hold",
    "close_hold",
    "refund",
    "balance",
    "expire",
    "apikey",
    "restore",
    "autotopup",
    "revoke",
    "void",
    "plan",
    "token",
)
# not prefixed with _lib.lua: they touch no account and need none of it
STANDALONE = ("lease", "restore_tokens", "token_workers", "portal")


@cache
def source(name: str) -> str:
    """The full text sent to Redis for script ``name``."""
    pkg = files("sidecar.lua")
    if name in STANDALONE:
        return (pkg / f"{name}.lua").read_text()
    if name not in NAMES:
        raise KeyError(name)
    return (pkg / "_lib.lua").read_text() + "\n" + (pkg / f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class Scripts:
    account: AsyncScript
    grant: AsyncScript
    deduct: AsyncScript
    hold: AsyncScript
    close_hold: AsyncScript
    refund: AsyncScript
    balance: AsyncScript
    expire: AsyncScript
    apikey: AsyncScript
    restore: AsyncScript
    autotopup: AsyncScript
    revoke: AsyncScript
    void: AsyncScript
    plan: AsyncScript
    token: AsyncScript
    lease: AsyncScript
    restore_tokens: AsyncScript
    token_workers: AsyncScript
    portal: AsyncScript

    @classmethod
    def register(cls, client: RedisClient) -> Scripts:
        return cls(**{name: client.register_script(source(name)) for name in NAMES + STANDALONE})
