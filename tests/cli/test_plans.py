"""`credit-sidecar plans put/list/get/delete` against a real `serve` process, as a user runs
them: the CLI's JSON is the API's, API errors exit 1 with the reason."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import call, cli


def test_put_list_get_and_delete_a_plan(served: dict[str, str]) -> None:
    out = cli(
        served,
        "plans",
        "put",
        "pro",
        "--name",
        "Pro",
        "--credits",
        "50000",
        "--interval",
        "month",
        "--mode",
        "accumulate",
        "--rollover-max",
        "10000",
        "--rate-limit",
        "100",
        "--spend-limit",
        "70000",
        "--spend-interval",
        "week",
        "--default",
    )
    assert out.returncode == 0, out.stderr
    assert "plan pro: 50000 per month, accumulate (rollover max 10000)" in out.stdout
    shown = json.loads(cli(served, "plans", "get", "pro").stdout)
    assert shown == call(served, "GET", "/v1/plans/pro")[1]
    assert shown["default"] is True and shown["spend_limit"]["interval"] == "week"
    assert shown["rate_limit"] == {"requests": 100, "period_ms": 1000, "burst": 100}

    cheap = ("--name", "Basic", "--credits", "10", "--interval", "day", "--interval-count", "7")
    assert cli(served, "plans", "put", "basic", *cheap).returncode == 0
    listed = cli(served, "plans", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[0] == "PLAN" and len(lines) == 3
    assert "10 per 7 days, reset" in lines[1] and "70000 per week" in lines[2]
    as_json = json.loads(cli(served, "plans", "list", "--json").stdout)
    assert [p["plan"] for p in as_json["plans"]] == ["basic", "pro"]

    out = cli(served, "plans", "delete", "basic")
    assert out.returncode == 0 and "deleted plan basic" in out.stdout
    assert [
        p["plan"] for p in json.loads(cli(served, "plans", "list", "--json").stdout)["plans"]
    ] == ["pro"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("plans", "get", "nothing"), "404 unknown_plan"),
        (("plans", "delete", "nothing"), "404 unknown_plan"),
        (
            (
                "plans",
                "put",
                "x",
                "--name",
                "X",
                "--credits",
                "5",
                "--interval",
                "day",
                "--rollover-max",
                "1",
            ),
            "422 invalid_request: allowance.rollover_max",
        ),
    ],
)
def test_api_errors_exit_1_with_the_reason(
    served: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    out = cli(served, *args)
    assert out.returncode == 1 and message in out.stderr, out.stderr


def test_an_account_goes_on_a_plan_and_off_it_with_accounts_set(served: dict[str, str]) -> None:
    out = cli(
        served, "plans", "put", "cli-free", "--name", "Free", "--credits", "7", "--interval", "day"
    )
    assert out.returncode == 0, out.stderr
    out = cli(served, "accounts", "create", "cli-p", "--plan", "cli-free")
    assert out.returncode == 0, out.stderr
    out = cli(served, "accounts", "set", "cli-p", "--overdraft-limit", "3")
    assert out.returncode == 0 and "plan cli-free, overdraft limit 3" in out.stdout
    assert cli(served, "balance", "cli-p").stdout.startswith("7  (available 7")
    out = cli(served, "accounts", "set", "cli-p", "--no-plan", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["plan"] is None
    out = cli(served, "accounts", "set", "cli-p", "--plan", "nope")
    assert out.returncode == 1 and "plan nope does not exist" in out.stderr
    out = cli(served, "accounts", "set", "cli-p", "--plan", "cli-free", "--no-plan")
    assert out.returncode == 2
