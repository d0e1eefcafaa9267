"""The embedded Redis SIGKILLed under a running `serve` (one process, and `--workers 2`): `serve`
starts it again in place from its AOF (same dir and socket, the data dir still locked), checks
come back with the balance exactly where the acknowledged ones left it (appendfsync always),
SQL reconciles with Redis, and `/healthz` never said 200 while the store was gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_shutdown import ADMIN, SERVICE, alive, call, children, start, stop
from tests.ports import free_port

pytestmark = pytest.mark.slow


def procfs(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().decode().strip("\0\n")
    except OSError:
        return ""


def redis_child(serve: int) -> int | None:
    """The pid of the embedded redis-server `serve` runs, if one is running."""
    for pid in children(serve):
        if alive(pid) and procfs(pid, "comm") == "redis-server":
            return pid
    return None


def owns_port(serve: int, listen: str) -> bool:
    """Whether every connection to ``listen`` reaches this `serve` (or its workers). With
    `--workers` they bind with SO_REUSEPORT, so another test's sidecar that was handed the same
    free port would silently answer part of the requests."""
    for _ in range(10):
        _, body = call(listen, "GET", "/healthz", None, "")
        pid = int(body["pid"])
        if pid != serve and f"PPid:\t{serve}\n" not in procfs(pid, "status") + "\n":
            return False
    return True


def start_own(env: dict[str, str], workers: int) -> subprocess.Popen[bytes]:
    """`serve` (tests/cli/test_shutdown.py's ``start``) on a port only it listens on: another
    free port is tried if one turns out to be shared. Updates ``env["SIDECAR_LISTEN"]``."""
    for _ in range(3):
        proc = start(env, workers)
        if owns_port(proc.pid, env["SIDECAR_LISTEN"]):
            return proc
        stop(proc)
        env["SIDECAR_LISTEN"] = f"127.0.0.1:{free_port()}"
    pytest.fail("no port of our own")


def healthz(listen: str) -> int:
    status, _ = call(listen, "GET", "/healthz", None, "")
    return status


def check(listen: str, key: str) -> tuple[int, dict[str, object]]:
    body = {"account": "acme", "cost": 1, "idempotency_key": key}
    status, answer = call(listen, "POST", "/v1/check", body, SERVICE)
    return status, answer


def wait_for(what: str, cond: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_embedded_redis_killed_is_restarted_from_its_aof_and_nothing_acknowledged_is_lost(
    tmp_path: Path, workers: int
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {
        "SIDECAR_DATA_DIR": str(tmp_path),
        "SIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
        "SIDECAR_ADMIN_TOKEN": ADMIN,
        "SIDECAR_SERVICE_TOKEN": SERVICE,
        "SIDECAR_LOG_FORMAT": "text",
        "SIDECAR_EMBEDDED_APPENDFSYNC": "always",  # an acknowledged check is on disk
    }
    if "SIDECAR_DATABASE_URL" in os.environ:  # the PostgreSQL pass (tests/sqlbackend.py)
        env["SIDECAR_DATABASE_URL"] = os.environ["SIDECAR_DATABASE_URL"]
    proc = start_own(env, workers)
    listen = env["SIDECAR_LISTEN"]
    new: int | None = None
    try:
        assert call(listen, "PUT", "/v1/accounts/acme", {}, ADMIN)[0] == 201
        grant = {"grant_id": "g", "credits": 1000, "reason": "test"}
        assert call(listen, "POST", "/v1/accounts/acme/grants", grant, ADMIN)[0] == 201
        acknowledged: dict[str, str] = {}
        for i in range(20):
            status, body = check(listen, f"before-{i}")
            assert status == 200, body
            acknowledged[f"before-{i}"] = str(body["transaction_id"])
        assert healthz(listen) == 200
        victim = redis_child(proc.pid)
        assert victim is not None
        title = procfs(victim, "cmdline")  # redis-server's title names its socket

        if workers > 1:
            # The supervisor (which restarts Redis) is held still: the workers keep
            # answering, and for as long as it is held the store is certainly gone.
            os.kill(proc.pid, signal.SIGSTOP)
        os.kill(victim, signal.SIGKILL)
        try:
            # The first probe after the kill: the restart waits a moment, so it is down.
            first = [healthz(listen) for _ in range(4 if workers > 1 else 1)]
            assert 200 not in first, first
        finally:
            if workers > 1:
                os.kill(proc.pid, signal.SIGCONT)

        # Back by itself: same binary, dir, socket and AOF settings; checks answer again.
        wait_for("a new redis-server", lambda: redis_child(proc.pid) not in (None, victim))
        new = redis_child(proc.pid)
        wait_for("/healthz 200", lambda: healthz(listen) == 200)
        # (compared once it serves: until then its title is still its command line)
        assert new is not None and procfs(new, "cmdline") == title
        wait_for("/readyz 200", lambda: call(listen, "GET", "/readyz", None, "")[0] == 200)
        for i in range(20):
            status, body = check(listen, f"after-{i}")
            assert status == 200, body
        status, body = call(listen, "GET", "/v1/accounts/acme/balance", None, ADMIN)
        assert status == 200 and body["balance"] == 1000 - 40, body
        # Every acknowledged check is remembered: its replay is the same transaction.
        for key, txid in acknowledged.items():
            status, body = check(listen, key)
            assert status == 200 and body["replayed"] is True, body
            assert body["transaction_id"] == txid
        assert call(listen, "GET", "/v1/accounts/acme/balance", None, ADMIN)[1]["balance"] == 960

        # The writer caught up, and SQL agrees with Redis.
        wait_for(
            "the outbox to be written",
            lambda: call(listen, "GET", "/v1/admin/outbox", None, ADMIN)[1]["unwritten"] == 0,
        )
        out = subprocess.run(
            [sys.executable, "-m", "sidecar", "reconcile"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "clean" in out.stdout
    finally:
        code = stop(proc)
    assert code == 0
    assert new is not None
    wait_for("the restarted redis-server to stop", lambda: not alive(new), 10)
    log = "".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
    assert "restarting it from its AOF" in log
