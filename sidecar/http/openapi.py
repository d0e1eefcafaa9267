"""The OpenAPI 3.1 description of the whole HTTP API, served at ``GET /openapi.json`` (no token).

Request bodies are the pydantic models of sidecar/http/schemas.py, turned into JSON Schema by
pydantic (they cannot drift from what the handlers accept); paths, parameters, security,
response bodies and error statuses are written here by hand. tests/http/test_openapi.py checks
that every route the app serves is described and nothing else is, that the document is valid
OpenAPI 3.1 and that its request bodies equal the models' schemas; tests/http/test_fuzz.py
fuzzes the running app from this document.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from sidecar import __version__
from sidecar.http import schemas
from sidecar.persistence.project import TXN_TYPES

Schema = dict[str, Any]
REF = "#/components/schemas/{model}"

# The request bodies, by the component name they get (the model's own name).
REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    schemas.CheckRequest,
    schemas.AccountRequest,
    schemas.GrantRequest,
    schemas.HoldRequest,
    schemas.SettleRequest,
    schemas.ReleaseRequest,
    schemas.RefundRequest,
    schemas.KeyRequest,
    schemas.PackageRequest,
    schemas.CheckoutRequest,
    schemas.SetupCheckoutRequest,
    schemas.BillingProfileRequest,
    schemas.AutoTopUpRequest,
    schemas.NotificationRequest,
)

# Methods documented for the proxies' auth endpoints, which answer any method.
ANY_METHODS = ("get", "post", "put", "patch", "delete")
TRANSACTION_TYPES = sorted(TXN_TYPES)
ERROR_CODES: dict[int, str] = {
    400: "`invalid_json`: the body is not JSON, or not a JSON object",
    401: "`unauthorized`: no bearer token, or not a valid one (with `WWW-Authenticate`)",
    403: "`forbidden`: a valid token of a kind this route does not accept",
    404: "`not_found`: no such route (e.g. a path parameter with a `/`)",
    405: "`method_not_allowed`: the path exists, the method does not (with `Allow`)",
    409: "`idempotency_conflict`: the id was used before with other parameters",
    413: "`request_too_large`: the body is over 64 KiB",
    422: "`invalid_request` (with the offending `field`)",
    502: "`payment_provider_error`: Stripe refused the call or could not be reached",
    503: "`store_unavailable`: Redis could not be reached",
}


def ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None) -> Schema:
    """An object with these properties (more may be added in later versions)."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


INT: Schema = {"type": "integer"}
STR: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
NUMBER: Schema = {"type": "number"}
CREDITS: Schema = {"type": "integer", "description": "credits (an integer)"}
TIME: Schema = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339 UTC with milliseconds",
}
ID: Schema = schemas.ID.json_schema()
QUERY_TIME: Schema = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339 with an offset, or unix milliseconds",
}
ANY_OBJECT: Schema = {"type": "object", "additionalProperties": True}


def request_schemas() -> dict[str, Schema]:
    """The request bodies' JSON Schemas (and the models they nest), by component name."""
    _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS], ref_template=REF)
    return dict(defs["$defs"])


