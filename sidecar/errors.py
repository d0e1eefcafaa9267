"""Domain errors, each with a stable ``code``; sidecar/http/errors.py maps them to statuses.

Errors raised by the Lua scripts arrive as ``CS <CODE> <detail>`` error replies and are
turned into these classes by :func:`from_script_error`.
"""

from __future__ import annotations

import re


class SidecarError(Exception):
    """Base of all errors a caller can act on; ``code`` is machine-readable, the message is not."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(SidecarError):
    code = "invalid_request"


class InvalidJSON(SidecarError):
    code = "invalid_json"


class Unauthorized(SidecarError):
    code = "unauthorized"


class Forbidden(SidecarError):
    """A valid token that this route does not accept."""

    code = "forbidden"


class PortalSessionRequired(SidecarError):
    """A portal route without a live portal session (none, expired, revoked, signed out)."""

    code = "portal_session_required"


class CsrfRefused(SidecarError):
    """A portal change without the session's X-CSRF-Token, or sent from another site."""

    code = "csrf"


class TooManyKeys(SidecarError):
    """A key the portal would create past SIDECAR_PORTAL_MAX_KEYS active ones."""

    code = "too_many_keys"


class UnknownAccount(SidecarError):
    code = "unknown_account"


class UnknownHold(SidecarError):
    code = "unknown_hold"


class UnknownTransaction(SidecarError):
    code = "unknown_transaction"


class UnknownKey(SidecarError):
    code = "unknown_key"


class UnknownPlan(SidecarError):
    code = "unknown_plan"


class KeyRevoked(SidecarError):
    """A change to an API key that was revoked."""

    code = "key_revoked"


class UnknownToken(SidecarError):
    """One of the sidecar's own API tokens (docs/tokens.md) that does not exist."""

    code = "unknown_token"


class TokenRevoked(SidecarError):
    """A change to a sidecar API token that was revoked."""

    code = "token_revoked"


class PlanInUse(SidecarError):
    """A plan that accounts are on cannot be deleted; ``accounts``: how many."""

    code = "plan_in_use"

    def __init__(self, message: str, *, accounts: int = 0, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.accounts = accounts


class PlanBusy(SidecarError):
    """A plan is being deleted (a change must wait), or changed while it was."""

    code = "plan_busy"


class RebuildError(Exception):
    """``rebuild``: an account cannot be restored from the SQL ledger; the message names it and
    says why (an operator's command, not an HTTP answer)."""


class IdempotencyConflict(SidecarError):
    """An id was used again with other parameters."""

    code = "idempotency_conflict"


class HoldClosed(SidecarError):
    code = "hold_closed"


class HoldExpired(SidecarError):
    code = "hold_expired"


class FullyRefunded(SidecarError):
    code = "fully_refunded"


class BalanceOverflow(SidecarError):
    code = "balance_overflow"


class UnknownPackage(SidecarError):
    code = "unknown_package"


class InvalidSignature(SidecarError):
    """A webhook whose Stripe-Signature does not verify (or is stale, or from the future)."""

    code = "invalid_signature"


class NoBillingCustomer(SidecarError):
    """The account has no Stripe customer yet (it never bought or saved a card), so there is
    nothing for Stripe's customer portal to show."""

    code = "no_billing_customer"


class BillingNotConfigured(SidecarError):
    """A Stripe feature was used without SIDECAR_STRIPE_API_KEY (or webhook secrets)."""

    code = "billing_not_configured"


class PaymentProviderError(SidecarError):
    """Stripe refused a call or could not be reached; ``message`` says which."""

    code = "payment_provider_error"


class LedgerUnavailable(SidecarError):
    """The SQL ledger could not be reached."""

    code = "ledger_unavailable"


class StoreUnavailable(SidecarError):
    """Redis could not be reached (after retries)."""

    code = "store_unavailable"


_SCRIPT_ERRORS: dict[str, type[SidecarError]] = {
    "INVALID": InvalidInput,
    "UNKNOWN_ACCOUNT": UnknownAccount,
    "UNKNOWN_HOLD": UnknownHold,
    "UNKNOWN_TRANSACTION": UnknownTransaction,
    "UNKNOWN_KEY": UnknownKey,
    "KEY_REVOKED": KeyRevoked,
    "UNKNOWN_PLAN": UnknownPlan,
    "PLAN_IN_USE": PlanInUse,
    "PLAN_BUSY": PlanBusy,
    "UNKNOWN_TOKEN": UnknownToken,
    "TOKEN_REVOKED": TokenRevoked,
    "CONFLICT": IdempotencyConflict,
    "HOLD_CLOSED": HoldClosed,
    "HOLD_EXPIRED": HoldExpired,
    "FULLY_REFUNDED": FullyRefunded,
    # The call reached Redis after its caller's deadline and changed nothing (sidecar/lua/_lib.lua).
    "LATE": StoreUnavailable,
}
_SCRIPT_ERROR = re.compile(
    r"^CS (?P<code>[A-Z_]+) (?P<detail>.*?)(?: script: \S+, on @\S+\.)?$", re.S
)


def from_script_error(message: str) -> SidecarError | None:
    """The domain error carried by a script's error reply, or None if it is not one of ours."""
    m = _SCRIPT_ERROR.match(message)
    if m is None or m["code"] not in _SCRIPT_ERRORS:
        return None
    detail = m["detail"]
    cls = _SCRIPT_ERRORS[m["code"]]
    field = detail.split(" ", 1)[0] if cls is InvalidInput else None
    return cls(detail, field=field)
