"""A hung outbox writer (SIGSTOPped: alive, SQL up, not writing) under a running `serve` (one
process, and `--workers 2`): once its lease lapses the outbox view no longer says it runs and,
with `--workers 2` while its supervisor is held still, readiness fails on the lag although SQL
answers; `serve` kills it and starts a new one, which writes everything, exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_embedded_redis_crash import check, start_own, wait_for
from tests.cli.test_shutdown import ADMIN, SERVICE, alive, call, children, stop
from tests.ports import free_port

pytestmark = pytest.mark.slow


def writer_child(serve: int) -> int | None:
    for pid in children(serve):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if alive(pid) else []
        if b"writer" in args:
            return pid
    return None


def outbox(listen: str) -> dict[str, Any]:
    status, body = call(listen, "GET", "/v1/admin/outbox", None, ADMIN)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("workers", [1, 2])
def test_hung_writer_is_seen_killed_and_replaced_and_nothing_is_lost(
    tmp_path: Path, workers: int
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {
        "SIDECAR_DATA_DIR": str(tmp_path),
        "SIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
        "SIDECAR_ADMIN_TOKEN": ADMIN,
        "SIDECAR_SERVICE_TOKEN": SERVICE,
        "SIDECAR_LOG_FORMAT": "text",
        "SIDECAR_WRITER_LEASE_MS": "1000",
        "SIDECAR_READY_MAX_LAG_S": "2",
    }
    if "SIDECAR_DATABASE_URL" in os.environ:  # the PostgreSQL pass (tests/sqlbackend.py)
        env["SIDECAR_DATABASE_URL"] = os.environ["SIDECAR_DATABASE_URL"]
    proc = start_own(env, workers)
    listen = env["SIDECAR_LISTEN"]
    stopped: list[int] = []
    try:
        assert call(listen, "PUT", "/v1/accounts/acme", {}, ADMIN)[0] == 201
        grant = {"grant_id": "g", "credits": 1000, "reason": "test"}
        assert call(listen, "POST", "/v1/accounts/acme/grants", grant, ADMIN)[0] == 201
        for i in range(10):
            assert check(listen, f"before-{i}")[0] == 200
        wait_for("the outbox written", lambda: outbox(listen)["unwritten"] == 0)
        assert outbox(listen)["writer"]["running"] is True
        hung = writer_child(proc.pid)
        assert hung is not None

        if workers > 1:
            # Its supervisor held still too: what the workers say about a hung writer can be
            # watched for as long as we like before it is replaced.
            os.kill(proc.pid, signal.SIGSTOP)
            stopped.append(proc.pid)
        os.kill(hung, signal.SIGSTOP)
        stopped.append(hung)
        for i in range(5):
            assert check(listen, f"during-{i}")[0] == 200  # checks go on
        if workers > 1:
            wait_for("the view to say not running", lambda: not outbox(listen)["writer"]["running"])
            status, body = call(listen, "GET", "/readyz", None, "")
            deadline = time.monotonic() + 30
            while status == 200:
                assert time.monotonic() < deadline, body
                time.sleep(0.1)
                status, body = call(listen, "GET", "/readyz", None, "")
            assert status == 503 and body["failing"] == ["writer_lag"], body
            assert body["checks"]["sql"]["ok"] is True
            os.kill(proc.pid, signal.SIGCONT)
            stopped.remove(proc.pid)

        # serve notices the lapsed lease, kills the hung writer and starts another.
        wait_for("a new writer", lambda: writer_child(proc.pid) not in (None, hung))
        wait_for("the hung writer gone", lambda: not alive(hung), 10)
        stopped.remove(hung)
        wait_for("the outbox written", lambda: outbox(listen)["unwritten"] == 0)
        view = outbox(listen)["writer"]
        assert view["running"] is True
        if workers == 1:
            assert view["hung_kills"] == 1 and view["restarts"] == 1
            assert view["pid"] == writer_child(proc.pid)
        wait_for("/readyz 200", lambda: call(listen, "GET", "/readyz", None, "")[0] == 200)
        status, body = call(listen, "GET", "/v1/accounts/acme/balance", None, ADMIN)
        assert body["balance"] == 1000 - 15, body
        out = subprocess.run(
            [sys.executable, "-m", "sidecar", "reconcile"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0 and "clean" in out.stdout, out.stdout + out.stderr
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        code = stop(proc)
    assert code == 0
    log = "".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
    assert "has not renewed its lease" in log