def response_schemas() -> dict[str, Schema]:
    rate_limit = nullable(obj({"requests": INT, "period_ms": INT, "burst": INT}))
    key = obj(
        {
            "key_id": STR,
            "account": STR,
            "name": STR,
            "prefix": STR,
            "created_at": nullable(TIME),
            "rate_limit": ref("RateLimit"),
            "revoked_at": nullable(TIME),
        }
    )
    package = obj(
        {
            "id": STR,
            "name": STR,
            "credits": CREDITS,
            "stripe_price_id": nullable(STR),
            "price": {
                "type": "integer",
                "description": "the currency's minor unit (cents; yen for JPY, a zero-decimal "
                "currency); the same as its Stripe Price's unit_amount",
            },
            "currency": STR,
            "credit_expiry_s": nullable(INT),
            "active": BOOL,
            "price_display": {"type": "string", "description": "e.g. 5.00 USD, 500 JPY"},
        }
    )
    topup = obj(
        {
            "account": STR,
            "enabled": BOOL,
            "threshold": INT,
            "package_id": STR,
            "payment_method": STR,
            "paused": BOOL,
            "failures": INT,
            "last_error": nullable(STR),
            "pending_payment_intent": nullable(STR),
            "needs_customer": {
                "type": "boolean",
                "description": "a charge needed the customer (authentication): no off-session "
                "charge until they pay the link or the auto top-up is set again",
            },
            "action_url": nullable(STR),
            "action_payment_intent": nullable(STR),
        }
    )
    transaction = obj(
        {
            "id": STR,
            "seq": INT,
            "type": {"type": "string", "enum": list(TRANSACTION_TYPES)},
            "amount": INT,
            "balance": INT,
            "debt": INT,
            "created_at": nullable(TIME),
            "description": STR,
            "idempotency_key": nullable(STR),
            "hold_id": nullable(STR),
            "source_transaction_id": nullable(STR),
            "key_id": nullable(STR),
            "route": nullable(STR),
            "metadata": nullable(ANY_OBJECT),
        }
    )
    outcome = obj(
        {
            "allowed": BOOL,
            "reason": {
                "type": "string",
                "description": "allowed, missing_api_key, invalid_api_key, "
                "insufficient_credits, rate_limited, route_denied, invalid_cost_header, "
                "invalid_path, invalid_method, invalid_header, store_unavailable, fail_open, ...",
            },
        },
        {
            "balance": INT,
            "required": INT,
            "retry_after_ms": INT,
            "field": {"type": "string", "description": "a 400: the header (or path) refused"},
            "message": {"type": "string", "description": "a 400: what is wrong with it"},
        },
    )
    return {
        "Error": obj(
            {
                "error": obj(
                    {"code": STR, "message": STR},
                    {"field": {"type": "string", "description": "the offending field"}},
                )
            }
        ),
        "RateLimit": rate_limit,
        "Health": obj({"status": {"const": "ok"}, "pid": INT}),
        "Unhealthy": obj(
            {
                "status": {"const": "unhealthy"},
                "pid": INT,
                "failing": array({"type": "string", "enum": ["embedded_redis"]}),
            }
        ),
        "Readiness": obj(
            {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": {
                    "type": "object",
                    "description": "redis, scripts, sql, writer_lag: each {ok, ms, ...}",
                    "additionalProperties": obj({"ok": BOOL}, {"ms": NUMBER, "error": STR}),
                },
            },
            {"failing": array(STR)},
        ),
        "CheckAllowed": obj(
            {
                "allowed": {"const": True},
                "account": STR,
                "balance": INT,
                "cost": CREDITS,
                "transaction_id": STR,
                "replayed": BOOL,
                "low_balance": BOOL,
            }
        ),
        "CheckShadowed": obj(
            {
                "allowed": {"const": True},
                "account": STR,
                "charged": {"const": False},
                "shadow": {
                    "type": "object",
                    "description": "the refusal it would have been without SIDECAR_SHADOW: "
                    "`status` (402, 429), `reason`, and that refusal's other fields",
                    "properties": {"status": INT, "reason": STR},
                    "required": ["status", "reason"],
                },
            }
        ),
        "InsufficientCredits": obj(
            {
                "allowed": {"const": False},
                "reason": {"const": "insufficient_credits"},
                "account": STR,
                "balance": INT,
                "required": CREDITS,
            }
        ),
        "RateLimited": obj(
            {
                "allowed": {"const": False},
                "reason": {"const": "rate_limited"},
                "account": STR,
                "retry_after_ms": INT,
            }
        ),
        "AccountSettings": obj(
            {
                "account": STR,
                "created": BOOL,
                "overdraft_limit": CREDITS,
                "low_balance_threshold": nullable(INT),
                "rate_limit": ref("RateLimit"),
            }
        ),
        "Granted": obj(
            {
                "account": STR,
                "grant_id": STR,
                "credits": CREDITS,
                "transaction_id": STR,
                "balance": INT,
                "replayed": BOOL,
            }
        ),
        "Balance": obj(
            {
                "account": STR,
                "balance": INT,
                "available": INT,
                "held": INT,
                "debt": INT,
                "overdraft_limit": INT,
                "low_balance_threshold": nullable(INT),
                "rate_limit": ref("RateLimit"),
                "created_at": nullable(TIME),
                "buckets": array(
                    obj(
                        {
                            "id": STR,
                            "credits": INT,
                            "remaining": INT,
                            "held": INT,
                            "created_at": nullable(TIME),
                            "expires_at": nullable(TIME),
                            "priority": INT,
                            "source": STR,
                            "metadata": ANY_OBJECT,
                        }
                    )
                ),
            }
        ),
        "Hold": obj(
            {
                "account": STR,
                "hold_id": STR,
                "amount": CREDITS,
                "state": STR,
                "transaction_id": STR,
                "balance": INT,
                "expires_at": nullable(TIME),
                "replayed": BOOL,
            }
        ),
        "HoldClosed": obj(
            {
                "account": STR,
                "hold_id": STR,
                "state": {"type": "string", "enum": ["settled", "released"]},
                "charged": INT,
                "forfeited": INT,
                "transaction_id": STR,
                "balance": INT,
                "replayed": BOOL,
            }
        ),
        "Refunded": obj(
            {
                "account": STR,
                "refund_id": STR,
                "source_transaction_id": STR,
                "refunded": INT,
                "forfeited": INT,
                "transaction_id": STR,
                "balance": INT,
                "replayed": BOOL,
            }
        ),
        "Key": key,
        "KeyCreated": {
            "allOf": [
                ref("Key"),
                obj({"key": {"type": "string", "description": "the key: shown only here"}}),
            ]
        },
        "KeyList": obj({"account": STR, "keys": array(ref("Key"))}),
        "AccountList": obj(
            {
                "accounts": array(
                    obj(
                        {
                            "account": STR,
                            "balance": INT,
                            "debt": INT,
                            "created_at": nullable(TIME),
                            "seq": INT,
                        }
                    )
                ),
                "next": nullable(STR),
            }
        ),
        "Transaction": transaction,
        "TransactionList": obj(
            {
                "account": STR,
                "transactions": array(ref("Transaction")),
                "next": nullable(INT),
            }
        ),
        "Usage": obj(
            {
                "account": STR,
                "interval": {"type": "string", "enum": ["hour", "day"]},
                "points": array(obj({"start": TIME, "credits": INT, "checks": INT})),
            }
        ),
        "HoldList": obj(
            {
                "account": STR,
                "holds": array(
                    obj(
                        {
                            "hold_id": STR,
                            "amount": INT,
                            "state": STR,
                            "expires_at": nullable(TIME),
                            "created_at": nullable(TIME),
                        },
                        {
                            "ttl_ms": nullable(INT),
                            "transaction_id": nullable(STR),
                            "balance_after": nullable(INT),
                            "charged": nullable(INT),
                            "forfeited": nullable(INT),
                            "close_transaction_id": nullable(STR),
                            "buckets": array(obj({"bucket": STR, "amount": INT})),
                        },
                    )
                ),
            }
        ),
        "Outbox": obj(
            {
                "shards": array(
                    obj(
                        {
                            "shard": INT,
                            "writer_lease": nullable(STR),
                            "length": INT,
                            "pending": INT,
                            "undelivered": INT,
                            "unwritten": INT,
                            "lag_s": NUMBER,
                            "dead_letters": INT,
                        }
                    )
                ),
                "unwritten": INT,
                "lag_s": NUMBER,
                "dead_letters": INT,
                "writer": obj(
                    {
                        "mode": {"type": "string", "enum": ["inline", "process", "off"]},
                        "running": {
                            **BOOL,
                            "description": "a writer holds every shard's lease, renewed within "
                            "the lease period (and, in mode process, this process's writer is "
                            "alive); false for a hung or stopped writer once its lease lapsed",
                        },
                    },
                    {"pid": nullable(INT), "alive": BOOL, "restarts": INT, "hung_kills": INT},
                ),
            }
        ),
        "DeadLetters": obj(
            {
                "shard": INT,
                "entries": array(
                    obj(
                        {
                            "id": STR,
                            "entry": nullable(ANY_OBJECT),
                            "fields": {
                                "type": "object",
                                "additionalProperties": STR,
                                "description": "the raw stream fields, with dl_error",
                            },
                        }
                    )
                ),
            }
        ),
        "DeadLetterRetryRequest": {
            "type": "object",
            "properties": {
                "shard": {"type": "integer", "minimum": 0, "default": 0},
                "ids": {
                    "type": "array",
                    "items": STR,
                    "maxItems": 1000,
                    "description": "the dead letters to retry (default: all of the shard's)",
                },
            },
        },
        "DeadLettersRetried": obj({"shard": INT, "retried": array(STR)}),
        "Package": package,
        "PackageList": obj({"packages": array(ref("Package"))}),
        "CheckoutSession": obj({"id": STR, "url": STR, "account": STR}),
        "AutoTopUp": topup,
        "PaymentMethods": obj(
            {
                "account": STR,
                "customer": nullable(STR),
                "payment_methods": array(obj({"id": STR, "type": STR, "label": STR})),
            }
        ),
        "BillingProfile": obj({"account": STR, "email": nullable(STR), "customer": nullable(STR)}),
        "Deleted": obj({"account": STR, "deleted": BOOL}),
        "NotificationEndpoint": obj(
            {
                "account": STR,
                "url": STR,
                "secret": {"type": "string", "description": "the signing secret: shown only here"},
                "header": STR,
            }
        ),
        "Notifications": obj(
            {
                "account": STR,
                "url": nullable(STR),
                "deliveries": array(
                    obj(
                        {
                            "id": STR,
                            "status": STR,
                            "attempts": INT,
                            "last_error": nullable(STR),
                            "payload": ANY_OBJECT,
                        }
                    )
                ),
            }
        ),
        "WebhookReceived": obj({"received": {"const": True}, "id": STR, "duplicate": BOOL}),
        "BillingEvents": obj(
            {
                "events": array(
                    obj(
                        {
                            "id": STR,
                            "type": STR,
                            "status": STR,
                            "attempts": INT,
                            "outcome": nullable(STR),
                            "error": nullable(STR),
                            "received_at": STR,
                        }
                    )
                )
            }
        ),
        "BillingStatus": obj(
            {
                "events": {"type": "object", "additionalProperties": INT},
                "deliveries": {"type": "object", "additionalProperties": INT},
                "stripe": BOOL,
                "api_version": {
                    "type": "string",
                    "description": "the Stripe API version billing reads (pinned)",
                },
                "webhook_endpoints": nullable(
                    array(
                        obj(
                            {
                                "id": STR,
                                "url": STR,
                                "api_version": nullable(STR),
                                "matches": BOOL,
                                "sidecar": BOOL,
                            }
                        )
                    )
                ),
            }
        ),
        "EventRetried": obj({"id": STR, "status": {"const": "received"}}),
        "AuthOutcome": outcome,
    }


