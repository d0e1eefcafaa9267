"""Customer-portal sessions (docs/portal.md): the business's backend asks for one for an
account, sends its customer to the session's link; the customer's browser opens the link once
(it expires in minutes) and gets a session cookie for that account alone, lasting
``SIDECAR_PORTAL_SESSION_TTL_S``. Stripe's billing portal sessions work the same way.

A session lives in Redis (shard 0, sidecar/lua/portal.lua), which keeps only SHA-256s of the
link and of the session's secret. The link and the cookie both read ``<session id>.<secret>``:
the id finds the record, the secret proves the holder. Sessions are not in the SQL ledger: one
lost with Redis is opened again from the business's app.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import orjson
from redis.exceptions import NoScriptError

from sidecar.ledger.calls import Ledger
from sidecar.ledger.redis_calls import store_call

Section = Literal[
    "balance", "usage", "transactions", "buy", "auto_topup", "keys", "limits", "billing"
]
SECTIONS: tuple[Section, ...] = get_args(Section)
ID_LENGTH = 16
_ID_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split(credential: str) -> tuple[str, str] | None:
    """The session id and secret of a link's or cookie's ``<id>.<secret>``; None for anything
    else (checked before Redis sees it: a forged value costs no round trip)."""
    sid, dot, secret = credential.partition(".")
    if (
        not dot
        or len(sid) != ID_LENGTH
        or not all(c in _ID_ALPHABET for c in sid)
        or not 32 <= len(secret) <= 64
        or not all(c in _SECRET_ALPHABET for c in secret)
    ):
        return None
    return sid, secret


@dataclass(frozen=True, slots=True)
class PortalSession:
    """A session as stored (no secrets, only their hashes)."""

    id: str
    account: str
    return_url: str | None
    locale: str | None
    sections: tuple[Section, ...]
    created_at: int
    created_by: str  # the token that asked for it
    link_expires_at: int
    opened_at: int | None
    expires_at: int | None
    csrf: str
    secret_hash: str | None

    @classmethod
    def from_json(cls, raw: bytes | str) -> PortalSession:
        r: dict[str, Any] = orjson.loads(raw)
        sections = tuple(s for s in SECTIONS if s in str(r.get("sections") or "").split(","))
        return cls(
            id=r["id"],
            account=r["account"],
            return_url=r.get("return_url") or None,
            locale=r.get("locale") or None,
            sections=sections,
            created_at=int(r["created_at"]),
            created_by=str(r.get("created_by") or ""),
            link_expires_at=int(r["link_expires_at"]),
            opened_at=None if r.get("opened_at") is None else int(r["opened_at"]),
            expires_at=None if r.get("expires_at") is None else int(r["expires_at"]),
            csrf=r["csrf"],
            secret_hash=r.get("secret_hash") or None,
        )

    def proves(self, secret: str) -> bool:
        """Whether ``secret`` is this session's (constant time)."""
        return self.secret_hash is not None and hmac.compare_digest(_hash(secret), self.secret_hash)

    def csrf_ok(self, given: str) -> bool:
        # a header's bytes that are not UTF-8 arrive surrogate-escaped: kept, and never a match
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.csrf.encode())


@dataclass(frozen=True, slots=True)
class NewSession:
    session: PortalSession
    link: str  # <id>.<link secret>: the one thing that opens it, shown once


class PortalSessions:
    """Makes, opens, checks, ends and revokes portal sessions."""

    def __init__(self, ledger: Ledger, *, link_ttl_ms: int, session_ttl_ms: int) -> None:
        self.ledger = ledger
        self.keys = ledger.keys
        self.link_ttl_ms = link_ttl_ms
        self.session_ttl_ms = session_ttl_ms

    async def _run(self, session_id: str, mode: str, *args: str | int) -> Any:
        """portal.lua in ``mode`` now, with the deadline past which it changes nothing (the
        caller has answered 503 by then)."""
        script = self.ledger.scripts.portal
        keys = [self.keys.portal_session(session_id), self.keys.portal_epochs()]
        args = (mode, self.ledger.clock(), self.ledger.script_deadline(), *args)

        async def invoke() -> Any:
            try:
                return await script(keys=keys, args=list(args))
            except NoScriptError:  # flushed between the reload and the EVALSHA: EVAL cannot miss
                return await self.ledger.redis.eval(cast(str, script.script), 2, *keys, *args)

        return await store_call(invoke(), self.ledger.deadline_s)

    async def create(
        self,
        account: str,
        *,
        return_url: str | None,
        locale: str | None,
        sections: Sequence[Section],
        created_by: str,
    ) -> NewSession:
        """A new session for ``account`` (which the caller checked exists) and its link."""
        now = self.ledger.clock()
        session_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
        link_secret = secrets.token_urlsafe(32)
        record = {
            "id": session_id,
            "account": account,
            "return_url": return_url,
            "locale": locale,
            "sections": ",".join(dict.fromkeys(sections)),
            "created_at": now,
            "created_by": created_by,
            "link_hash": _hash(link_secret),
            "link_expires_at": now + self.link_ttl_ms,
            "opened_at": None,
            "expires_at": None,
            "csrf": secrets.token_urlsafe(32),
            "secret_hash": None,
        }
        raw = await self._run(session_id, "create", orjson.dumps(record).decode(), self.link_ttl_ms)
        return NewSession(PortalSession.from_json(raw), f"{session_id}.{link_secret}")

    async def open(self, link: str) -> tuple[PortalSession, str] | None:
        """The session a link opens and the cookie that now proves it (``<id>.<secret>``), or
        None: a link that is forged, used, expired or revoked (all alike to the holder)."""
        parts = split(link)
        if parts is None:
            return None
        sid, link_secret = parts
        secret = secrets.token_urlsafe(32)
        raw = await self._run(
            sid,
            "open",
            _hash(link_secret),
            _hash(secret),
            self.session_ttl_ms,
        )
        if not raw:
            return None
        return PortalSession.from_json(raw), f"{sid}.{secret}"

    async def get(self, cookie: str) -> PortalSession | None:
        """The live session a cookie proves, else None."""
        parts = split(cookie)
        if parts is None:
            return None
        sid, secret = parts
        raw = await self._run(sid, "get")
        if not raw:
            return None
        session = PortalSession.from_json(raw)
        return session if session.proves(secret) else None

    async def end(self, session: PortalSession) -> None:
        """Signs a session out (the caller proved it)."""
        await self._run(session.id, "end")

    async def revoke(self, account: str | None) -> int:
        """Voids every session of ``account`` (None: of every account), opened or not."""
        who = "*" if account is None else account
        # the counters' hash is the only key touched; the session key is any shard-0 name
        return int(await self._run("_", "revoke", who))
