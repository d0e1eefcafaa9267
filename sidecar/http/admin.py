"""Read-only admin routes for consoles and the CLI: the accounts of the SQL ledger, an
account's transactions (JSON or CSV) and usage over time (both from SQL, so they lag Redis by
the writer's lag), and its holds (from Redis, current). The reads themselves are the ledger's
read module's (sidecar/ledger/reads.py).

Every query parameter is validated (422 naming it) before anything is read; unknown
parameters are refused by name, like unknown body fields.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from aiohttp import web
from msgspec import UNSET

from sidecar import errors
from sidecar.http.auth import READ
from sidecar.http.contract import Call, Out, Routes
from sidecar.http.queries import (
    AccountsQuery,
    NoQuery,
    TransactionsQuery,
    UsageQuery,
)
from sidecar.http.read_responses import (
    AccountList,
    AccountSummary,
    HoldBucket,
    HoldList,
    HoldRecord,
    Transaction,
    TransactionList,
    Usage,
    UsageGroup,
    UsagePoint,
)
from sidecar.http.schemas import (
    AccountPath,
)
from sidecar.http.state import BILLING, LEDGER
from sidecar.ledger.reads import Reads, TransactionRow
from sidecar.ledger.units import iso

admin_routes = Routes()

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
SQL_503 = "`ledger_unavailable`: the SQL ledger could not be reached"


def _reads(call: Call[Any, Any, Any]) -> Reads:
    return Reads(call.app[LEDGER], call.app[BILLING].sql)


@admin_routes.route(
    "GET",
    "/v1/admin/accounts",
    "Accounts, ordered by id (from the SQL ledger)",
    tag="reads",
    auth=READ,
    query=AccountsQuery,
    responses={200: Out(AccountList, "a page of accounts; `next` for the next")},
    errors={503: SQL_503},
)
async def list_accounts(call: Call[None, AccountsQuery, None]) -> AccountList:
    q = call.query
    page, nxt = await _reads(call).accounts(q.limit, q.after, q.prefix)
    return AccountList(
        accounts=[
            AccountSummary(
                account=r.account,
                balance=r.balance,
                debt=r.debt,
                created_at=iso(r.created_ms),
                seq=r.seq,
            )
            for r in page
        ],
        next=nxt,
    )


# -- transactions ----------------------------------------------------------------------------


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


def _csv_response(account: str, rows: list[TransactionRow], nxt: int | None) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(TRANSACTION_FIELDS)
    for r in rows:
        cells = {
            "id": r.id,
            "seq": r.seq,
            "type": r.type,
            "amount": r.amount,
            "balance": r.balance,
            "debt": r.debt,
            "created_at": iso(r.created_ms),
            "description": r.description,
            "idempotency_key": r.idempotency_key,
            "hold_id": r.hold_id,
            "source_transaction_id": r.source_transaction_id,
            "key_id": r.key_id,
            "route": r.route,
            "metadata": r.metadata,  # the JSON text
        }
        writer.writerow([_csv_cell(cells[f]) for f in TRANSACTION_FIELDS])
    headers = {"Content-Disposition": f'attachment; filename="{account}-transactions.csv"'}
    if nxt is not None:
        headers["X-Next-Before"] = str(nxt)
    return web.Response(
        text=out.getvalue(), content_type="text/csv", charset="utf-8", headers=headers
    )


@admin_routes.route(
    "GET",
    "/v1/accounts/{account}/transactions",
    "An account's transactions, newest first (from the SQL ledger)",
    operation_id="list_transactions",
    tag="reads",
    auth=READ,
    params=AccountPath,
    query=TransactionsQuery,
    responses={
        200: Out(
            TransactionList,
            "a page of transactions; `next` is the `before` of the next page. CSV "
            "(`format=csv` or `Accept: text/csv`): a header row of the same fields",
            content={"text/csv": {"type": "string"}},
        )
    },
    errors={404: "`unknown_account`: the SQL ledger has no such account", 503: SQL_503},
)
async def transactions(
    call: Call[AccountPath, TransactionsQuery, None],
) -> TransactionList | web.Response:
    """An account's transactions from SQL, newest first, ``limit`` at a time; ``next`` is the
    ``before`` of the following page. ``format=csv`` (or ``Accept: text/csv``) gives CSV."""
    account, q = call.path.account, call.query
    as_csv = _wants_csv(call.request, q.format)
    rows, nxt = await _reads(call).transactions(account, q.limit, q.before, q.type)
    if as_csv:
        return _csv_response(account, rows, nxt)
    return TransactionList(
        account=account,
        transactions=[
            Transaction(
                id=r.id,
                seq=r.seq,
                type=r.type,
                amount=r.amount,
                balance=r.balance,
                debt=r.debt,
                created_at=iso(r.created_ms),
                description=r.description,
                idempotency_key=r.idempotency_key,
                hold_id=r.hold_id,
                source_transaction_id=r.source_transaction_id,
                key_id=r.key_id,
                route=r.route,
                metadata=r.metadata_value(),
            )
            for r in rows
        ],
        next=nxt,
    )


# -- usage -----------------------------------------------------------------------------------


@admin_routes.route(
    "GET",
    "/v1/accounts/{account}/usage",
    "Credits used and checks, per hour or day (from the SQL ledger)",
    tag="reads",
    auth=READ,
    params=AccountPath,
    query=UsageQuery,
    responses={200: Out(Usage, "the usage series")},
    errors={404: "`unknown_account`", 503: SQL_503},
)
async def usage(call: Call[AccountPath, UsageQuery, None]) -> Usage:
    """Credits used and checks made per hour or day (UTC), from SQL: one point per interval
    from ``since`` (rounded down to the interval's start; default 7 days before ``until``) to
    ``until`` (exclusive; default the end of the current interval), zeros included."""
    account, q = call.path.account, call.query
    interval = q.interval
    step, longest = INTERVALS[interval]
    until, since = q.until, q.since
    if until is None:  # the end of the current interval: its point counts up to now
        until = (call.app[LEDGER].clock() // step + 1) * step
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
    points = await _reads(call).usage(account, step, start, until, q.by)
    return Usage(
        account=account,
        interval=interval,
        by=UNSET if q.by is None else q.by,
        points=[
            UsagePoint(
                start=iso(p.start_ms) or "",
                credits=p.credits,
                checks=p.checks,
                groups=UNSET
                if p.groups is None
                else [UsageGroup(key=g.key, credits=g.credits, checks=g.checks) for g in p.groups],
            )
            for p in points
        ],
    )


# -- holds -----------------------------------------------------------------------------------


@admin_routes.route(
    "GET",
    "/v1/accounts/{account}/holds",
    "An account's active holds and the closed ones still remembered (from Redis)",
    operation_id="list_holds",
    tag="reads",
    auth=READ,
    params=AccountPath,
    query=NoQuery,
    responses={200: Out(HoldList, "the holds")},
    errors={404: "`unknown_account`", 503: None},
)
async def holds(call: Call[AccountPath, NoQuery, None]) -> HoldList:
    """The account's holds from Redis: active ones and closed ones still remembered (for the
    idempotency retention), newest first. Lapsed holds are released first, as on a balance."""
    account = call.path.account
    found = await _reads(call).holds(account)
    return HoldList(
        account=account,
        holds=[
            HoldRecord(
                hold_id=h.hold_id,
                amount=h.amount,
                state=h.state,
                created_at=iso(h.created_ms),
                expires_at=iso(h.expires_ms),
                ttl_ms=h.ttl_ms,
                transaction_id=h.transaction_id,
                balance_after=h.balance_after,
                charged=h.charged,
                forfeited=h.forfeited,
                close_transaction_id=h.close_transaction_id,
                buckets=[HoldBucket(bucket=b, amount=n) for b, n in h.buckets],
            )
            for h in found
        ],
    )
