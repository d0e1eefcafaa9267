"""`credit-sidecar transactions` (table, JSON, CSV), `holds` and `refunds create` against a real
`serve` process, as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest

from tests.cli.conftest import call, cli


def ok(env: dict[str, str], *args: str) -> str:
    out = cli(env, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def checked(env: dict[str, str], account: str, cost: int, key: str) -> str:
    code, body = call(
        env,
        "POST",
        "/v1/check",
        {"account": account, "cost": cost, "idempotency_key": key, "description": f"req {key}"},
    )
    assert code == 200, body
    txid: str = body["transaction_id"]
    return txid


def in_sql(env: dict[str, str], account: str, count: int) -> None:
    """Waits until the writer has put ``count`` transactions of ``account`` in SQL."""
    for _ in range(1200):  # a minute at most (a busy machine)
        out = cli(env, "transactions", account, "--json")
        if out.returncode == 0 and len(json.loads(out.stdout)["transactions"]) == count:
            return
        time.sleep(0.05)
    raise AssertionError("the writer did not catch up")


def test_transactions_as_a_table_json_and_csv(served: dict[str, str], tmp_path: Path) -> None:
    ok(served, "accounts", "create", "cli-t")
    ok(served, "grants", "add", "cli-t", "--credits", "100", "--id", "g1", "--reason", "t")
    txids = [checked(served, "cli-t", n, f"r{n}") for n in (1, 2, 3)]
    in_sql(served, "cli-t", 4)

    table = ok(served, "transactions", "cli-t").splitlines()
    assert table[0].split() == [
        "SEQ",
        "ID",
        "TYPE",
        "AMOUNT",
        "BALANCE",
        "CREATED",
        "DESCRIPTION",
    ]
    assert [ln.split()[0] for ln in table[1:]] == ["4", "3", "2", "1"]
    assert table[1].split()[1:5] == [txids[2], "usage", "-3", "94"] and "req r3" in table[1]

    page = cli(served, "transactions", "cli-t", "--limit", "2")
    assert page.returncode == 0 and "more: --before 3" in page.stderr
    older = ok(served, "transactions", "cli-t", "--before", "3", "--json")
    assert [t["seq"] for t in json.loads(older)["transactions"]] == [2, 1]
    grants = json.loads(ok(served, "transactions", "cli-t", "--type", "grant", "--json"))
    assert [t["id"] for t in grants["transactions"]] == [
        t["id"] for t in json.loads(older)["transactions"] if t["type"] == "grant"
    ]

    target = tmp_path / "out.csv"
    assert ok(served, "transactions", "cli-t", "--csv", str(target)) == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["seq"] for r in rows] == ["4", "3", "2", "1"]
    assert rows[0]["id"] == txids[2] and rows[0]["amount"] == "-3"
    stdout_csv = ok(served, "transactions", "cli-t", "--csv", "-", "--limit", "1")
    assert stdout_csv.splitlines()[0].startswith("id,seq,type,amount,balance,debt,created_at")
    assert len(stdout_csv.splitlines()) == 2

    both = cli(served, "transactions", "cli-t", "--csv", "-", "--json")
    assert both.returncode == 2 and "alternatives" in both.stderr
    bad = cli(served, "transactions", "cli-t", "--type", "payment")
    assert bad.returncode == 2  # click's choice, before any call
    missing = cli(served, "transactions", "cli-nobody")
    assert missing.returncode == 1 and "404 unknown_account" in missing.stderr


def test_holds_lists_active_and_closed_holds(served: dict[str, str]) -> None:
    ok(served, "accounts", "create", "cli-h")
    assert ok(served, "holds", "cli-h").strip() == "no holds on cli-h"
    ok(served, "grants", "add", "cli-h", "--credits", "50", "--id", "g1", "--reason", "t")
    for hold_id, amount in (("job-1", 20), ("job-2", 5)):
        code, _ = call(
            served, "POST", "/v1/holds", {"account": "cli-h", "hold_id": hold_id, "amount": amount}
        )
        assert code == 201
    code, _ = call(served, "POST", "/v1/holds/job-1/settle", {"account": "cli-h", "amount": 8})
    assert code == 200

    lines = ok(served, "holds", "cli-h").splitlines()
    assert lines[0].split() == ["HOLD", "ID", "STATE", "AMOUNT", "CHARGED", "CREATED", "EXPIRES"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["job-1"][1:4] == ["settled", "20", "8"]
    assert rows["job-2"][1:4] == ["active", "5", "-"]
    body = json.loads(ok(served, "holds", "cli-h", "--json"))
    assert {h["hold_id"] for h in body["holds"]} == {"job-1", "job-2"}
    missing = cli(served, "holds", "cli-nobody")
    assert missing.returncode == 1 and "404 unknown_account" in missing.stderr


def test_refunds_create_gives_credits_back_once(served: dict[str, str]) -> None:
    ok(served, "accounts", "create", "cli-r")
    ok(served, "grants", "add", "cli-r", "--credits", "50", "--id", "g1", "--reason", "t")
    txid = checked(served, "cli-r", 10, "r1")

    four = ("refunds", "create", "cli-r", txid, "--id", "rf-1", "--credits", "4", "--reason", "t")
    out = ok(served, *four)
    assert f"refunded 4 credits of {txid} to cli-r" in out and "balance 44" in out
    again = ok(served, *four)
    assert "a replay: nothing changed" in again and "balance 44" in again
    rest = json.loads(
        ok(served, "refunds", "create", "cli-r", txid, "--id", "rf-2", "--json", "--reason", "t")
    )
    assert rest["refunded"] == 6 and rest["balance"] == 50

    over = cli(served, "refunds", "create", "cli-r", txid, "--id", "rf-3", "--reason", "t")
    assert over.returncode == 1 and "409 fully_refunded" in over.stderr
    unknown = cli(served, "refunds", "create", "cli-r", "tx_nope", "--id", "rf-4", "--reason", "t")
    assert unknown.returncode == 1 and "404 unknown_transaction" in unknown.stderr
    no_id = cli(served, "refunds", "create", "cli-r", txid, "--reason", "t")
    assert no_id.returncode == 2 and "--id" in no_id.stderr


def test_tables_escape_control_characters_a_caller_put_in_a_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An escape sequence in a description must not reach the operator's terminal as one."""
    from sidecar.cli.tables import echo_table

    echo_table(["id", "description"], [["tx_1", "GET /a\x1b]0;owned\x07\x1b[2J\nforged\u2028x"]])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u2028" not in out
    assert out.count("\n") == 2  # the header and one row
    assert "GET /a\\x1b]0;owned\\x07\\x1b[2J\\nforged\\u2028x" in out
