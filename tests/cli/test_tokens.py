"""`credit-sidecar tokens create/list/rotate/revoke` against a real `serve` process, as a user
runs them: the secret printed once, never listed; a rotated token's old secret kept for the
grace; a revoked one refused."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import call, cli

pytestmark = pytest.mark.sql_free  # (nothing here depends on the SQL backend)


def test_create_list_rotate_and_revoke_a_token(served: dict[str, str]) -> None:
    out = cli(
        served,
        "tokens",
        "create",
        "--name",
        "billing app",
        "--scope",
        "read",
        "--scope",
        "checkout",
        "--account-prefix",
        "acme",
    )
    assert out.returncode == 0, out.stderr
    header, token = out.stdout.splitlines()[:2]
    token_id = header.split()[1]
    assert token.startswith(f"cst_{token_id}_") and "shown once" in out.stderr
    assert call(served, "GET", "/v1/accounts/acme/balance", token=token)[0] == 200

    listed = cli(served, "tokens", "list")
    assert listed.returncode == 0 and token not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if line.startswith(token_id))
    assert "billing app" in row and "checkout,read" in row and "acme*" in row

    rotated = json.loads(cli(served, "tokens", "rotate", token_id, "--grace", "0", "--json").stdout)
    assert rotated["token"] != token
    assert call(served, "GET", "/v1/accounts/acme/balance", token=token)[0] == 401
    fresh = rotated["token"]
    assert call(served, "GET", "/v1/accounts/acme/balance", token=fresh)[0] == 200

    out = cli(served, "tokens", "revoke", token_id)
    assert out.returncode == 0 and f"revoked token {token_id}" in out.stdout
    assert call(served, "GET", "/v1/accounts/acme/balance", token=fresh)[0] == 401
    out = cli(served, "tokens", "rotate", token_id)
    assert out.returncode == 1 and "revoked" in out.stderr


def test_a_bad_scope_is_refused_before_any_call(served: dict[str, str]) -> None:
    out = cli(served, "tokens", "create", "--name", "x", "--scope", "root")
    assert out.returncode == 2 and "root" in out.stderr
