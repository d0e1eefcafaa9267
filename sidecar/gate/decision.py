"""The proxy-facing decision, shared by every proxy mode: may this request go ahead?

One call: find the API key (``Authorization: Bearer`` or ``X-API-Key``), price the route,
and run the deduct script with the key id, the route's rate limit and the proxy's request
id as idempotency key. A retry of the same request (same key, method, URI and cost) within
the replay window is answered as the first was and charged once; the same request id on
any other request is a conflict (409), never a free pass. The result is an
:class:`Outcome` that each proxy mode renders in the form its proxy understands.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sidecar.asciiint import parse_ascii_int
from sidecar.errors import IdempotencyConflict, InvalidInput, StoreUnavailable
from sidecar.gate.pricing import Pricing
from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.results import (
    Allowed,
    Insufficient,
    RateLimited,
    RateState,
    Revoked,
    SpendLimited,
    SpendWindow,
)
from sidecar.ledger.units import MAX_CREDITS
from sidecar.runtime import metrics

log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
DESCRIPTION_MAX = 2048  # bytes, as sidecar/lua/deduct.lua accepts

FailurePolicy = Literal["fail_closed", "fail_open"]


@dataclass(slots=True)
class Outcome:
    status: int  # what the client should get: 200, 400, 401, 402, 403, 409, 429 or 503
    reason: str
    account: str = ""
    balance: int | None = None
    cost: int | None = None
    required: int | None = None
    transaction_id: str = ""
    retry_after_ms: int | None = None
    shadow_status: int | None = None  # shadow mode: the status it would have had
    replayed: bool = False  # allowed as the replay of an earlier request (charged then)
    spend: SpendWindow | None = None  # a 402 over a spending limit: the limit and its window
    dry_run: bool = False  # X-Credits-Dry-Run: what the check would get; nothing changed
    rate: RateState | None = None  # allowed: what is left of the tightest rate limiter
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.status == 200


@dataclass(slots=True)
class GateStats:
    fail_open: int = 0
    shadow_denials: int = 0


class Gate:
    def __init__(
        self,
        ledger: Ledger,
        api_keys: ApiKeys,
        pricing: Pricing,
        *,
        request_id_header: str = "X-Request-Id",
        trust_cost_header: bool = False,
        trust_dry_run_header: bool = False,
        failure_policy: FailurePolicy = "fail_closed",
        shadow: bool = False,
        replay_window_ms: int = 300_000,
    ) -> None:
        self.ledger = ledger
        self.api_keys = api_keys
        self.pricing = pricing
        self.request_id_header = request_id_header
        self.trust_cost_header = trust_cost_header
        self.failure_policy = failure_policy
        self.shadow = shadow
        self.replay_window_ms = replay_window_ms
        self.stats = GateStats()
        # Every request header decide() reads, with the reason a bad one is refused for: the
        # proxy layer passes decide() these only, each sent at most once (never "first wins").
        self.headers_read: dict[str, str] = {
            "Authorization": "invalid_header",
            "X-API-Key": "invalid_header",
            request_id_header: "invalid_header",
        }
        if trust_cost_header:
            self.headers_read["X-Credits-Cost"] = "invalid_cost_header"
        self.trust_dry_run_header = trust_dry_run_header
        if trust_dry_run_header:
            self.headers_read["X-Credits-Dry-Run"] = "invalid_header"

    async def decide(
        self, method: str, path: str, headers: Mapping[str, str], query: str = ""
    ) -> Outcome:
        """``path`` is canonical (sidecar/gate/paths.py); ``headers`` holds the ones named in
        :attr:`headers_read` that were sent, each checked by the proxy layer, keyed as named there.
        ``query`` (raw) is part of what a replay must repeat, and is never stored."""
        dry_run = False
        if self.trust_dry_run_header and "X-Credits-Dry-Run" in headers:
            flag = headers["X-Credits-Dry-Run"]
            if flag not in ("0", "1"):
                return self.refuse(
                    "invalid_header", "X-Credits-Dry-Run", "X-Credits-Dry-Run must be 0 or 1"
                )
            dry_run = flag == "1"
        outcome = await self._decide(method, path, headers, query, dry_run)
        outcome.dry_run = dry_run
        return self._shadowed(outcome)

    def refuse(self, reason: str, field: str, message: str) -> Outcome:
        """A request the proxy layer could not read (sidecar/http/proxy.py): 400, nothing
        reaches Redis; in shadow mode allowed like every other denial."""
        return self._shadowed(Outcome(400, reason, extra={"field": field, "message": message}))

    def _shadowed(self, outcome: Outcome) -> Outcome:
        if self.shadow and not outcome.allowed:
            self.stats.shadow_denials += 1
            outcome.shadow_status, outcome.status = outcome.status, 200
        return outcome

    async def _decide(
        self, method: str, path: str, headers: Mapping[str, str], query: str, dry_run: bool
    ) -> Outcome:
        key = _presented_key(headers)
        if not key:
            return Outcome(401, "missing_api_key")
        rule = self.pricing.match(method, path)
        if rule.cost is None:
            return Outcome(403, "route_denied")
        cost = rule.cost
        if self.trust_cost_header and "X-Credits-Cost" in headers:
            try:
                cost = parse_ascii_int(headers["X-Credits-Cost"], 0, MAX_CREDITS)
            except ValueError as e:
                problem = {"field": "X-Credits-Cost", "message": f"X-Credits-Cost {e}"}
                return Outcome(400, "invalid_cost_header", extra=problem)
        request_id = headers.get(self.request_id_header, "")
        if not request_id:
            request_id = "gen-" + uuid.uuid4().hex  # no id from the proxy: no retry safety
        elif not _REQUEST_ID.fullmatch(request_id):
            # Never replaced by a fresh one: the client's retries would each be charged.
            name = self.request_id_header
            problem = {
                "field": name,
                "message": f"{name} must be 1-128 characters of [A-Za-z0-9._:-]",
            }
            return Outcome(400, "invalid_header", extra=problem)
        try:
            ident = await self.api_keys.resolve(key)
            if ident is None:
                return Outcome(401, "invalid_api_key")
            r = await self.ledger.deduct(
                ident.account,
                cost,
                request_id,
                description=describe(method, path),
                key_id=ident.key_id,
                route=rule.name,
                route_limit=rule.rate_limit,
                replay_window_ms=self.replay_window_ms,
                # a digest: the query may carry secrets, and only its identity matters here
                request=hashlib.sha256(query.encode()).hexdigest()[:32] if query else "",
                # answered 503 (fail_closed) is never charged; fail_open and shadow mode
                # answer 200 instead, so a charge the call may have made stays
                void_if_lost=self.failure_policy == "fail_closed" and not self.shadow,
                dry_run=dry_run,
            )
        except IdempotencyConflict:
            return Outcome(409, "idempotency_conflict")
        except InvalidInput:
            return Outcome(400, "invalid_request")
        except StoreUnavailable:
            if self.failure_policy == "fail_open":
                self.stats.fail_open += 1
                metrics.FAIL_OPEN.inc()
                # The path only: a query string can carry an API key.
                log.warning(
                    "credit store unavailable: failing open for %s %s",
                    method,
                    path.partition("?")[0],
                )
                return Outcome(200, "fail_open")
            return Outcome(503, "store_unavailable")
        if isinstance(r, Allowed):
            return Outcome(
                200,
                "allowed",
                ident.account,
                r.balance,
                r.cost,
                transaction_id=r.transaction_id,
                replayed=r.replayed,
                rate=r.rate,
            )
        if isinstance(r, Insufficient):
            return Outcome(
                402, "insufficient_credits", ident.account, r.balance, cost, required=r.required
            )
        if isinstance(r, RateLimited):
            return Outcome(429, "rate_limited", ident.account, retry_after_ms=r.retry_after_ms)
        if isinstance(r, SpendLimited):
            return Outcome(402, r.reason, ident.account, cost=cost, required=cost, spend=r.window)
        assert isinstance(r, Revoked)
        return Outcome(401, "invalid_api_key")


def describe(method: str, uri: str) -> str:
    """The usage's description, ``METHOD URI``: what a replay is compared by (with the key id,
    the route and the cost), so a URI too long for it keeps a digest of the whole in its place."""
    text = f"{method} {uri}"
    raw = text.encode()
    if len(raw) <= DESCRIPTION_MAX:
        return text
    digest = hashlib.sha256(raw).hexdigest()[:32]
    head = raw[: DESCRIPTION_MAX - 40].decode(errors="ignore")
    return f"{head}...#{digest}"


def _presented_key(headers: Mapping[str, str]) -> str:
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("X-API-Key", "").strip()
