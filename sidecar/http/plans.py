"""Plan routes (docs/plans.md): define or replace a plan, list them, read one, delete one (refused
while accounts are on it). Admin token."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sidecar.http.auth import ADMIN, READ
from sidecar.http.contract import Audited, Call, Out, Reply, Routes, via_get
from sidecar.http.responses import AllowanceView, PlanList, PlanView
from sidecar.http.schemas import PlanPath, PlanRequest
from sidecar.http.state import PLANS
from sidecar.http.views import rate_limit_view, spend_limit_view
from sidecar.ledger.results import Plan

routes = Routes()


async def now_get_plan(call: Call[Any, Any, Any]) -> Any:
    """What ``get_plan`` answers before a change (its audit entry's ``before``)."""
    return await via_get(get_plan, call)


PLAN_404 = "`unknown_plan`"


def plan_view(plan_id: str, p: Plan, accounts: int) -> PlanView:
    a = p.allowance
    return PlanView(
        plan=plan_id,
        name=p.name,
        allowance=AllowanceView(
            credits=a.credits,
            interval=a.interval,
            interval_count=a.interval_count,
            mode=a.mode,
            rollover_max=a.rollover_max,
            priority=a.priority,
            trigger=a.trigger,
        ),
        rate_limit=rate_limit_view(p.rate_limit),
        spend_limit=spend_limit_view(p.spend_limit),
        default=p.default,
        accounts=accounts,
    )


@routes.route(
    "PUT",
    "/v1/plans/{plan}",
    "Define a plan or replace its definition (its limits apply at once, its allowance from "
    "each account's next period)",
    tag="plans",
    auth=ADMIN,
    audit=Audited("plan.put", before=now_get_plan),
    params=PlanPath,
    body=PlanRequest,
    responses={
        200: Out(PlanView, "replaced"),
        201: Out(PlanView, "created"),
    },
    errors={409: "`plan_busy`: the plan is being deleted", 503: None},
)
async def put_plan(call: Call[PlanPath, None, PlanRequest]) -> Reply:
    plan = call.body.to_plan()
    plans = call.app[PLANS]
    created = await plans.put(call.path.plan, plan)
    return Reply(
        plan_view(call.path.plan, plan, await plans.accounts(call.path.plan)),
        201 if created else 200,
    )


@routes.route(
    "GET",
    "/v1/plans",
    "Every plan",
    tag="plans",
    auth=READ,
    responses={200: Out(PlanList, "the plans, by id")},
    errors={503: None},
)
async def list_plans(call: Call[None, None, None]) -> PlanList:
    plans = call.app[PLANS]
    found = await plans.list()
    counts = await plans.accounts_on(list(found))
    return PlanList(plans=[plan_view(k, p, counts[k]) for k, p in found.items()])


@routes.route(
    "GET",
    "/v1/plans/{plan}",
    "One plan",
    tag="plans",
    auth=READ,
    params=PlanPath,
    responses={200: Out(PlanView, "the plan's definition")},
    errors={404: PLAN_404, 503: None},
)
async def get_plan(call: Call[PlanPath, None, None]) -> PlanView:
    plans = call.app[PLANS]
    plan = await plans.get(call.path.plan)
    return plan_view(call.path.plan, plan, await plans.accounts(call.path.plan))


@routes.route(
    "DELETE",
    "/v1/plans/{plan}",
    "Delete a plan (refused while any account is on it)",
    tag="plans",
    auth=ADMIN,
    audit=Audited("plan.delete", before=now_get_plan),
    params=PlanPath,
    responses={204: Out(None, "deleted")},
    errors={
        404: PLAN_404,
        409: "`plan_in_use` (the message says how many accounts are on it), `plan_busy`",
        503: None,
    },
)
async def delete_plan(call: Call[PlanPath, None, None]) -> web.Response:
    await call.app[PLANS].remove(call.path.plan)
    return web.Response(status=204)