# -- operations -------------------------------------------------------------------------------

ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
ADMIN_OR_SERVICE: list[dict[str, list[str]]] = [{"adminToken": []}, {"serviceToken": []}]
PUBLIC: list[dict[str, list[str]]] = []
API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}, {"apiKeyHeader": []}]

WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"schema": STR, "description": 'Bearer realm="credit-sidecar"'}
}
RETRY_AFTER = {"Retry-After": {"schema": INT, "description": "seconds to wait"}}


def json_body(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(status: int, description: str | None = None) -> dict[str, Any]:
    r = json_body(ref("Error"), description or ERROR_CODES[status])
    if status == 401:
        r["headers"] = WWW_AUTHENTICATE
    elif status == 405:
        r["headers"] = {"Allow": {"schema": STR, "description": "the methods the path has"}}
    return r


def path_param(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or ID,
    }


def query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


ACCOUNT = path_param("account", "the account's id")
LIMIT_1000: Schema = {"type": "integer", "minimum": 1, "maximum": 1000}


def op(
    operation_id: str,
    summary: str,
    tag: str,
    security: list[dict[str, list[str]]],
    ok: Mapping[int, dict[str, Any]],
    errors: Mapping[int, str | None] | Iterable[int] = (),
    *,
    params: Iterable[dict[str, Any]] = (),
    body: str | None = None,
    body_required: bool = True,
    description: str | None = None,
) -> dict[str, Any]:
    """One operation. ``errors``: statuses answered with the error body (a status's text, or
    None for the usual one); 401 and 403 come with the admin and service tokens, 400/413/422
    with any body."""
    errs: dict[int, str | None] = (
        dict(errors) if isinstance(errors, Mapping) else dict.fromkeys(errors)
    )
    if any("adminToken" in r or "serviceToken" in r for r in security):
        errs.setdefault(401, None)
        errs.setdefault(403, None)
    if body is not None:
        for status in (400, 413, 422):
            errs.setdefault(status, None)
    params = list(params)
    if any(p["in"] == "query" or p["schema"] == ID for p in params):  # validated: 422
        errs.setdefault(422, None)
    if any(p["in"] == "path" for p in params):
        errs.setdefault(404, None)  # e.g. a value with a "/" matches no route
    responses: dict[str, Any] = {str(s): r for s, r in ok.items()}
    for status, text in sorted(errs.items()):
        responses.setdefault(str(status), error(status, text))
    out: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": security,
        "responses": dict(sorted(responses.items())),
    }
    if description:
        out["description"] = description
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return out


