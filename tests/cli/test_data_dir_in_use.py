"""A second `serve` on a data dir a running sidecar owns refuses to start with one clear line
and exit code 2 (no traceback), with one worker or several, and the first one serves on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli.conftest import http
from tests.ports import free_port

pytestmark = pytest.mark.sql_bystander  # its subject: the data dir lock


@pytest.mark.parametrize("workers", [1, 2])
def test_second_serve_on_the_same_data_dir_exits_2_with_one_line(
    served: dict[str, str], workers: int
) -> None:
    env = served | {"SIDECAR_LISTEN": f"127.0.0.1:{free_port()}"}
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--workers", str(workers)],
        env=env | {"SIDECAR_LOG_FORMAT": "text"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert "in use by another sidecar" in errors[0]
    assert str(os.path.realpath(served["SIDECAR_DATA_DIR"])) in errors[0]
    assert http(served, "GET", "/healthz", {}) == 200  # the first one serves on
