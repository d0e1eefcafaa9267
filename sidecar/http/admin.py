"""Read-only admin routes for consoles and the CLI: the accounts of the SQL ledger, an
account's transactions (JSON or CSV) and usage over time (both from SQL, so they lag Redis by
the writer's lag), and its holds (from Redis, current).

Every query parameter is validated (422 naming it) before anything is read; unknown
parameters are refused by name, like unknown body fields.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import BigInteger, func, literal_column, select

from sidecar import errors
from sidecar.billing.store import BillingStore
from sidecar.http.appkeys import BILLING, LEDGER
from sidecar.http.errors import json_response
from sidecar.http.routes import authorize, path_id, query_int, query_value
from sidecar.http.schemas import ID
from sidecar.ledger import store_call
from sidecar.persistence.models import Account, CreditTransaction, table_of
from sidecar.persistence.project import TXN_TYPES
from sidecar.redis_client import text
from sidecar.units import MAX_TIMESTAMP_MS, from_ms, iso, parse_rfc3339, to_ms

admin_routes = web.RouteTableDef()

ACCOUNTS = table_of(Account)
TXNS = table_of(CreditTransaction)
MAX_SEQ = 2**63 - 1
HOUR_MS, DAY_MS = 3_600_000, 86_400_000
# interval -> (bucket width, longest range one request may cover)
INTERVALS = {"hour": (HOUR_MS, 31 * DAY_MS), "day": (DAY_MS, 366 * DAY_MS)}
DEFAULT_USAGE_RANGE_MS = 7 * DAY_MS
TRANSACTION_FIELDS = (
    "id",
    "seq",
    "type",
    "amount",
    "balance",
    "debt",
    "created_at",
    "description",
    "idempotency_key",
    "hold_id",
    "source_transaction_id",
    "key_id",
    "route",
    "metadata",
)
# A query string decodes "+" to a space: "…T10:00:00+02:00" unencoded arrives as "… 02:00".
_SPACED_OFFSET = re.compile(r" ([0-9][0-9]:[0-9][0-9])$")


# -- query parameters ------------------------------------------------------------------------


def _only(request: web.Request, allowed: Collection[str]) -> None:
    for name in request.query:
        if name not in allowed:
            raise errors.InvalidInput(f"{name}: unknown query parameter", field=name)
        query_value(request, name)  # each at most once


def _int_param(
    request: web.Request, name: str, default: int | None, lo: int, hi: int
) -> int | None:
    if request.query.get(name, "") == "":
        return default
    return query_int(request, name, lo, lo, hi)


def _id_param(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return ID.validate_python(raw)
    except ValidationError as e:
        msg = e.errors(include_url=False)[0]["msg"]
        raise errors.InvalidInput(f"{name}: {msg}", field=name) from None


def _choice(request: web.Request, name: str, choices: Collection[str]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise errors.InvalidInput(
            f"{name}: must be one of {', '.join(sorted(choices))}", field=name
        )
    return raw


def _time_param(request: web.Request, name: str) -> int | None:
    """An RFC 3339 timestamp with an offset (or unix milliseconds) as unix milliseconds."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw.isascii() and raw.isdigit() and len(raw) <= 16:
        ms = int(raw)
    else:
        try:
            ms = parse_rfc3339(_SPACED_OFFSET.sub(r"+\1", raw))
        except ValueError:  # MissingOffset included
            raise errors.InvalidInput(
                f"{name}: must be an RFC 3339 timestamp with an offset (e.g. "
                "2030-01-01T00:00:00Z) or unix milliseconds",
                field=name,
            ) from None
    if not 0 <= ms <= MAX_TIMESTAMP_MS:
        raise errors.InvalidInput(f"{name}: out of range", field=name)
    return ms


def _store(request: web.Request) -> BillingStore:
    return request.app[BILLING].store


async def _require_sql_account(store: BillingStore, account: str) -> None:
    async with store.tx() as conn:
        found = (await conn.execute(select(ACCOUNTS.c.id).where(ACCOUNTS.c.id == account))).first()
    if found is None:
        raise errors.UnknownAccount(
            f"account {account} is not in the SQL ledger (unknown, or not written yet)"
        )


# -- accounts --------------------------------------------------------------------------------