def _accounts_paths() -> dict[str, dict[str, Any]]:
    account_404 = {404: "`unknown_account`"}
    return {
        "/v1/check": {
            "post": op(
                "check",
                "Charge a request's cost once (by idempotency key)",
                "checks",
                ADMIN_OR_SERVICE,
                {
                    200: json_body(
                        {"anyOf": [ref("CheckAllowed"), ref("CheckShadowed")]},
                        "allowed and charged (or a replay); with SIDECAR_SHADOW also a "
                        "refusal let through uncharged (`shadow` says what it was)",
                    )
                    | {
                        "headers": {
                            "X-Credits-Shadow-Status": {
                                "schema": INT,
                                "description": "shadow mode: the status it would have had",
                            }
                        }
                    },
                    402: json_body(ref("InsufficientCredits"), "not enough credits"),
                    429: json_body(ref("RateLimited"), "rate limited") | {"headers": RETRY_AFTER},
                },
                {**account_404, 409: None, 503: None},
                body="CheckRequest",
            )
        },
        "/v1/accounts/{account}": {
            "put": op(
                "put_account",
                "Create an account or replace its settings",
                "accounts",
                ADMIN,
                {
                    200: json_body(ref("AccountSettings"), "updated"),
                    201: json_body(ref("AccountSettings"), "created"),
                },
                {503: None},
                params=[ACCOUNT],
                body="AccountRequest",
            )
        },
        "/v1/accounts/{account}/grants": {
            "post": op(
                "grant",
                "Grant credits (a bucket; once per grant_id)",
                "accounts",
                ADMIN,
                {
                    200: json_body(ref("Granted"), "a replay of the same grant"),
                    201: json_body(ref("Granted"), "granted"),
                },
                {
                    **account_404,
                    409: None,
                    422: "`invalid_request`, `balance_overflow`",
                    503: None,
                },
                params=[ACCOUNT],
                body="GrantRequest",
            )
        },
        "/v1/accounts/{account}/balance": {
            "get": op(
                "balance",
                "An account's balance, settings and live buckets (in burn order)",
                "accounts",
                ADMIN,
                {200: json_body(ref("Balance"), "the balance")},
                {**account_404, 503: None},
                params=[ACCOUNT],
            )
        },
        "/v1/holds": {
            "post": op(
                "hold",
                "Reserve credits for a long request",
                "holds",
                ADMIN_OR_SERVICE,
                {
                    200: json_body(ref("Hold"), "a replay of the same hold"),
                    201: json_body(ref("Hold"), "held"),
                    402: json_body(ref("InsufficientCredits"), "not enough credits"),
                },
                {**account_404, 409: None, 503: None},
                body="HoldRequest",
            )
        },
        "/v1/holds/{hold_id}/settle": {
            "post": op(
                "settle",
                "Charge a hold (up to its amount; the rest returns)",
                "holds",
                ADMIN_OR_SERVICE,
                {200: json_body(ref("HoldClosed"), "settled (or a replay)")},
                {
                    404: "`unknown_account`, `unknown_hold`",
                    409: "`hold_closed`, `hold_expired`, `idempotency_conflict`",
                    503: None,
                },
                params=[path_param("hold_id", "the hold's id")],
                body="SettleRequest",
            )
        },
        "/v1/holds/{hold_id}/release": {
            "post": op(
                "release",
                "Release a hold (nothing charged)",
                "holds",
                ADMIN_OR_SERVICE,
                {200: json_body(ref("HoldClosed"), "released (or a replay)")},
                {
                    404: "`unknown_account`, `unknown_hold`",
                    409: "`hold_closed`, `hold_expired`, `idempotency_conflict`",
                    503: None,
                },
                params=[path_param("hold_id", "the hold's id")],
                body="ReleaseRequest",
            )
        },
        "/v1/refunds": {
            "post": op(
                "refund",
                "Refund a transaction (all of it, or an amount; once per refund_id)",
                "accounts",
                ADMIN,
                {
                    200: json_body(ref("Refunded"), "a replay of the same refund"),
                    201: json_body(ref("Refunded"), "refunded"),
                },
                {
                    404: "`unknown_account`, `unknown_transaction`",
                    409: "`fully_refunded`, `idempotency_conflict`",
                    422: "`invalid_request`, `balance_overflow`",
                    503: None,
                },
                body="RefundRequest",
            )
        },
        "/v1/accounts/{account}/keys": {
            "post": op(
                "create_key",
                "Issue an API key (shown once)",
                "keys",
                ADMIN,
                {201: json_body(ref("KeyCreated"), "the key, with its secret")},
                {**account_404, 503: None},
                params=[ACCOUNT],
                body="KeyRequest",
            ),
            "get": op(
                "list_keys",
                "An account's API keys (metadata only)",
                "keys",
                ADMIN,
                {200: json_body(ref("KeyList"), "the keys")},
                {503: None},
                params=[ACCOUNT],
            ),
        },
        "/v1/keys/{key_id}": {
            "delete": op(
                "revoke_key",
                "Revoke an API key (takes effect on the next request)",
                "keys",
                ADMIN,
                {200: json_body(ref("Key"), "the key's record, with revoked_at")},
                {404: "`unknown_key`", 503: None},
                params=[path_param("key_id", "the key's id (key_…)")],
            )
        },
    }


