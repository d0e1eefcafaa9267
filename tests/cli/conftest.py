"""CLI fixtures: a real `credit-sidecar serve` on embedded defaults (its own Redis, a SQLite
ledger in its data dir), and helpers to run the CLI and plain HTTP against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sidecar.cli import main
from tests.ports import free_port


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``credit-sidecar *args`` with exactly ``env`` as its environment, in this process
    (click's CliRunner: the command's code, exit code, stdout and stderr as a user gets them,
    without paying a Python start-up per call; tests poll the CLI). The entry point itself is
    tested as a process (test_ops.py)."""
    overrides: dict[str, str | None] = {k: None for k in os.environ if k not in env}
    overrides.update(env)
    result = CliRunner().invoke(main, list(args), env=overrides, catch_exceptions=False)
    return subprocess.CompletedProcess(
        ["credit-sidecar", *args], result.exit_code, result.stdout, result.stderr
    )


def http(env: dict[str, str], method: str, path: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(
        f"http://{env['SIDECAR_LISTEN']}{path}", method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, data=b"{}" if method != "GET" else None) as r:  # noqa: S310
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def call(
    env: dict[str, str], method: str, path: str, body: object = None, token: str = ""
) -> tuple[int, Any]:
    """An HTTP call to the served sidecar with the admin token; (status, decoded JSON)."""
    token = token or admin_token(env)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://{env['SIDECAR_LISTEN']}{path}",
        method=method,
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req) as r:  # noqa: S310
            return int(r.status), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def admin_token(env: dict[str, str]) -> str:
    return (Path(env["SIDECAR_DATA_DIR"]) / "admin_token").read_text().strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A `credit-sidecar serve` on embedded defaults with account `acme`; yields the CLI's env."""
    data = tmp_path_factory.mktemp("serve")
    env = {
        **os.environ,
        "SIDECAR_DATA_DIR": str(data),
        "SIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
    }
    for k in ("SIDECAR_REDIS_URL", "SIDECAR_ADMIN_TOKEN", "SIDECAR_SERVICE_TOKEN", "SIDECAR_URL"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env)
    try:
        deadline = time.monotonic() + 60  # generous: a busy CI machine
        while not _up(env):
            if time.monotonic() > deadline:
                pytest.fail("serve did not come up")
            time.sleep(0.05)
        token = (data / "admin_token").read_text().strip()
        assert http(env, "PUT", "/v1/accounts/acme", _bearer(token)) == 201
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def _up(env: dict[str, str]) -> bool:
    try:
        return http(env, "GET", "/healthz", {}) == 200
    except OSError:
        return False


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
