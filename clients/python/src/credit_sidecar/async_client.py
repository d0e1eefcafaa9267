"""The async client, :class:`AsyncClient`, on aiohttp (credit_sidecar._wire): the same calls
as the sync :class:`~credit_sidecar.sync_client.Client`, awaited, sent the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx

from credit_sidecar import _calls as calls
from credit_sidecar import errors
from credit_sidecar._base import RETRY_STATUSES, Base, FailurePolicy, json_body
from credit_sidecar._wire import AiohttpWire, AsyncHttpxWire, NoAnswer
from credit_sidecar.holding import Holding, aquietly, shielded
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


class AsyncClient(Base):
    """The async client: the same calls as :class:`Client`, awaited."""

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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._wire: AiohttpWire | AsyncHttpxWire = (
            AiohttpWire(self.base_url)
            if transport is None
            else AsyncHttpxWire(self.base_url, transport)
        )

    # the first read of the sidecar's spec, shared by the calls that need it while it runs
    _compat_read: asyncio.Task[str] | None = None

    async def aclose(self) -> None:
        await self._wire.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: calls.Call[T]) -> T:
        if self.verify_sidecar and self._operations is None and call.op != "openapi":
            # once: an app's first burst of requests waits for one read of the spec, and shares
            # its failure (each call still ends by its deadline, not after the others' reads)
            loop = asyncio.get_running_loop()
            read = self._compat_read
            if read is None or read.done() or read.get_loop() is not loop:
                read = self._compat_read = loop.create_task(self.check_compatibility())
                read.add_done_callback(_retrieved)
            # shielded: a caller cancelled (its client gone) leaves the read to the others
            await asyncio.shield(read)
        self._require(call)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline
        args = self._request_args(call)
        attempt = 0
        while True:
            attempt += 1
            remaining = end - loop.time()
            if remaining <= 0:
                raise errors.SidecarUnavailable(
                    f"{call.method} {call.template}: "
                    f"no answer within the {self.deadline}s deadline",
                    code="sidecar_unavailable",
                )
            try:
                response = await self._wire.request(
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
            await asyncio.sleep(self._delay(attempt, end - loop.time()))

    async def check_compatibility(self) -> str:
        spec: dict[str, Any] = await self._send(calls.openapi())
        self._learn(spec)
        assert self.sidecar_version is not None
        return self.sidecar_version

    # -- service calls ---------------------------------------------------------------------

    async def check(
        self,
        account: str,
        cost: int,
        *,
        idempotency_key: str | None = None,
        dry_run: bool = False,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> CheckResult:
        call = calls.check(account, cost, idempotency_key, dry_run, description, metadata)
        try:
            return await self._send(call)
        except errors.SidecarUnavailable as e:
            if self.failure_policy == "fail_open":
                return self._open("check", e, account, cost)
            raise

    async def authorize(
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
            return await self._send(call)
        except errors.SidecarUnavailable as e:
            if self.failure_policy == "fail_open":
                self._open("authorize", e, "(by API key)", cost or 0)
                return Authorized(reason="fail_open", unchecked=True)
            raise

    async def report_usage(
        self,
        account: str,
        cost: int,
        *,
        idempotency_key: str | None = None,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> UsageRecorded:
        return await self._send(
            calls.report_usage(account, cost, idempotency_key, description, metadata)
        )

    async def hold(
        self,
        account: str,
        amount: int,
        *,
        hold_id: str | None = None,
        ttl_ms: int | None = None,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> Hold:
        return await self._send(calls.hold(account, amount, hold_id, ttl_ms, description, metadata))

    async def settle(
        self, hold_id: str, amount: int, *, account: str, description: str | None = None
    ) -> HoldClosed:
        return await self._send(calls.settle(hold_id, amount, account, description))

    async def release(
        self, hold_id: str, *, account: str, description: str | None = None
    ) -> HoldClosed:
        return await self._send(calls.release(hold_id, account, description))

    @asynccontextmanager
    async def holding(
        self,
        account: str,
        estimate: int,
        *,
        hold_id: str | None = None,
        ttl_ms: int | None = None,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> AsyncIterator[Holding]:
        """As :meth:`Client.holding`: ``async with client.holding(account, 100) as h``."""
        try:
            held: Hold | None = await self.hold(
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
                # shielded: a cancelled request (a client gone) must still free its credits
                await shielded(aquietly(self.release(held.hold_id, account=account)))
            raise
        if held is None:
            return
        if h.amount is None:
            h.result = await self.release(held.hold_id, account=account)
        else:
            h.result = await self.settle(held.hold_id, h.amount, account=account)

    async def balance(self, account: str) -> Balance:
        return await self._send(calls.balance(account))

    # -- admin calls -----------------------------------------------------------------------

    async def put_account(
        self, account: str, settings: JSON | None = None, *, reason: str | None = None
    ) -> AccountSettings:
        return await self._send(calls.put_account(account, settings or {}, reason))

    async def patch_account(
        self, account: str, changes: JSON, *, reason: str | None = None
    ) -> AccountSettings:
        return await self._send(calls.patch_account(account, changes, reason))

    async def set_spend_limit(
        self, account: str, limit: JSON | None, *, reason: str | None = None
    ) -> AccountSettings:
        return await self._send(calls.patch_account(account, {"spend_limit": limit}, reason))

    async def grant(
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
        return await self._send(
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

    async def create_key(
        self,
        account: str,
        *,
        name: str | None = None,
        rate_limit: JSON | None = None,
        spend_limit: JSON | None = None,
        idempotency_key: str | None = None,
        reason: str | None = None,
    ) -> KeyCreated:
        return await self._send(
            calls.create_key(account, name, rate_limit, spend_limit, idempotency_key, reason)
        )

    async def list_keys(self, account: str) -> list[Key]:
        return await self._send(calls.list_keys(account))

    async def set_key_spend_limit(
        self, key_id: str, limit: JSON | None, *, reason: str | None = None
    ) -> Key:
        return await self._send(calls.patch_key(key_id, limit, reason))

    async def revoke_key(self, key_id: str, *, reason: str | None = None) -> Key:
        return await self._send(calls.revoke_key(key_id, reason))

    async def put_plan(self, plan: str, definition: JSON, *, reason: str | None = None) -> Plan:
        return await self._send(calls.put_plan(plan, definition, reason))

    async def get_plan(self, plan: str) -> Plan:
        return await self._send(calls.get_plan(plan))

    async def list_plans(self) -> list[Plan]:
        return await self._send(calls.list_plans())

    async def delete_plan(self, plan: str, *, reason: str | None = None) -> None:
        await self._send(calls.delete_plan(plan, reason))

    async def create_portal_session(
        self,
        account: str,
        *,
        return_url: str | None = None,
        locale: str | None = None,
        sections: list[str] | None = None,
    ) -> PortalSession:
        return await self._send(calls.create_portal_session(account, return_url, locale, sections))

    async def create_token(
        self,
        name: str,
        scopes: list[str],
        *,
        account_prefix: str | None = None,
        reason: str | None = None,
    ) -> TokenCreated:
        return await self._send(calls.create_token(name, scopes, account_prefix, reason))

    async def list_tokens(self) -> list[Token]:
        return await self._send(calls.list_tokens())

    async def get_token(self, token_id: str) -> Token:
        return await self._send(calls.get_token(token_id))

    async def rotate_token(
        self, token_id: str, *, grace_seconds: int | None = None, reason: str | None = None
    ) -> TokenCreated:
        return await self._send(calls.rotate_token(token_id, grace_seconds, reason))

    async def revoke_token(self, token_id: str, *, reason: str | None = None) -> Token:
        return await self._send(calls.revoke_token(token_id, reason))


def _retrieved(read: asyncio.Task[str]) -> None:
    """A read whose every caller was cancelled fails unseen, not as "never retrieved"."""
    if not read.cancelled():
        read.exception()
