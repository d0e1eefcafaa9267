"""The audit trail's route (docs/audit.md): changes made through the admin API, newest first,
filtered by account, token, action and time. The admin scope: the trail shows every account's
settings and the token inventory (names, scopes, prefixes)."""

from __future__ import annotations

from sidecar.http.auth import ADMIN
from sidecar.http.contract import Call, Out, Routes
from sidecar.http.queries import AuditQueryParams
from sidecar.http.read_responses import AuditEntryView, AuditList
from sidecar.http.state import BILLING
from sidecar.ledger.units import iso
from sidecar.persistence.audit_store import AuditQuery, find

routes = Routes()


@routes.route(
    "GET",
    "/v1/audit",
    "The audit trail: every change made through the admin API, newest first",
    tag="operations",
    auth=ADMIN,
    query=AuditQueryParams,
    responses={200: Out(AuditList, "a page of entries")},
    errors={503: None},
)
async def audit_trail(call: Call[None, AuditQueryParams, None]) -> AuditList:
    q = call.query
    rows = await find(
        call.app[BILLING].sql,
        AuditQuery(q.account, q.token_id, q.action, q.since, q.until, q.before, q.limit),
    )
    entries = [
        AuditEntryView(
            seq=r.seq,
            at=iso(r.body["at"]),
            token_id=r.body["token_id"],
            token_name=r.body["token_name"],
            request_id=r.body["request_id"],
            action=r.body["action"],
            account=r.body["account"],
            target=r.body["target"],
            reason=r.body["reason"],
            before=r.body["before"],
            after=r.body["after"],
            replayed=r.body["replayed"],
            hash=r.hash,
        )
        for r in rows
    ]
    more = len(rows) == q.limit and rows[-1].seq > 1
    return AuditList(entries=entries, next=rows[-1].seq if more else None)
