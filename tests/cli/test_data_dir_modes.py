"""The data dir holds the ledger (customer data), the AOF and the tokens: `serve` creates it,
and everything in it, readable by its owner only (dirs 0700, files 0600), whatever the umask."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import call
from tests.ports import free_port


@pytest.mark.sqlite_only  # the SQLite file is part of what is checked
def test_serve_creates_the_data_dir_and_every_file_in_it_private(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"  # serve creates it
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {"SIDECAR_DATA_DIR": str(data), "SIDECAR_LISTEN": f"127.0.0.1:{free_port()}"}
    env.pop("SIDECAR_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"],
        env=env,
        preexec_fn=lambda: os.umask(0o022),  # the usual umask: group and others may read
    )
    try:
        deadline = time.monotonic() + 30
        while not (data / "admin_token").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        status = 0
        while status != 201 and time.monotonic() < deadline:
            try:
                status, _ = call(env, "PUT", "/v1/accounts/acme", {})
            except OSError:
                time.sleep(0.05)
        assert status == 201
        # Once the writer has put the account into SQL, the SQLite file and its WAL exist.
        while call(env, "GET", "/v1/admin/accounts")[1]["accounts"] == []:
            assert time.monotonic() < deadline, "the writer did not write the account"
            time.sleep(0.05)
        names = {p.name for p in data.rglob("*")}
        assert {"ledger.db", "ledger.db-wal", "ledger.db-shm", "admin_token", "redis"} <= names
        assert {"appendonlydir", "server.log", "lock"} <= names
        paths = [data, *data.rglob("*")]
        exposed = {
            str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.lstat().st_mode))
            for p in paths
            if stat.S_IMODE(p.lstat().st_mode) & 0o077
        }
        assert exposed == {}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
