"""`credit-sidecar serve --workers 2`: two HTTP worker processes share the port, a worker that
dies is restarted, and SIGTERM stops every process it started (workers, writer, Redis)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ports import free_port


def _health(listen: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{listen}/healthz", timeout=2) as r:
            return int(json.loads(r.read())["pid"])
    except OSError:
        return None


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_two_workers_share_the_port_are_restarted_and_stop_together(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {"SIDECAR_DATA_DIR": str(tmp_path), "SIDECAR_LISTEN": listen}
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--workers", "2"], env=env)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            pid = _health(listen)
            if pid is not None:
                pids.add(pid)
            else:
                time.sleep(0.05)
        assert len(pids) == 2, pids
        assert pids <= _children(proc.pid)

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (seen - pids):
            pid = _health(listen)
            if pid is not None:
                seen.add(pid)
            time.sleep(0.02)
        assert seen - pids, "the killed worker was not replaced"
        started = _children(proc.pid)  # workers, the writer and the embedded Redis
        assert len(started) >= 4
        proc.send_signal(signal.SIGHUP)  # reloads pricing in the workers; stops nothing
        time.sleep(0.5)
        assert proc.poll() is None and _health(listen) is not None
        assert _children(proc.pid) == started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.05)
    assert not [p for p in started if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.sql_bystander,
]  # its subject: worker processes
