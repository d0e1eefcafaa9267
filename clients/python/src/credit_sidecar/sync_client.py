"""The sync client, :class:`Client`, on httpx: every call, sent as credit_sidecar.client's
docstring says (the compatibility check, the attempts within the deadline, which are repeated)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx

from credit_sidecar import _calls as calls
from credit_sidecar import errors
from credit_sidecar._base import RETRY_STATUSES, Base, FailurePolicy, json_body
from credit_sidecar._wire import HttpxWire, NoAnswer
from credit_sidecar.holding import Holding, quietly
from credit_sidecar.models import (
    AccountSettings,
    Authorized,
    Balance,
    CheckResult,
    Granted,
    Hold,
    HoldClosed,
    Key,
    KeyCreated,
    Plan,
    PortalSession,
    Token,
    TokenCreated,
    UsageRecorded,
)
from credit_sidecar.version import SUPPORTED_SIDECAR

T = TypeVar("T")
JSON = Mapping[str, Any]


class Client(Base):
    """The sync client. ``token``: a service token for the service calls, an admin (or scoped)
    token for the admin calls. Use it as a context manager, or ``close()`` it."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 2.0,
        deadline: float = 5.0,
        max_attempts: int = 3,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
        failure_policy: FailurePolicy = "fail_closed",
        verify_sidecar: bool = True,
        supported_sidecar: tuple[str, str] = SUPPORTED_SIDECAR,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            token,
            timeout=timeout,
            deadline=deadline,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            failure_policy=failure_policy,
            verify_sidecar=verify_sidecar,
            supported_sidecar=supported_sidecar,
        )
        self._wire = HttpxWire(self.base_url, transport)

    def close(self) -> None:
        self._wire.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: calls.Call[T]) -> T:
        if self.verify_sidecar and self._operations is None and call.op != "openapi":
            self.check_compatibility()
        self._require(call)
        end = time.monotonic() + self.deadline
        args = self._request_args(call)
        attempt = 0
        while True:
            attempt += 1
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise errors.SidecarUnavailable(
                    f"{call.method} {call.template}: "
                    f"no answer within the {self.deadline}s deadline",
                    code="sidecar_unavailable",
                )
            try:
                response = self._wire.request(
                    call.method, call.path, limit_s=min(self.timeout, remaining), **args
                )
            except NoAnswer as e:
                failure: errors.CreditSidecarError = self._unavailable(e, call)
                if not self._retryable(e, call):
                    raise failure from e
            else:
                if response.status not in RETRY_STATUSES or not call.retry:
                    return self._result(call, response)
                failure = errors.from_response(
                    response.status, json_body(response), response.header_dict()
                )
            if attempt >= self.max_attempts:
                raise failure
            time.sleep(self._delay(attempt, end - time.monotonic()))

    def check_compatibility(self) -> str:
        """Reads the sidecar's ``/openapi.json``: raises IncompatibleSidecar unless its version
        is supported; returns the version. Done lazily on the first call otherwise."""
        spec: dict[str, Any] = self._send(calls.openapi())
        self._learn(spec)
        assert self.sidecar_version is not None
        return self.sidecar_version

    # -- service calls ---------------------------------------------------------------------

    def check(
        self,
        account: str,
        cost: int,
        *,
        idempotency_key: str | None = None,
        dry_run: bool = False,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> CheckResult:
        """Charges ``cost`` (or, ``dry_run``, says whether it would). Raises InsufficientCredits,
        SpendLimitReached or RateLimited when refused."""
        call = calls.check(account, cost, idempotency_key, dry_run, description, metadata)
        try:
            return self._send(call)
        except errors.SidecarUnavailable as e:
            if self.failure_policy == "fail_open":
                return self._open("check", e, account, cost)
            raise

    def authorize(
        self,
        api_key: str,
        method: str,
        uri: str,
        *,
        request_id: str | None = None,
        cost: int | None = None,
    ) -> Authorized:
        """Decides a customer's request by its API key (the sidecar's ``/auth/forward``, as a
        proxy would): the key's account, its limits, the route's price (``cost``, when the
        sidecar trusts ``X-Credits-Cost``; else the sidecar's route table). Raises Unauthorized
        for a missing, unknown or revoked key, and the check's errors."""
        call = calls.authorize(api_key, method, uri, request_id, cost)
        try:
            return self._send(call)
        except errors.SidecarUnavailable as e:
            if self.failure_policy == "fail_open":
                self._open("authorize", e, "(by API key)", cost or 0)
                return Authorized(reason="fail_open", unchecked=True)
            raise

    def report_usage(
        self,
        account: str,
        cost: int,
        *,
        idempotency_key: str | None = None,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> UsageRecorded:
        return self._send(calls.report_usage(account, cost, idempotency_key, description, metadata))

    def hold(
        self,
        account: str,
        amount: int,
        *,
        hold_id: str | None = None,
        ttl_ms: int | None = None,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> Hold:
        return self._send(calls.hold(account, amount, hold_id, ttl_ms, description, metadata))

    def settle(
        self, hold_id: str, amount: int, *, account: str, description: str | None = None
    ) -> HoldClosed:
        return self._send(calls.settle(hold_id, amount, account, description))

    def release(self, hold_id: str, *, account: str, description: str | None = None) -> HoldClosed:
        return self._send(calls.release(hold_id, account, description))

    @contextmanager
    def holding(
        self,
        account: str,
        estimate: int,
        *,
        hold_id: str | None = None,
        ttl_ms: int | None = None,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> Iterator[Holding]:
        """Holds ``estimate``; at the end settles what the block set (``h.settle(actual)``),
        or releases the hold when nothing was set or the block raised."""
        try:
            held: Hold | None = self.hold(
                account,
                estimate,
                hold_id=hold_id,
                ttl_ms=ttl_ms,
                description=description,
                metadata=metadata,
            )
        except errors.SidecarUnavailable as e:
            if self.failure_policy != "fail_open":
                raise
            self._open("hold", e, account, estimate)
            held = None
        h = Holding(account, held)
        try:
            yield h
        except BaseException:
            if held is not None:
                quietly(lambda: self.release(held.hold_id, account=account))
            raise
        if held is None:
            return
        if h.amount is None:
            h.result = self.release(held.hold_id, account=account)
        else:
            h.result = self.settle(held.hold_id, h.amount, account=account)

    def balance(self, account: str) -> Balance:
        return self._send(calls.balance(account))

    # -- admin calls -----------------------------------------------------------------------

    def put_account(
        self, account: str, settings: JSON | None = None, *, reason: str | None = None
    ) -> AccountSettings:
        return self._send(calls.put_account(account, settings or {}, reason))

    def patch_account(
        self, account: str, changes: JSON, *, reason: str | None = None
    ) -> AccountSettings:
        return self._send(calls.patch_account(account, changes, reason))

    def set_spend_limit(
        self, account: str, limit: JSON | None, *, reason: str | None = None
    ) -> AccountSettings:
        """The account's spending limit (``{"credits", "interval"?, "interval_count"?}``; None
        removes it)."""
        return self._send(calls.patch_account(account, {"spend_limit": limit}, reason))

    def grant(
        self,
        account: str,
        credits: int,
        *,
        reason: str | None = None,
        grant_id: str | None = None,
        source: str | None = None,
        expires_at: str | int | None = None,
        priority: int | None = None,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> Granted:
        return self._send(
            calls.grant(
                account,
                credits,
                grant_id,
                reason,
                source,
                expires_at,
                priority,
                description,
                metadata,
            )
        )

    def create_key(
        self,
        account: str,
        *,
        name: str | None = None,
        rate_limit: JSON | None = None,
        spend_limit: JSON | None = None,
        idempotency_key: str | None = None,
        reason: str | None = None,
    ) -> KeyCreated:
        return self._send(
            calls.create_key(account, name, rate_limit, spend_limit, idempotency_key, reason)
        )

    def list_keys(self, account: str) -> list[Key]:
        return self._send(calls.list_keys(account))

    def set_key_spend_limit(
        self, key_id: str, limit: JSON | None, *, reason: str | None = None
    ) -> Key:
        return self._send(calls.patch_key(key_id, limit, reason))

    def revoke_key(self, key_id: str, *, reason: str | None = None) -> Key:
        return self._send(calls.revoke_key(key_id, reason))

    def put_plan(self, plan: str, definition: JSON, *, reason: str | None = None) -> Plan:
        return self._send(calls.put_plan(plan, definition, reason))

    def get_plan(self, plan: str) -> Plan:
        return self._send(calls.get_plan(plan))

    def list_plans(self) -> list[Plan]:
        return self._send(calls.list_plans())

    def delete_plan(self, plan: str, *, reason: str | None = None) -> None:
        self._send(calls.delete_plan(plan, reason))

    def create_portal_session(
        self,
        account: str,
        *,
        return_url: str | None = None,
        locale: str | None = None,
        sections: list[str] | None = None,
    ) -> PortalSession:
        return self._send(calls.create_portal_session(account, return_url, locale, sections))

    def create_token(
        self,
        name: str,
        scopes: list[str],
        *,
        account_prefix: str | None = None,
        reason: str | None = None,
    ) -> TokenCreated:
        return self._send(calls.create_token(name, scopes, account_prefix, reason))

    def list_tokens(self) -> list[Token]:
        return self._send(calls.list_tokens())

    def get_token(self, token_id: str) -> Token:
        return self._send(calls.get_token(token_id))

    def rotate_token(
        self, token_id: str, *, grace_seconds: int | None = None, reason: str | None = None
    ) -> TokenCreated:
        return self._send(calls.rotate_token(token_id, grace_seconds, reason))

    def revoke_token(self, token_id: str, *, reason: str | None = None) -> Token:
        return self._send(calls.revoke_token(token_id, reason))
