"""``credit-sidecar plans``: define, list, show and delete plans (docs/plans.md) through the
admin API."""

from __future__ import annotations

from typing import Any

import click

from sidecar.cli.common import (
    AsciiInt,
    admin_client,
    echo_json,
    json_option,
    rate_limit_body,
    rate_limit_options,
    run_admin,
    url_option,
)
from sidecar.cli.tables import echo_table, rate_limit_text, seg

INTERVALS = click.Choice(["day", "week", "month", "year"])


@click.group()
def plans() -> None:
    """Plans: an allowance of credits each period, and limits, for the accounts on them."""


@plans.command("put")
@click.argument("plan")
@click.option("--name", required=True, help="shown to customers")
@click.option("--credits", type=AsciiInt(), required=True, help="the allowance, per period")
@click.option("--interval", type=INTERVALS, required=True, help="the period's unit")
@click.option(
    "--interval-count", type=AsciiInt(), default=1, show_default=True, help="units per period"
)
@click.option(
    "--mode",
    type=click.Choice(["reset", "accumulate"]),
    default="reset",
    show_default=True,
    help="reset: what is unused expires at the period's end; accumulate: it stays",
)
@click.option("--rollover-max", type=AsciiInt(), help="accumulate: keep at most this much unused")
@click.option(
    "--priority", type=AsciiInt(), default=-1, show_default=True, help="the allowance's burn order"
)
@rate_limit_options("an account on the plan")
@click.option("--spend-limit", type=AsciiInt(), help="credits an account may spend per window")
@click.option("--spend-interval", type=INTERVALS, help="the window (default: for the lifetime)")
@click.option("--spend-interval-count", type=AsciiInt(), default=1, show_default=True)
@click.option("--default", "is_default", is_flag=True, help="new accounts get this plan")
@url_option
@json_option
def put(
    plan: str,
    name: str,
    credits: int,
    interval: str,
    interval_count: int,
    mode: str,
    rollover_max: int | None,
    priority: int,
    rate_limit: int | None,
    period_ms: int,
    burst: int | None,
    spend_limit: int | None,
    spend_interval: str | None,
    spend_interval_count: int,
    is_default: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Define PLAN or replace its definition (every setting as given)."""
    allowance: dict[str, Any] = {
        "credits": credits,
        "interval": interval,
        "interval_count": interval_count,
        "mode": mode,
        "priority": priority,
    }
    if rollover_max is not None:
        allowance["rollover_max"] = rollover_max
    body: dict[str, Any] = {
        "name": name,
        "allowance": allowance,
        "rate_limit": rate_limit_body(rate_limit, period_ms, burst),
        "default": is_default,
    }
    if spend_limit is not None:
        body["spend_limit"] = {
            "credits": spend_limit,
            "interval": spend_interval,
            "interval_count": spend_interval_count,
        }
    elif spend_interval is not None:
        raise click.UsageError("--spend-interval needs --spend-limit")
    path = f"/v1/plans/{seg(plan)}"
    found = run_admin(admin_client(url), lambda c: c.request("PUT", path, body))
    if as_json:
        echo_json(found)
    else:
        click.echo(f"plan {found['plan']}: {_allowance_text(found['allowance'])}")


@plans.command("list")
@url_option
@json_option
def list_cmd(url: str | None, as_json: bool) -> None:
    """Every plan, by id."""
    found = run_admin(admin_client(url), lambda c: c.request("GET", "/v1/plans"))
    if as_json:
        echo_json(found)
        return
    echo_table(
        ("PLAN", "NAME", "ALLOWANCE", "RATE LIMIT", "SPEND LIMIT", "DEFAULT", "ACCOUNTS"),
        [
            (
                p["plan"],
                p["name"],
                _allowance_text(p["allowance"]),
                rate_limit_text(p["rate_limit"]),
                _spend_text(p["spend_limit"]),
                "yes" if p["default"] else "",
                str(p["accounts"]),
            )
            for p in found["plans"]
        ],
    )


@plans.command("get")
@click.argument("plan")
@url_option
def get(plan: str, url: str | None) -> None:
    """PLAN's definition and how many accounts are on it (JSON)."""
    path = f"/v1/plans/{seg(plan)}"
    echo_json(run_admin(admin_client(url), lambda c: c.request("GET", path)))


@plans.command("delete")
@click.argument("plan")
@url_option
def delete(plan: str, url: str | None) -> None:
    """Delete PLAN (refused while any account is on it)."""
    path = f"/v1/plans/{seg(plan)}"
    run_admin(admin_client(url), lambda c: c.request("DELETE", path))
    click.echo(f"deleted plan {plan}")


def _per(interval: str, n: int) -> str:
    return interval if n == 1 else f"{n} {interval}s"


def _allowance_text(a: dict[str, Any]) -> str:
    text = f"{a['credits']} per {_per(a['interval'], a['interval_count'])}, {a['mode']}"
    if a.get("rollover_max") is not None:
        text += f" (rollover max {a['rollover_max']})"
    return text


def _spend_text(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    if s["interval"] is None:
        return f"{s['credits']} lifetime"
    return f"{s['credits']} per {_per(s['interval'], s['interval_count'])}"
