"""Account routes: create or replace (PUT) and change (PATCH) an account's settings, grant
credits, read the balance. All need the admin token."""

from __future__ import annotations

from typing import Any

from sidecar.http.auth import ADMIN, READ
from sidecar.http.contract import Audited, Call, Out, Reply, Routes, via_get
from sidecar.http.responses import AccountSettings, Balance, BucketView, Granted, PlanState
from sidecar.http.schemas import (
    AccountPatch,
    AccountPath,
    AccountRequest,
    GrantRequest,
)
from sidecar.http.state import LEDGER
from sidecar.http.views import rate_limit_view, spend_limit_view, spend_view
from sidecar.ledger.arguments import DEFAULT_PLAN, KEEP
from sidecar.ledger.results import AccountConfig
from sidecar.ledger.units import MAX_TIMESTAMP_MS, iso

routes = Routes()


async def now_balance(call: Call[Any, Any, Any]) -> Any:
    """What ``balance`` answers before a change (its audit entry's ``before``)."""
    return await via_get(balance, call)


ACCOUNT_404 = "`unknown_account`"


@routes.route(
    "PUT",
    "/v1/accounts/{account}",
    "Create an account or replace all its settings (those not sent are removed)",
    tag="accounts",
    auth=ADMIN,
    audit=Audited("account.put", before=now_balance),
    params=AccountPath,
    body=AccountRequest,
    responses={
        200: Out(AccountSettings, "updated"),
        201: Out(AccountSettings, "created"),
    },
    errors={503: None},
)
async def put_account(call: Call[AccountPath, None, AccountRequest]) -> Reply:
    account, req = call.path.account, call.body
    c = await call.app[LEDGER].put_account(
        account,
        overdraft_limit=req.overdraft_limit,
        low_balance_threshold=req.low_balance_threshold,
        rate_limit=req.rate_limit.to_rate_limit() if req.rate_limit else None,
        spend_limit=req.spend_limit.to_spend_limit() if req.spend_limit else None,
        plan=req.plan if "plan" in req.model_fields_set else DEFAULT_PLAN,
        plan_anchor=req.plan_anchor,
    )
    return Reply(settings_view(account, c), 201 if c.created else 200)


def settings_view(account: str, c: AccountConfig) -> AccountSettings:
    return AccountSettings(
        account=account,
        created=c.created,
        overdraft_limit=c.overdraft_limit,
        low_balance_threshold=c.low_balance_threshold,
        rate_limit=rate_limit_view(c.rate_limit),
        spend_limit=spend_limit_view(c.spend_limit),
        plan=c.plan,
        plan_anchor=iso(c.plan_anchor),
    )


@routes.route(
    "PATCH",
    "/v1/accounts/{account}",
    "Change some of an account's settings (only those sent; null removes one)",
    tag="accounts",
    auth=ADMIN,
    audit=Audited("account.patch", before=now_balance),
    params=AccountPath,
    body=AccountPatch,
    responses={200: Out(AccountSettings, "updated: every setting after the change")},
    errors={404: ACCOUNT_404, 503: None},
)
async def patch_account(call: Call[AccountPath, None, AccountPatch]) -> AccountSettings:
    req, sent = call.body, call.body.model_fields_set
    rl = req.rate_limit.to_rate_limit() if req.rate_limit else None
    spend = req.spend_limit.to_spend_limit() if req.spend_limit else None
    c = await call.app[LEDGER].update_account(
        call.path.account,
        overdraft_limit=req.overdraft_limit if "overdraft_limit" in sent else KEEP,
        low_balance_threshold=(
            req.low_balance_threshold if "low_balance_threshold" in sent else KEEP
        ),
        rate_limit=rl if "rate_limit" in sent else KEEP,
        spend_limit=spend if "spend_limit" in sent else KEEP,
        plan=req.plan if "plan" in sent else KEEP,
        plan_anchor=req.plan_anchor,
    )
    return settings_view(call.path.account, c)


@routes.route(
    "POST",
    "/v1/accounts/{account}/grants",
    "Grant credits (a bucket; once per grant_id)",
    tag="accounts",
    auth=ADMIN,
    audit=Audited("grant.create", target="grant_id"),
    params=AccountPath,
    body=GrantRequest,
    responses={
        200: Out(Granted, "a replay of the same grant"),
        201: Out(Granted, "granted"),
    },
    errors={
        404: ACCOUNT_404,
        409: None,
        422: "`invalid_request`, `balance_overflow`",
        503: None,
    },
)
async def grant(call: Call[AccountPath, None, GrantRequest]) -> Reply:
    account, req = call.path.account, call.body
    r = await call.app[LEDGER].grant(
        account,
        req.grant_id,
        req.credits,
        expires_at=req.expires_at,
        priority=req.priority,
        source=req.source,
        metadata=req.metadata,
        description=req.description,
    )
    view = Granted(
        account=account,
        grant_id=req.grant_id,
        credits=req.credits,
        transaction_id=r.transaction_id,
        balance=r.balance,
        replayed=r.replayed,
    )
    return Reply(view, 200 if r.replayed else 201)


@routes.route(
    "GET",
    "/v1/accounts/{account}/balance",
    "An account's balance, settings and live buckets (in burn order)",
    tag="accounts",
    auth=READ,
    params=AccountPath,
    responses={200: Out(Balance, "the balance")},
    errors={404: ACCOUNT_404, 503: None},
)
async def balance(call: Call[AccountPath, None, None]) -> Balance:
    b = await call.app[LEDGER].balance(call.path.account)
    return Balance(
        account=b.account,
        balance=b.balance,
        available=b.available,
        held=b.held,
        debt=b.debt,
        overdraft_limit=b.overdraft_limit,
        low_balance_threshold=b.low_balance_threshold,
        rate_limit=rate_limit_view(b.rate_limit),
        created_at=iso(b.created_at),
        buckets=[
            BucketView(
                id=k.id,
                credits=k.credits,
                remaining=k.remaining,
                held=k.held,
                created_at=iso(k.created_at),
                expires_at=iso(k.expires_at),
                priority=k.priority,
                source=k.source,
                metadata=k.metadata,
            )
            for k in b.buckets
        ],
        spend=spend_view(b.spend),
        plan=(
            None
            if b.plan is None
            else PlanState(
                plan=b.plan.plan,
                anchor=iso(b.plan.anchor),
                next_renewal_at=iso(min(b.plan.next_renewal, MAX_TIMESTAMP_MS)),
            )
        ),
    )