@admin_routes.get("/v1/admin/accounts")
async def list_accounts(request: web.Request) -> web.Response:
    """The SQL ledger's accounts ordered by id: ?limit=50&after=<id>&prefix=<id prefix>."""
    authorize(request, "admin")
    _only(request, ("limit", "after", "prefix"))
    limit = _int_param(request, "limit", 50, 1, 1000) or 50
    after, prefix = _id_param(request, "after"), _id_param(request, "prefix")
    q = select(
        ACCOUNTS.c.id, ACCOUNTS.c.balance, ACCOUNTS.c.debt, ACCOUNTS.c.created_at, ACCOUNTS.c.seq
    )
    if after is not None:
        q = q.where(ACCOUNTS.c.id > after)
    if prefix is not None:
        # Exact and case-sensitive on both backends (SQLite's LIKE ignores case; "_" is in ids).
        q = q.where(func.substr(ACCOUNTS.c.id, 1, len(prefix)) == prefix)
    q = q.order_by(ACCOUNTS.c.id).limit(limit + 1)
    async with _store(request).tx() as conn:
        rows = (await conn.execute(q)).all()
    page = rows[:limit]
    return json_response(
        {
            "accounts": [
                {
                    "account": r.id,
                    "balance": int(r.balance),
                    "debt": int(r.debt),
                    "created_at": None if r.created_at is None else iso(to_ms(r.created_at)),
                    "seq": int(r.seq),
                }
                for r in page
            ],
            "next": page[-1].id if len(rows) > limit else None,
        }
    )


# -- transactions ----------------------------------------------------------------------------


def _metadata(raw: str | None) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


def _transaction(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "seq": int(r.seq),
        "type": r.type,
        "amount": int(r.amount),
        "balance": int(r.balance_after),
        "debt": int(r.debt_after),
        "created_at": iso(int(r.created_ms)),
        "description": r.description or "",
        "idempotency_key": r.idempotency_key,
        "hold_id": r.hold_id,
        "source_transaction_id": r.source_transaction_id,
        "key_id": r.key_id,
        "route": r.route,
        "metadata": r.metadata,  # JSON text here; decoded for JSON replies
    }


