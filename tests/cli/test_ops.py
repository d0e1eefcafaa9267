"""`credit-sidecar dead-letters` against a real `serve` process, and `credit-sidecar config
check` on the environment and a TOML file, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import redis
from click.testing import CliRunner

from sidecar.cli import main
from tests.cli.conftest import cli


def test_dead_letters_lists_and_retries_outbox_entries_and_stripe_events(
    served: dict[str, str],
) -> None:
    out = cli(served, "dead-letters", "list")
    assert out.returncode == 0 and out.stdout.strip() == "no dead letters", out.stderr
    assert json.loads(cli(served, "dead-letters", "list", "--json").stdout) == {
        "outbox": [],
        "billing": [],
    }
    assert "no outbox dead letters" in cli(served, "dead-letters", "retry-outbox").stdout

    # A dead letter as the writer leaves one (put there directly: SQL refusing an entry for
    # good is what the writer's own tests provoke).
    sock = Path(served["SIDECAR_DATA_DIR"]) / "redis" / "redis.sock"
    if not sock.exists():
        pytest.skip("the embedded server is not on a socket in the data dir")
    with redis.Redis(unix_socket_path=str(sock)) as r:
        entry_id = r.xadd(
            "cs:{0}:outbox:dead",
            {"kind": "bogus", "dl_error": "PoisonEntry: unknown kind", "dl_entry_id": "1-0"},
        ).decode()
    out = cli(served, "dead-letters", "list")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["KIND", "ID", "WHERE", "ERROR"]
    assert f"outbox  {entry_id}  shard 0  PoisonEntry: unknown kind" in out.stdout
    listed = json.loads(cli(served, "dead-letters", "list", "--json").stdout)
    assert [e["id"] for e in listed["outbox"]] == [entry_id]

    bad = cli(served, "dead-letters", "retry-outbox", "--id", "9-9")
    assert bad.returncode == 1 and "422 invalid_request: ids" in bad.stderr
    out = cli(served, "dead-letters", "retry-outbox", "--id", entry_id)
    assert out.returncode == 0 and "moved 1 entries back into the outbox of shard 0" in out.stdout

    missing = cli(served, "dead-letters", "retry-event", "evt_nope")
    assert missing.returncode == 1 and "evt_nope" in missing.stderr


def clean_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIDECAR_")}
    return env | {"SIDECAR_DATA_DIR": str(tmp_path)} | values


def test_config_check_prints_effective_settings_with_sources_and_secrets_masked(
    tmp_path: Path,
) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text('shards = 4\nlisten = "0.0.0.0:9000"\n')
    env = clean_env(
        tmp_path,
        SIDECAR_CONFIG=str(config),
        SIDECAR_LISTEN="127.0.0.1:9100",  # the environment wins over the file
        SIDECAR_ADMIN_TOKEN="admin-secret-token-123",
        SIDECAR_DATABASE_URL="postgresql://app:hunter2hunter2@db.internal/ledger",
        SIDECAR_STRIPE_API_KEY="sk_test_secret_value",
        SIDECAR_LISTN="typo",
    )
    out = cli(env, "config", "check")
    assert out.returncode == 0, out.stderr
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.stdout.splitlines() if ln.strip()}
    assert rows["SIDECAR_LISTEN"] == ["127.0.0.1:9100", "env"]
    assert rows["SIDECAR_SHARDS"] == ["4", "file"]
    assert rows["SIDECAR_WORKERS"] == ["1", "default"]
    assert rows["SIDECAR_ADMIN_TOKEN"] == ["********", "env"]
    assert rows["SIDECAR_STRIPE_API_KEY"] == ["********", "env"]
    assert rows["SIDECAR_SERVICE_TOKEN"] == ["-", "default"]
    for secret in ("admin-secret-token-123", "hunter2hunter2", "sk_test_secret_value"):
        assert secret not in out.stdout + out.stderr
    assert "postgresql+asyncpg://app:********@db.internal/ledger" in out.stdout
    assert "warning: SIDECAR_LISTN is not a setting" in out.stderr
    assert f"configuration OK (file {config})" in out.stderr

    body = json.loads(cli(env, "config", "check", "--json").stdout)
    assert body["settings"]["listen"] == "127.0.0.1:9100" and body["sources"]["shards"] == "file"
    assert body["settings"]["admin_token"] == "********"
    assert body["derived"]["service_token"].startswith("generated into")


@pytest.mark.parametrize(
    ("values", "file_text", "message"),
    [
        ({"SIDECAR_SHARDS": "0"}, None, "SIDECAR_SHARDS: Input should be greater than or equal"),
        ({"SIDECAR_LISTEN": "nowhere"}, None, "SIDECAR_LISTEN: Value error, must be host:port"),
        ({"SIDECAR_ADMIN_TOKEN": "short"}, None, "SIDECAR_ADMIN_TOKEN: Value error, must be at"),
        (
            {
                "SIDECAR_ADMIN_TOKEN": "same-token-0123456789",
                "SIDECAR_SERVICE_TOKEN": "same-token-0123456789",
            },
            None,
            "SIDECAR_ADMIN_TOKEN and SIDECAR_SERVICE_TOKEN must differ",
        ),
        ({}, 'writer = "sometimes"\n', "writer in "),
        ({}, "bogus = 1\n", "bogus in "),
        ({}, 'listen = "unclosed\n', "is not readable TOML"),
        ({"SIDECAR_PRICING_FILE": "/nonexistent/pricing.toml"}, None, "SIDECAR_PRICING_FILE:"),
    ],
)
def test_config_check_exits_2_naming_the_invalid_setting(
    tmp_path: Path, values: dict[str, str], file_text: str | None, message: str
) -> None:
    if file_text is not None:
        config = tmp_path / "bad.toml"
        config.write_text(file_text)
        values = values | {"SIDECAR_CONFIG": str(config)}
    out = cli(clean_env(tmp_path, **values), "config", "check")
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert out.stdout == ""


def test_config_check_refuses_a_missing_config_file(tmp_path: Path) -> None:
    out = cli(clean_env(tmp_path, SIDECAR_CONFIG=str(tmp_path / "nope.toml")), "config", "check")
    assert out.returncode == 2 and "SIDECAR_CONFIG" in out.stderr and "does not exist" in out.stderr


def test_every_command_is_listed_and_loads_under_its_own_name() -> None:
    """The CLI imports a command when it runs (sidecar/cli/__init__.py): each listed name
    loads a command of that name, and --help lists them all."""
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    listed = CliRunner().invoke(main, ["--help"]).output
    assert all(name in listed for name in main.list_commands(ctx))


def test_the_installed_entry_point_runs_the_cli_as_a_process() -> None:
    """The other CLI tests run the commands in-process (tests/cli/conftest.py `cli`): this one
    runs `credit-sidecar` as a user's shell does."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "credit-sidecar"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and "version" in out.stdout, out.stderr
