"""Every Redis key name the sidecar uses is built here, and nowhere else.

All keys of one account share one ``{hash tag}``: the tag of the account's shard. The
shard also owns an outbox stream, an events stream and a due-deadlines zset, so one
script call touches one Redis Cluster slot. The shard count is fixed per deployment:
changing it moves accounts to other tags.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

PREFIX = "cs"


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """The keys every ledger script receives first (KEYS[1..7], see sidecar/lua/_lib.lua)."""

    account: str
    order: str
    deadlines: str
    due: str
    outbox: str
    holds: str
    plans: str  # the shard's plans (docs/plans.md): read when the account is on a plan

    def common(self) -> list[str]:
        return [
            self.account,
            self.order,
            self.deadlines,
            self.due,
            self.outbox,
            self.holds,
            self.plans,
        ]


class KeySpace:
    """Builds key names for a deployment with a given number of shards."""

    def __init__(self, shards: int = 1) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.shards = shards

    def shard_of(self, account: str) -> int:
        return zlib.crc32(account.encode()) % self.shards

    @staticmethod
    def _tag(shard: int) -> str:
        return f"{PREFIX}:{{{shard}}}"

    def for_account(self, account: str) -> AccountKeys:
        shard = self.shard_of(account)
        t = self._tag(shard)
        return AccountKeys(
            account=f"{t}:a:{account}",
            order=f"{t}:o:{account}",
            deadlines=f"{t}:d:{account}",
            due=self.due(shard),
            outbox=self.outbox(shard),
            holds=f"{t}:h:{account}",
            plans=self.plans(shard),
        )

    @staticmethod
    def bucket_meta_field(bucket_id: str) -> str:
        """The account hash's field holding a bucket's static record (sidecar/lua/_lib.lua
        add_bucket): kept for good, also once the bucket is spent or expired."""
        return f"m:{bucket_id}"

    def account_prefix(self, shard: int) -> str:
        """What every account hash name of ``shard`` starts with (for scans)."""
        return f"{self._tag(shard)}:a:"

    # Ids may contain ':' but never '/', so '/' keeps two-id keys unambiguous: account "a"
    # with key "b:c" and account "a:b" with key "c" must not share a record.
    def idempotency(self, account: str, key: str) -> str:
        return f"{self._tag(self.shard_of(account))}:i:{account}/{key}"

    def usage(self, account: str, transaction_id: str) -> str:
        return f"{self._tag(self.shard_of(account))}:u:{account}/{transaction_id}"

    def idempotency_glob(self, account: str) -> str:
        """SCAN MATCH pattern of every idempotency record of ``account`` (no other account's)."""
        return _glob_escape(self.idempotency(account, "")) + "*"

    def usage_glob(self, account: str) -> str:
        """SCAN MATCH pattern of every usage record of ``account`` (no other account's)."""
        return _glob_escape(self.usage(account, "")) + "*"

    def api_keys(self, account: str) -> str:
        """Hash: key id -> the key's JSON record (never the key itself)."""
        return f"{self._tag(self.shard_of(account))}:k:{account}"

    def key_idempotency(self, account: str, key: str) -> str:
        """String: the key an API-key creation with idempotency key ``key`` made (apikey.lua);
        apart from ``idempotency`` (a rebuild from SQL replaces those: these are not in SQL)."""
        return f"{self._tag(self.shard_of(account))}:ki:{account}/{key}"

    # Global (one slot): read only on an in-process cache miss, or by the admin API.
    @staticmethod
    def api_key_index() -> str:
        """Hash: SHA-256 of a key -> "<account>/<key id>"."""
        return f"{PREFIX}:keys:by-hash"

    @staticmethod
    def api_key_accounts() -> str:
        """Hash: key id -> account."""
        return f"{PREFIX}:keys:by-id"

    def outbox(self, shard: int) -> str:
        return f"{self._tag(shard)}:outbox"

    def dead_letters(self, shard: int) -> str:
        """Stream of outbox entries the SQL writer gave up on (with the error)."""
        return f"{self._tag(shard)}:outbox:dead"

    def writer_lease(self, shard: int) -> str:
        """String: token of the writer that owns the shard's outbox."""
        return f"{self._tag(shard)}:outbox:writer"

    def ready_probe(self, shard: int) -> str:
        """String: written by GET /readyz to prove the shard's Redis accepts writes."""
        return f"{self._tag(shard)}:ready"

    def events(self, shard: int) -> str:
        return f"{self._tag(shard)}:events"

    def events_for(self, account: str) -> str:
        return self.events(self.shard_of(account))

    def due(self, shard: int) -> str:
        return f"{self._tag(shard)}:due"

    def plan_stamps(self, shard: int) -> str:
        """Hash: the stamps that order concurrent plan changes (sidecar/lua/plan.lua); only
        plan.lua reads it, the account scripts never do."""
        return f"{self._tag(shard)}:plans:stamps"

    def tokens(self) -> str:
        """Hash on shard 0: the sidecar's own API tokens, id -> record, and ``~v`` their
        version (sidecar/lua/token.lua; docs/tokens.md)."""
        return f"{self._tag(0)}:tokens"

    def token_workers(self) -> str:
        """Hash on shard 0: each serving process -> the tokens version it has applied and when
        it last said so ("<version>:<ms>"); a change waits for the live ones to apply it."""
        return f"{self._tag(0)}:tokens:workers"

    def token_use(self) -> str:
        """Hash on shard 0: token id -> when it was last used (ms), written now and then."""
        return f"{self._tag(0)}:tokens:used"

    def audit_head(self) -> str:
        """String on shard 0: the audit trail's last (seq:hash) as the writer appended it to
        SQL (docs/audit.md): ``audit verify`` finds rows deleted from the end by it."""
        return f"{self._tag(0)}:audit:head"

    def portal_session(self, session_id: str) -> str:
        """String on shard 0: a customer-portal session's record (JSON), expiring with it
        (sidecar/lua/portal.lua; docs/portal.md)."""
        return f"{self._tag(0)}:portal:session:{session_id}"

    def portal_epochs(self) -> str:
        """Hash on shard 0: account (or ``*``) -> how many times its portal sessions were all
        revoked; a session made before the last revocation is void."""
        return f"{self._tag(0)}:portal:epochs"

    def plans(self, shard: int) -> str:
        """Hash: the plans, as the shard's scripts read them (docs/plans.md)."""
        return f"{self._tag(shard)}:plans"


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)