def _wants_csv(request: web.Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    return any(part.split(";")[0].strip() == "text/csv" for part in accept.split(","))


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    # Text opened in a spreadsheet must not run as a formula (OWASP: CSV injection): the
    # description, and the ids a client chooses (its request id is the idempotency key).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_response(account: str, rows: list[dict[str, Any]], nxt: int | None) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(TRANSACTION_FIELDS)
    for row in rows:
        writer.writerow([_csv_cell(row[f]) for f in TRANSACTION_FIELDS])
    headers = {"Content-Disposition": f'attachment; filename="{account}-transactions.csv"'}
    if nxt is not None:
        headers["X-Next-Before"] = str(nxt)
    return web.Response(
        text=out.getvalue(), content_type="text/csv", charset="utf-8", headers=headers
    )


@admin_routes.get("/v1/accounts/{account}/transactions")
async def transactions(request: web.Request) -> web.Response:
    """An account's transactions from SQL, newest first, ``limit`` at a time; ``next`` is the
    ``before`` of the following page. ``format=csv`` (or ``Accept: text/csv``) gives CSV."""
    authorize(request, "admin")
    account = path_id(request, "account")
    _only(request, ("limit", "before", "type", "format"))
    limit = _int_param(request, "limit", 100, 1, 1000) or 100
    before = _int_param(request, "before", None, 1, MAX_SEQ)
    ttype = _choice(request, "type", TXN_TYPES)
    as_csv = _wants_csv(request, _choice(request, "format", ("json", "csv")))
    store = _store(request)
    await _require_sql_account(store, account)
    q = select(
        TXNS.c.id,
        TXNS.c.seq,
        TXNS.c.type,
        TXNS.c.amount,
        TXNS.c.balance_after,
        TXNS.c.debt_after,
        TXNS.c.created_ms,
        TXNS.c.description,
        TXNS.c["metadata"],
        TXNS.c.idempotency_key,
        TXNS.c.hold_id,
        TXNS.c.source_transaction_id,
        TXNS.c.key_id,
        TXNS.c.route,
    ).where(TXNS.c.account == account)
    if ttype is not None:
        q = q.where(TXNS.c.type == ttype)
    if before is not None:
        q = q.where(TXNS.c.seq < before)
    q = q.order_by(TXNS.c.seq.desc()).limit(limit + 1)
    async with store.tx() as conn:
        found = (await conn.execute(q)).all()
    rows = [_transaction(r) for r in found[:limit]]
    nxt = rows[-1]["seq"] if len(found) > limit else None
    if as_csv:
        return _csv_response(account, rows, nxt)
    for row in rows:
        row["metadata"] = _metadata(row["metadata"])
    return json_response({"account": account, "transactions": rows, "next": nxt})


# -- usage -----------------------------------------------------------------------------------


@admin_routes.get("/v1/accounts/{account}/usage")
async def usage(request: web.Request) -> web.Response:
    """Credits used and checks made per hour or day (UTC), from SQL: one point per interval
    from ``since`` (rounded down to the interval's start; default 7 days before ``until``) to
    ``until`` (exclusive; default the end of the current interval), zeros included."""
    authorize(request, "admin")
    account = path_id(request, "account")
    _only(request, ("interval", "since", "until"))
    interval = _choice(request, "interval", INTERVALS) or "hour"
    step, longest = INTERVALS[interval]
    until = _time_param(request, "until")
    since = _time_param(request, "since")
    if until is None:  # the end of the current interval: its point counts up to now
        until = (request.app[LEDGER].clock() // step + 1) * step
    if since is None:
        since = max(0, until - DEFAULT_USAGE_RANGE_MS)
    if until <= since:
        raise errors.InvalidInput("until: must be after since", field="until")
    start = since // step * step
    if until - start > longest:
        raise errors.InvalidInput(
            f"since: at most {longest // DAY_MS} days of {interval}ly points per request",
            field="since",
        )
    store = _store(request)
    await _require_sql_account(store, account)
    # Integer division by the width as a literal (an int we chose): the same expression text
    # in SELECT and GROUP BY, which PostgreSQL needs (two bind parameters are two expressions).
    bucket = (TXNS.c.created_ms // literal_column(str(step), BigInteger)).label("bucket")
    q = (
        select(bucket, func.count(), func.sum(-TXNS.c.amount))
        .where(
            TXNS.c.account == account,
            TXNS.c.type == "usage",
            TXNS.c.created_at >= from_ms(start),
            TXNS.c.created_at < from_ms(until),
        )
        .group_by(bucket)
    )
    async with store.tx() as conn:
        found = {int(b): (int(n), int(s or 0)) for b, n, s in (await conn.execute(q)).all()}
    points = []
    for t in range(start, until, step):
        checks, credits = found.get(t // step, (0, 0))
        points.append({"start": iso(t), "credits": credits, "checks": checks})
    return json_response({"account": account, "interval": interval, "points": points})


# -- holds -----------------------------------------------------------------------------------


def _hold(hold_id: str, rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "hold_id": hold_id,
        "amount": int(rec["amount"]),
        "state": rec.get("state", "active"),
        "created_at": iso(int(rec["created"])) if "created" in rec else None,
        "expires_at": iso(int(rec["expires"])) if "expires" in rec else None,
        "ttl_ms": int(rec["ttl"]) if "ttl" in rec else None,
        "transaction_id": rec.get("tx"),
        "balance_after": int(rec["bal"]) if "bal" in rec else None,
        "charged": int(rec["charged"]) if "charged" in rec else None,
        "forfeited": int(rec["forfeited"]) if "forfeited" in rec else None,
        "close_transaction_id": rec.get("close_tx"),
        "buckets": [{"bucket": str(b), "amount": int(n)} for b, n in rec.get("alloc") or []],
    }


@admin_routes.get("/v1/accounts/{account}/holds")
async def holds(request: web.Request) -> web.Response:
    """The account's holds from Redis: active ones and closed ones still remembered (for the
    idempotency retention), newest first. Lapsed holds are released first, as on a balance."""
    authorize(request, "admin")
    account = path_id(request, "account")
    _only(request, ())
    ledger = request.app[LEDGER]
    await ledger.balance(account)  # 404 for an unknown account; processes due deadlines
    raw: dict[Any, Any] = await store_call(
        ledger.redis.hgetall(ledger.keys.for_account(account).holds), ledger.deadline_s
    )
    found = [_hold(text(k), orjson.loads(v)) for k, v in raw.items()]
    found.sort(key=lambda h: (h["created_at"] or "", h["hold_id"]), reverse=True)
    return json_response({"account": account, "holds": found})
