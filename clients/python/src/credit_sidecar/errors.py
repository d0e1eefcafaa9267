"""Typed errors. Every error the client raises is a :class:`CreditSidecarError` carrying the
HTTP ``status`` (0 when no answer came), the sidecar's error ``code``, ``message`` and
``field``, and the JSON ``body`` and ``headers`` as answered (the middleware forwards them)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class CreditSidecarError(Exception):
    """Base of every error of this package."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "error",
        field: str | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field
        self.body: dict[str, Any] = dict(body or {})
        self.headers: dict[str, str] = dict(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, {self.message!r})"


class Denied(CreditSidecarError):
    """A check or hold refused (402 or 429): nothing was charged."""

    @property
    def account(self) -> str | None:
        a = self.body.get("account")
        return a if isinstance(a, str) else None


class InsufficientCredits(Denied):
    """402 ``insufficient_credits``: ``balance`` is below ``required``."""

    @property
    def balance(self) -> int:
        return int(self.body.get("balance", 0))

    @property
    def required(self) -> int:
        return int(self.body.get("required", 0))


class SpendLimitReached(Denied):
    """402 ``spend_limit`` (the account's) or ``key_spend_limit`` (an API key's)."""

    @property
    def required(self) -> int:
        return int(self.body.get("required", 0))

    @property
    def spent(self) -> int:
        return int(self.body.get("spent", 0))

    @property
    def spend_limit(self) -> dict[str, Any]:
        limit = self.body.get("spend_limit")
        return dict(limit) if isinstance(limit, dict) else {}

    @property
    def window_ends_at(self) -> str | None:
        ends = self.body.get("window_ends_at")
        return ends if isinstance(ends, str) else None


class RateLimited(Denied):
    """429 ``rate_limited``: try again after ``retry_after`` seconds (``retry_after_ms``)."""

    @property
    def retry_after_ms(self) -> int:
        return int(self.body.get("retry_after_ms", 0))

    @property
    def retry_after(self) -> float:
        return self.retry_after_ms / 1000

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds, rounded up (what ``Retry-After`` says)."""
        return math.ceil(self.retry_after_ms / 1000)


class Unauthorized(CreditSidecarError):
    """401: no token, a wrong one, or a revoked one."""


class Forbidden(CreditSidecarError):
    """403: the token lacks the call's scope, or the account is outside its prefix."""


class NotFound(CreditSidecarError):
    """404: an unknown account, hold, key, plan, token..."""


class Conflict(CreditSidecarError):
    """409: an idempotency key reused with other parameters, a closed hold, a revoked token..."""


class InvalidRequest(CreditSidecarError):
    """400, 413 or 422: the sidecar refused the input (``field`` names it)."""


class SidecarUnavailable(CreditSidecarError):
    """No usable answer after the retries: connection refused or dropped, timeouts, 502-504, or
    the overall deadline passed."""


class IncompatibleSidecar(CreditSidecarError):
    """The sidecar's version is outside the client's supported range, or its API lacks the
    operation called (a sidecar too old for it)."""


BY_STATUS: dict[int, type[CreditSidecarError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    502: SidecarUnavailable,
    503: SidecarUnavailable,
    504: SidecarUnavailable,
}


def from_response(status: int, body: Any, headers: Mapping[str, str]) -> CreditSidecarError:
    """The error of a non-2xx answer."""
    data: dict[str, Any] = body if isinstance(body, dict) else {}
    if status == 402 or (status == 429 and "retry_after_ms" in data):
        reason = str(data.get("reason", ""))
        if status == 429:
            cls: type[CreditSidecarError] = RateLimited
            message = f"rate limited: retry after {data.get('retry_after_ms')} ms"
        elif reason in ("spend_limit", "key_spend_limit"):
            cls = SpendLimitReached
            message = (
                f"spending limit reached: {data.get('spent')} spent, "
                f"{data.get('required')} more asked"
            )
        else:
            cls = InsufficientCredits
            message = (
                f"insufficient credits: balance {data.get('balance')}, "
                f"required {data.get('required')}"
            )
        return cls(message, status=status, code=reason or "denied", body=data, headers=headers)
    err = data.get("error") if isinstance(data.get("error"), dict) else {}
    assert isinstance(err, dict)
    if not err and "reason" in data:  # the forward auth's outcome: {allowed, reason, message?}
        err = {"code": data["reason"], "message": data.get("message", data["reason"])}
        err["field"] = data.get("field")
    code = str(err.get("code", f"http_{status}"))
    message = str(err.get("message", f"HTTP {status}"))
    field = err.get("field")
    # any other 5xx (a 500, a proxy's 599) is no usable answer either: the sidecar unavailable
    cls = BY_STATUS.get(status, SidecarUnavailable if status >= 500 else CreditSidecarError)
    return cls(
        message,
        status=status,
        code=code,
        field=field if isinstance(field, str) else None,
        body=data,
        headers=headers,
    )
