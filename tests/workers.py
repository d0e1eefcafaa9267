"""`serve --workers 2` for the tests that need two serving processes: started on a free port
with its own data dir and known tokens, until both workers answer; plain-urllib calls (a new
connection each, so the kernel spreads them over both)."""

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
from contextlib import contextmanager
from pathlib import Path

from tests.ports import free_port

ADMIN_TOKEN = "admin-token-workers-0123"
SERVICE_TOKEN = "service-token-workers-0123"


def get(listen: str, path: str, token: str = "") -> tuple[int, bytes, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://{listen}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
            return int(r.status), r.read(), r.headers.get("X-Request-Id", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


def send(listen: str, method: str, path: str, body: object, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://{listen}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextmanager
def two_workers(data_dir: Path) -> Iterator[str]:
    """``serve --workers 2`` (writer off) on a free port; yields its host:port."""
    listen = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env |= {
        "SIDECAR_DATA_DIR": str(data_dir),
        "SIDECAR_LISTEN": listen,
        "SIDECAR_WRITER": "off",
        "SIDECAR_ADMIN_TOKEN": ADMIN_TOKEN,
        "SIDECAR_SERVICE_TOKEN": SERVICE_TOKEN,
    }
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--workers", "2"], env=env)
    try:
        pids: set[bytes] = set()
        deadline = time.monotonic() + 60  # N workers starting on a busy CI machine
        while len(pids) < 2 and time.monotonic() < deadline:
            try:
                _, body, _ = get(listen, "/healthz")
                pids.add(body)
            except OSError:
                time.sleep(0.05)
        assert len(pids) == 2, "both workers should answer"
        yield listen
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
