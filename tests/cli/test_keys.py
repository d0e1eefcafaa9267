"""`credit-sidecar keys create/list/revoke` against a real `serve` process, as a user runs them:
same data dir (the admin token is found there), no flags beyond the account or key id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import call, cli, http
from tests.ports import free_port


def forward(env: dict[str, str], key: str) -> int:
    return http(
        env,
        "GET",
        "/auth/forward",
        {"X-API-Key": key, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/status"},
    )


def test_create_prints_a_working_key_once_and_list_never_shows_it(
    served: dict[str, str],
) -> None:
    out = cli(served, "keys", "create", "acme", "--name", "ci")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("csk_") and "cannot be shown again" in out.stderr
    assert forward(served, key) in (200, 402)  # authenticated: 402 = no credits yet

    listed = cli(served, "keys", "list", "acme")
    assert listed.returncode == 0, listed.stderr
    assert "ci" in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout and key[12:] not in listed.stdout

    # the CLI's JSON is the API's JSON
    as_json = json.loads(cli(served, "keys", "list", "acme", "--json").stdout)
    assert as_json == call(served, "GET", "/v1/accounts/acme/keys")[1]
    assert as_json["account"] == "acme" and [k["name"] for k in as_json["keys"]] == ["ci"]
    assert "key" not in as_json["keys"][0]


def test_create_with_a_rate_limit_and_json_output(served: dict[str, str]) -> None:
    out = cli(
        served, "keys", "create", "acme", "--rate-limit", "5", "--period-ms", "60000", "--json"
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["rate_limit"] == {"requests": 5, "period_ms": 60000, "burst": 5}
    assert body["key"].startswith("csk_")
    assert "5/60000ms" in cli(served, "keys", "list", "acme").stdout


def test_revoke_makes_the_key_fail_with_401(served: dict[str, str]) -> None:
    created = json.loads(cli(served, "keys", "create", "acme", "--json").stdout)
    out = cli(served, "keys", "revoke", created["key_id"])
    assert out.returncode == 0, out.stderr
    assert f"revoked {created['key_id']}" in out.stdout
    assert forward(served, created["key"]) == 401


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("keys", "create", "nobody"), "404 unknown_account"),
        (("keys", "revoke", "key_0000"), "404 unknown_key"),
        (("keys", "create", "acme", "--rate-limit", "0"), "422 invalid_request: rate_limit"),
    ],
)
def test_api_errors_exit_1_with_the_reason(
    served: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    out = cli(served, *args)
    assert out.returncode == 1 and message in out.stderr, out.stderr


def test_without_a_token_or_a_reachable_sidecar_the_cli_says_so(
    served: dict[str, str], tmp_path: Path
) -> None:
    out = cli({**served, "SIDECAR_DATA_DIR": str(tmp_path)}, "keys", "list", "acme")
    assert out.returncode == 2 and "no admin token" in out.stderr
    assert not (tmp_path / "admin_token").exists()  # the CLI never invents a token
    out = cli(served, "keys", "list", "acme", "--url", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1 and "cannot reach the sidecar" in out.stderr


def test_create_with_an_idempotency_key_makes_one_key(served: dict[str, str]) -> None:
    before = len(call(served, "GET", "/v1/accounts/acme/keys")[1]["keys"])  # (shared server)
    first = cli(served, "keys", "create", "acme", "--idempotency-key", "deploy-7")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("csk_")
    again = cli(served, "keys", "create", "acme", "--idempotency-key", "deploy-7")
    assert again.returncode == 0 and again.stdout == ""
    assert "created before" in again.stderr
    other = cli(served, "keys", "create", "acme", "--name", "x", "--idempotency-key", "deploy-7")
    assert other.returncode != 0 and "idempotency" in other.stderr
    assert len(call(served, "GET", "/v1/accounts/acme/keys")[1]["keys"]) == before + 1