def _read_paths() -> dict[str, dict[str, Any]]:
    sql_503 = "`ledger_unavailable`: the SQL ledger could not be reached"
    return {
        "/v1/admin/accounts": {
            "get": op(
                "list_accounts",
                "Accounts, ordered by id (from the SQL ledger)",
                "reads",
                ADMIN,
                {200: json_body(ref("AccountList"), "a page of accounts; `next` for the next")},
                {503: sql_503},
                params=[
                    query("limit", LIMIT_1000 | {"default": 50}, "page size"),
                    query("after", ID, "the last account id of the previous page"),
                    query("prefix", ID, "only ids starting with this"),
                ],
            )
        },
        "/v1/accounts/{account}/transactions": {
            "get": op(
                "list_transactions",
                "An account's transactions, newest first (from the SQL ledger)",
                "reads",
                ADMIN,
                {
                    200: {
                        "description": "a page of transactions; `next` is the `before` of the "
                        "next page. CSV (`format=csv` or `Accept: text/csv`): a header row of "
                        "the same fields",
                        "content": {
                            "application/json": {"schema": ref("TransactionList")},
                            "text/csv": {"schema": STR},
                        },
                    }
                },
                {404: "`unknown_account`: the SQL ledger has no such account", 503: sql_503},
                params=[
                    ACCOUNT,
                    query("limit", LIMIT_1000 | {"default": 100}, "page size"),
                    query(
                        "before",
                        {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                        "only transactions with a seq below this (the previous page's `next`)",
                    ),
                    query(
                        "type",
                        {"type": "string", "enum": list(TRANSACTION_TYPES)},
                        "only this type",
                    ),
                    query("format", {"type": "string", "enum": ["json", "csv"]}, "the format"),
                ],
            )
        },
        "/v1/accounts/{account}/usage": {
            "get": op(
                "usage",
                "Credits used and checks, per hour or day (from the SQL ledger)",
                "reads",
                ADMIN,
                {200: json_body(ref("Usage"), "the usage series")},
                {404: "`unknown_account`", 503: sql_503},
                params=[
                    ACCOUNT,
                    query(
                        "interval",
                        {"type": "string", "enum": ["hour", "day"], "default": "hour"},
                        "the bucket size",
                    ),
                    query("since", QUERY_TIME, "start (default: 7 days before `until`)"),
                    query(
                        "until", QUERY_TIME, "end, exclusive (default: the current interval's end)"
                    ),
                ],
            )
        },
        "/v1/accounts/{account}/holds": {
            "get": op(
                "list_holds",
                "An account's active holds and the closed ones still remembered (from Redis)",
                "reads",
                ADMIN,
                {200: json_body(ref("HoldList"), "the holds")},
                {404: "`unknown_account`", 503: None},
                params=[ACCOUNT],
            )
        },
    }


def _ops_paths() -> dict[str, dict[str, Any]]:
    return {
        "/v1/admin/outbox": {
            "get": op(
                "outbox",
                "The outbox per shard: length, unwritten entries, writer lag, dead letters",
                "operations",
                ADMIN,
                {200: json_body(ref("Outbox"), "the outbox's state and the writer's")},
                {503: None},
            )
        },
        "/v1/admin/outbox/dead-letters": {
            "get": op(
                "dead_letters",
                "The entries the writer gave up on, with their error, oldest first",
                "operations",
                ADMIN,
                {200: json_body(ref("DeadLetters"), "the shard's dead letters")},
                {503: None},
                params=[
                    query("shard", {"type": "integer", "minimum": 0, "default": 0}, "the shard"),
                    query("count", LIMIT_1000 | {"default": 100}, "at most this many"),
                ],
            )
        },
        "/v1/admin/outbox/dead-letters/retry": {
            "post": op(
                "retry_dead_letters",
                "Move dead letters back into the outbox (unknown ids: 422, nothing moved)",
                "operations",
                ADMIN,
                {200: json_body(ref("DeadLettersRetried"), "the ids moved back")},
                {503: None},
                body="DeadLetterRetryRequest",
                body_required=False,
            )
        },
    }


def _billing_paths() -> dict[str, dict[str, Any]]:
    package_id = path_param("package_id", "the package's id")
    billing_503 = (
        "`billing_not_configured`: no Stripe key; `ledger_unavailable`: no SQL; "
        "`store_unavailable`: no Redis"
    )
    sql_503 = "`ledger_unavailable`: the SQL store could not be reached"
    return {
        "/v1/admin/packages": {
            "get": op(
                "list_packages",
                "Credit packages",
                "billing",
                ADMIN_OR_SERVICE,
                {200: json_body(ref("PackageList"), "the packages")},
                {503: sql_503},
                params=[query("active", BOOL, "only active packages")],
            )
        },
        "/v1/admin/packages/{package_id}": {
            "put": op(
                "put_package",
                "Create or replace a credit package (`active: false` retires it)",
                "billing",
                ADMIN,
                {
                    200: json_body(ref("Package"), "replaced"),
                    201: json_body(ref("Package"), "created"),
                },
                {
                    422: "`invalid_request`: e.g. a price or currency other than its Stripe "
                    "Price's (checked when Stripe is configured), or an amount Stripe cannot "
                    "charge in that currency",
                    502: None,
                    503: sql_503,
                },
                params=[package_id],
                body="PackageRequest",
            ),
            "get": op(
                "get_package",
                "A credit package",
                "billing",
                ADMIN_OR_SERVICE,
                {200: json_body(ref("Package"), "the package")},
                {404: "`unknown_package`", 503: sql_503},
                params=[package_id],
            ),
        },
        "/v1/checkout": {
            "post": op(
                "checkout",
                "A Stripe Checkout Session for an account: its URL",
                "billing",
                ADMIN_OR_SERVICE,
                {201: json_body(ref("CheckoutSession"), "the session")},
                {
                    404: "`unknown_account`, `unknown_package`",
                    409: "`idempotency_conflict`: the idempotency_key was used with other "
                    "parameters",
                    502: None,
                    503: billing_503,
                },
                body="CheckoutRequest",
            )
        },
        "/v1/checkout/setup": {
            "post": op(
                "setup_checkout",
                "A Stripe Checkout Session in setup mode: the customer saves a card without "
                "paying (it becomes the auto top-up's card)",
                "billing",
                ADMIN_OR_SERVICE,
                {201: json_body(ref("CheckoutSession"), "the session")},
                {
                    404: "`unknown_account`",
                    409: "`idempotency_conflict`: the idempotency_key was used with other "
                    "parameters",
                    502: None,
                    503: billing_503,
                },
                body="SetupCheckoutRequest",
            )
        },
        "/v1/admin/accounts/{account}/payment-methods": {
            "get": op(
                "list_payment_methods",
                "The payment methods saved on the account's Stripe customer",
                "billing",
                ADMIN,
                {200: json_body(ref("PaymentMethods"), "its saved payment methods")},
                {404: "`unknown_account`", 502: None, 503: billing_503},
                params=[ACCOUNT],
            )
        },
        "/v1/admin/accounts/{account}/billing": {
            "put": op(
                "put_billing_profile",
                "Set an account's billing email (on its Stripe customer: receipts go there)",
                "billing",
                ADMIN,
                {200: json_body(ref("BillingProfile"), "the billing profile")},
                {404: "`unknown_account`", 502: None, 503: billing_503},
                params=[ACCOUNT],
                body="BillingProfileRequest",
            )
        },
        "/v1/admin/accounts/{account}/auto-topup": {
            "put": op(
                "put_auto_topup",
                "Set an account's auto top-up",
                "billing",
                ADMIN,
                {200: json_body(ref("AutoTopUp"), "the auto top-up")},
                {
                    404: "`unknown_account`, `unknown_package`",
                    422: "`invalid_request`: e.g. a payment method not saved on the account's "
                    "Stripe customer",
                    502: None,
                    503: billing_503,
                },
                params=[ACCOUNT],
                body="AutoTopUpRequest",
            ),
            "get": op(
                "get_auto_topup",
                "An account's auto top-up, with its failures",
                "billing",
                ADMIN,
                {200: json_body(ref("AutoTopUp"), "the auto top-up")},
                {404: "`unknown_account`: none set", 503: sql_503},
                params=[ACCOUNT],
            ),
            "delete": op(
                "delete_auto_topup",
                "Remove an account's auto top-up",
                "billing",
                ADMIN,
                {200: json_body(ref("Deleted"), "whether there was one")},
                {503: sql_503},
                params=[ACCOUNT],
            ),
        },
        "/v1/admin/accounts/{account}/notifications": {
            "put": op(
                "put_notifications",
                "Where low-balance webhooks go; returns the signing secret (only here)",
                "billing",
                ADMIN,
                {200: json_body(ref("NotificationEndpoint"), "the endpoint and its secret")},
                {
                    404: "`unknown_account`",
                    422: "`invalid_request`: a malformed URL, or one naming a non-public "
                    "address (loopback, private, link-local, CGNAT, multicast, reserved; "
                    "unless SIDECAR_NOTIFY_ALLOW_PRIVATE)",
                    503: sql_503,
                },
                params=[ACCOUNT],
                body="NotificationRequest",
            ),
            "get": op(
                "get_notifications",
                "An account's webhook endpoint and its recent deliveries",
                "billing",
                ADMIN,
                {200: json_body(ref("Notifications"), "the endpoint and deliveries")},
                {503: sql_503},
                params=[ACCOUNT],
            ),
            "delete": op(
                "delete_notifications",
                "Remove an account's webhook endpoint",
                "billing",
                ADMIN,
                {200: json_body(ref("Deleted"), "whether there was one")},
                {503: sql_503},
                params=[ACCOUNT],
            ),
        },
        "/webhooks/stripe": {
            "post": op(
                "stripe_webhook",
                "Stripe's webhook: verified, stored, acknowledged (the worker processes it)",
                "billing",
                [{"stripeSignature": []}],
                {200: json_body(ref("WebhookReceived"), "stored (or a duplicate)")},
                {
                    400: "`invalid_signature`: missing, wrong, stale or not a Stripe event",
                    413: "`request_too_large`: the body is over SIDECAR_STRIPE_WEBHOOK_MAX_BYTES "
                    "(5 MiB by default)",
                    503: "`billing_not_configured`: no webhook secret; `ledger_unavailable`",
                },
                description="No bearer token: the `Stripe-Signature` header authenticates "
                "the raw body (any of SIDECAR_STRIPE_WEBHOOK_SECRETS).",
            )
            | {
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ANY_OBJECT}},
                }
            }
        },
        "/v1/admin/billing/events": {
            "get": op(
                "list_billing_events",
                "Stored Stripe events, newest first (`status=dead`: the dead letters)",
                "billing",
                ADMIN,
                {200: json_body(ref("BillingEvents"), "the events")},
                {503: sql_503},
                params=[
                    query(
                        "status",
                        {
                            "type": "string",
                            "enum": [
                                "received",
                                "processing",
                                "retry",
                                "processed",
                                "ignored",
                                "dead",
                            ],
                        },
                        "only events in this state",
                    ),
                    query("limit", LIMIT_1000 | {"default": 100}, "at most this many"),
                ],
            )
        },
        "/v1/admin/billing/status": {
            "get": op(
                "billing_status",
                "Stripe events and webhook deliveries by status (`dead` ones need a look)",
                "billing",
                ADMIN,
                {200: json_body(ref("BillingStatus"), "the counts")},
                {503: sql_503},
            )
        },
        "/v1/admin/billing/events/{event_id}/retry": {
            "post": op(
                "retry_billing_event",
                "Process a dead or retrying Stripe event again",
                "billing",
                ADMIN,
                {200: json_body(ref("EventRetried"), "queued again")},
                {422: "`invalid_request`: no dead or retrying event with that id", 503: sql_503},
                params=[
                    path_param(
                        "event_id",
                        "the Stripe event's id",
                        {"type": "string", "minLength": 1, "maxLength": 255},
                    )
                ],
            )
        },
    }


