"""Maps domain errors (sidecar/errors.py) to HTTP statuses, in this one place, and renders every
error as JSON: ``{"error": {"code", "message", "field"?}}``. Nothing becomes a bare 500 page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
import orjson
from aiohttp import web
from msgspec import UNSET
from pydantic import ValidationError

from sidecar import errors
from sidecar.http.responses import Error, ErrorDetail
from sidecar.runtime.logs import loggable_path

log = logging.getLogger(__name__)

STATUS: dict[type[errors.SidecarError], int] = {
    errors.InvalidJSON: 400,
    errors.InvalidSignature: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.PortalSessionRequired: 401,
    errors.CsrfRefused: 403,
    errors.TooManyKeys: 409,
    errors.UnknownAccount: 404,
    errors.UnknownHold: 404,
    errors.UnknownTransaction: 404,
    errors.UnknownKey: 404,
    errors.UnknownPlan: 404,
    errors.UnknownToken: 404,
    errors.UnknownPackage: 404,
    errors.IdempotencyConflict: 409,
    errors.HoldClosed: 409,
    errors.KeyRevoked: 409,
    errors.HoldExpired: 409,
    errors.FullyRefunded: 409,
    errors.PlanInUse: 409,
    errors.PlanBusy: 409,
    errors.TokenRevoked: 409,
    errors.NoBillingCustomer: 409,
    errors.InvalidInput: 422,
    errors.BalanceOverflow: 422,
    errors.StoreUnavailable: 503,
    errors.LedgerUnavailable: 503,
    errors.BillingNotConfigured: 503,
    errors.PaymentProviderError: 502,
}

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
}


ENCODER = msgspec.json.Encoder()


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = Error(error=ErrorDetail(code=code, message=message, field=field or UNSET))
    return web.Response(
        body=ENCODER.encode(body), status=status, headers=headers, content_type="application/json"
    )


def validation_error(e: ValidationError) -> errors.InvalidInput:
    first = e.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "field required"
    elif first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")  # our validators' own words
    return errors.InvalidInput(f"{field}: {msg}" if field else msg, field=field)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as e:
        return _render(validation_error(e))
    except errors.SidecarError as e:
        return _render(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "http_error")
        return error_response(e.status, code, e.reason, headers=_allow(e))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, loggable_path(request))
        return error_response(500, "internal_error", "internal error")


def _render(e: errors.SidecarError) -> web.Response:
    status = STATUS.get(type(e), 400)
    bearer = status == 401 and not isinstance(e, errors.PortalSessionRequired)  # a cookie's
    headers = {"WWW-Authenticate": 'Bearer realm="credit-sidecar"'} if bearer else None
    return error_response(status, e.code, e.message, e.field, headers)


def _allow(e: web.HTTPException) -> dict[str, str] | None:
    allow = e.headers.get("Allow")
    return {"Allow": allow} if allow else None
