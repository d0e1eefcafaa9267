"""`credit-sidecar accounts list|show|create`, `balance` and `grants add` against a real `serve`
process, as a user runs them (the admin token is found in the data dir)."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.cli.conftest import call, cli
from tests.ports import free_port


def ok(env: dict[str, str], *args: str) -> str:
    out = cli(env, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def listed(env: dict[str, str], count: int, *args: str) -> dict[str, Any]:
    """`accounts list --json` once the writer has put ``count`` accounts with a grant in SQL."""
    body: dict[str, Any] = {}
    deadline = time.monotonic() + 60  # generous: a busy CI machine
    while time.monotonic() < deadline:
        body = json.loads(ok(env, "accounts", "list", "--json", *args))
        if len(body["accounts"]) == count and all(a["seq"] > 0 for a in body["accounts"]):
            return body
        time.sleep(0.05)
    raise AssertionError(f"the writer did not catch up: {body}")


def test_create_then_update_show_and_balance(served: dict[str, str]) -> None:
    out = ok(
        served,
        "accounts",
        "create",
        "cli-a",
        "--overdraft-limit",
        "5",
        "--low-balance-threshold",
        "10",
        "--rate-limit",
        "50",
    )
    assert (
        out.strip() == "account cli-a created: overdraft limit 5, rate limit 50/1000ms (burst 50)"
    )
    again = ok(served, "accounts", "create", "cli-a", "--json")
    assert json.loads(again)["created"] is False  # settings replaced: overdraft back to 0
    out = ok(served, "accounts", "create", "cli-a", "--overdraft-limit", "5")
    assert "updated (settings replaced)" in out

    ok(served, "grants", "add", "cli-a", "--credits", "30", "--id", "g-show", "--reason", "t")
    shown = ok(served, "accounts", "show", "cli-a")
    assert "balance              30" in shown and "overdraft limit      5" in shown
    assert "g-show" in shown and "BUCKET" in shown
    assert ok(served, "balance", "cli-a").startswith("30  (available 30, held 0, debt 0)")
    as_json = json.loads(ok(served, "balance", "cli-a", "--json"))  # the API's JSON
    assert as_json == call(served, "GET", "/v1/accounts/cli-a/balance")[1]
    assert as_json["balance"] == 30 and as_json["buckets"][0]["id"] == "g-show"
    assert json.loads(ok(served, "accounts", "show", "cli-a", "--json"))["buckets"][0]["id"] == (
        "g-show"
    )


def test_grants_add_is_idempotent_by_id_and_validated_by_the_api(served: dict[str, str]) -> None:
    ok(served, "accounts", "create", "cli-g")
    args = [
        "grants",
        "add",
        "cli-g",
        "--credits",
        "100",
        "--id",
        "order-1",
        "--priority",
        "-1",
        "--reason",
        "t",
    ]
    args += ["--source", "promo", "--expires-at", "2030-01-01T00:00:00Z"]
    first = ok(served, *args)
    assert "granted 100 credits to cli-g as order-1" in first and "balance 100" in first
    assert "a replay: nothing changed" in ok(served, *args)
    bucket = json.loads(ok(served, "accounts", "show", "cli-g", "--json"))["buckets"][0]
    assert bucket["priority"] == -1 and bucket["source"] == "promo"
    assert bucket["expires_at"] == "2030-01-01T00:00:00.000Z"

    generated = ok(served, "grants", "add", "cli-g", "--credits", "5", "--reason", "t")
    assert " as cli-" in generated and "balance 105" in generated  # the id is shown to reuse

    bad = cli(
        served, "grants", "add", "cli-g", "--credits", "1", "--expires-at", "soon", "--reason", "t"
    )
    assert bad.returncode == 1 and "422 invalid_request: expires_at" in bad.stderr
    bad = cli(served, "grants", "add", "cli-g", "--credits", "0", "--id", "zero", "--reason", "t")
    assert bad.returncode == 1 and "credits" in bad.stderr
    missing = cli(served, "grants", "add", "cli-nobody", "--credits", "1", "--reason", "t")
    assert missing.returncode == 1 and "404 unknown_account" in missing.stderr


def test_list_reads_the_sql_ledger_by_prefix_page_by_page(served: dict[str, str]) -> None:
    for name in ("cli-l1", "cli-l2", "cli-l3"):
        ok(served, "accounts", "create", name)
        ok(served, "grants", "add", name, "--credits", "7", "--id", "g", "--reason", "t")
    body = listed(served, 3, "--prefix", "cli-l")
    assert [a["account"] for a in body["accounts"]] == ["cli-l1", "cli-l2", "cli-l3"]
    assert all(a["balance"] == 7 for a in body["accounts"])

    page = cli(served, "accounts", "list", "--prefix", "cli-l", "--limit", "2")
    assert page.returncode == 0 and "more: --after cli-l2" in page.stderr
    lines = page.stdout.splitlines()
    assert lines[0].split() == ["ACCOUNT", "BALANCE", "DEBT", "SEQ", "CREATED"]
    assert [ln.split()[0] for ln in lines[1:]] == ["cli-l1", "cli-l2"]
    rest = ok(served, "accounts", "list", "--prefix", "cli-l", "--after", "cli-l2")
    assert [ln.split()[0] for ln in rest.splitlines()[1:]] == ["cli-l3"]
    every = json.loads(
        ok(served, "accounts", "list", "--prefix", "cli-l", "--limit", "1", "--all", "--json")
    )
    assert len(every["accounts"]) == 3 and every["next"] is None


def test_errors_exit_1_with_the_apis_reason(served: dict[str, str]) -> None:
    out = cli(served, "accounts", "show", "cli-nobody")
    assert out.returncode == 1 and "404 unknown_account" in out.stderr
    out = cli(served, "accounts", "create", "bad id")
    assert out.returncode == 1 and "422 invalid_request: account" in out.stderr
    out = cli(served, "accounts", "create", "cli-x", "--overdraft-limit", "-1")
    assert out.returncode == 1 and "overdraft_limit" in out.stderr
    out = cli(served, "accounts", "list", "--limit", "0")
    assert out.returncode == 2  # click refuses it before any call
    out = cli(served, "balance", "acme", "--url", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1 and "cannot reach the sidecar" in out.stderr