def _proxy_paths() -> dict[str, dict[str, Any]]:
    headers = {
        "X-Credits-Reason": {"schema": STR, "description": "why (allowed, or the denial)"},
        "X-Credits-Account": {"schema": STR, "description": "the key's account"},
        "X-Credits-Balance": {"schema": INT, "description": "the balance after the charge"},
        "X-Credits-Cost": {"schema": INT, "description": "what the request cost"},
        "X-Credits-Transaction": {"schema": STR, "description": "the charge's transaction"},
    }

    def outcome(description: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return json_body(ref("AuthOutcome"), description) | {
            "headers": {**headers, **(extra or {})}
        }

    denials = {
        400: outcome(
            "`invalid_path`, `invalid_method`, `invalid_header`, `invalid_cost_header`",
            {"X-Credits-Field": {"schema": STR, "description": "the header (or path) refused"}},
        ),
        401: outcome("`missing_api_key`, `invalid_api_key`", WWW_AUTHENTICATE),
        402: outcome("`insufficient_credits`"),
        403: outcome("`route_denied`"),
        429: outcome("`rate_limited`", RETRY_AFTER),
        503: outcome("`store_unavailable` (failure policy closed)"),
    }
    nginx_403 = {
        "X-Credits-Deny-Status": {
            "schema": INT,
            "description": "the real status (400, 402, 403, 429, 503) for the nginx config",
        }
    }
    contracts = {
        "/auth/nginx": (
            "nginx auth_request",
            "Method and URI from `X-Original-Method` / `X-Original-URI`. nginx honours only "
            "2xx, 401 and 403 from the subrequest: every other denial is 403 with the real "
            "status in `X-Credits-Deny-Status` (the shipped config maps it back).",
            {
                200: outcome("allowed (and charged)"),
                401: denials[401],
                403: outcome("denied; the real status is in X-Credits-Deny-Status", nginx_403),
            },
            [
                {"name": "X-Original-Method", "in": "header", "schema": STR},
                {"name": "X-Original-URI", "in": "header", "schema": STR},
            ],
        ),
        "/auth/forward": (
            "Traefik ForwardAuth, Caddy forward_auth",
            "Method and URI from `X-Forwarded-Method` / `X-Forwarded-Uri`; a denial reaches "
            "the client as it is.",
            {200: outcome("allowed (and charged)"), **denials},
            [
                {"name": "X-Forwarded-Method", "in": "header", "schema": STR},
                {"name": "X-Forwarded-Uri", "in": "header", "schema": STR},
            ],
        ),
        "/auth/envoy": (
            "Envoy ext_authz (HTTP service, path_prefix /auth/envoy)",
            "The original request itself, under the prefix; exactly 200 allows; a denial "
            "reaches the client as it is.",
            {200: outcome("allowed (and charged)"), **denials},
            [],
        ),
    }
    out: dict[str, dict[str, Any]] = {}
    for path, (proxy, description, responses, params) in contracts.items():
        paths = [path] + ([f"{path}/{{tail}}"] if path == "/auth/envoy" else [])
        for p in paths:
            extra = [] if p == path else [path_param("tail", "the original path", STR)]
            out[p] = {
                method: op(
                    f"auth_{p.split('/')[2]}{'_tail' if p != path else ''}_{method}",
                    f"Decide and charge a proxied request ({proxy})",
                    "proxy",
                    API_KEY,
                    responses,
                    params=[*extra, *params],
                    description=description + " Answers any method; the API key is "
                    "`Authorization: Bearer <key>` or `X-API-Key`.",
                )
                for method in ANY_METHODS
            }
    return out


def _service_paths() -> dict[str, dict[str, Any]]:
    return {
        "/healthz": {
            "get": op(
                "healthz",
                "Liveness: the process answers, and so does its embedded Redis",
                "service",
                PUBLIC,
                {
                    200: json_body(ref("Health"), "alive (pid: which worker process answered)"),
                    503: json_body(
                        ref("Unhealthy"),
                        "the embedded Redis of `serve` does not answer (it is being restarted "
                        "from its AOF; if that keeps failing, restart the sidecar)",
                    ),
                },
                description="With an external Redis (SIDECAR_REDIS_URL), 200 whenever the "
                "process answers: Redis's state is readiness's business (`/readyz`).",
            )
        },
        "/readyz": {
            "get": op(
                "readyz",
                "Readiness: Redis accepts writes (and what else the sidecar needs to serve)",
                "service",
                PUBLIC,
                {
                    200: json_body(ref("Readiness"), "ready"),
                    503: json_body(ref("Readiness"), "not ready: the failing checks"),
                },
                description="200 when Redis accepts a write, the ledger's scripts are loaded "
                "(missing ones are loaded here) and the writer's lag is within "
                "SIDECAR_READY_MAX_LAG_S, whatever SQL's state (`sql` is reported); otherwise "
                "503. `/healthz` is liveness.",
            )
        },
        "/metrics": {
            "get": op(
                "metrics",
                "Prometheus metrics (text exposition format)",
                "service",
                [{}, {"metricsToken": []}],
                {
                    200: {
                        "description": "the metrics",
                        "content": {"text/plain": {"schema": STR}},
                    },
                    401: error(401, "`unauthorized`: SIDECAR_METRICS_TOKEN is set, not given"),
                },
                description="Open unless SIDECAR_METRICS_TOKEN is set; then that bearer "
                "token is required.",
            )
        },
        "/openapi.json": {
            "get": op(
                "openapi",
                "This document",
                "service",
                PUBLIC,
                {200: json_body(ANY_OBJECT, "the OpenAPI 3.1 description of the API")},
            )
        },
        "/console": {
            "get": op(
                "console",
                "The operator console (HTML; it asks for the admin token, loading it needs none)",
                "service",
                PUBLIC,
                {200: {"description": "the page", "content": {"text/html": {"schema": STR}}}},
            )
        },
    }


@functools.cache
def _spec() -> dict[str, Any]:
    paths = {
        **_service_paths(),
        **_accounts_paths(),
        **_read_paths(),
        **_ops_paths(),
        **_billing_paths(),
        **_proxy_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "credit-sidecar",
            "version": __version__,
            "description": "Prepaid API credits enforced on every request by an atomic Redis "
            'ledger. Errors are `{"error": {"code", "message", "field"?}}`; integers must be '
            "JSON integers; a rejected request changes nothing.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [
            {"name": name}
            for name in (
                "checks",
                "accounts",
                "holds",
                "keys",
                "reads",
                "billing",
                "operations",
                "proxy",
                "service",
            )
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted({**request_schemas(), **response_schemas()}.items())),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin token (SIDECAR_ADMIN_TOKEN)",
                },
                "serviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the service token (SIDECAR_SERVICE_TOKEN)",
                },
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a client's API key (csk_…)",
                },
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the metrics token (SIDECAR_METRICS_TOKEN), when set",
                },
                "stripeSignature": {"type": "apiKey", "in": "header", "name": "Stripe-Signature"},
            },
        },
    }
