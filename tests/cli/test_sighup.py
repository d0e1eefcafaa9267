"""SIGHUP (reload the pricing file) is safe at any moment: sent in a tight loop to `serve` and
every process it starts, from the moment it is started until it serves, it kills none of them
(the default action of SIGHUP would), nothing is restarted, and the reloads happen."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cli.test_embedded_redis_crash import owns_port
from tests.cli.test_shutdown import ADMIN, SERVICE, call, stop
from tests.ports import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.sql_bystander,
]  # its subject: signals and the processes `serve` starts


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, grandchildren...)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            if k not in found:
                found.add(k)
                todo.append(k)
    return found


def role(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    if comm == "redis-server":
        return "redis"
    return "writer" if b"writer" in args else "worker" if b"serve" in args else comm


def handles_sighup(pid: int) -> bool:
    """Whether ``pid`` ignores, blocks or catches SIGHUP (its code is running): a process
    cannot protect itself before that (the interpreter's own start-up, a few ms)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    sighup = 1 << (signal.SIGHUP - 1)
    for line in status:
        name, _, value = line.partition(":\t")
        if name in ("SigBlk", "SigIgn", "SigCgt") and int(value, 16) & sighup:
            return True
    return False


def _default_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def ready(listen: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{listen}/readyz", timeout=2) as r:
            return int(r.status) == 200
    except OSError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_storm_during_start_up_kills_nothing(tmp_path: Path, workers: int) -> None:
    listen = f"127.0.0.1:{free_port()}"
    pricing = tmp_path / "pricing.toml"
    pricing.write_text('[[route]]\nname = "img"\npath = "/v1/images/*"\ncost = 10\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {
        "SIDECAR_DATA_DIR": str(tmp_path / "data"),
        "SIDECAR_LISTEN": listen,
        "SIDECAR_ADMIN_TOKEN": ADMIN,
        "SIDECAR_SERVICE_TOKEN": SERVICE,
        "SIDECAR_LOG_FORMAT": "text",
        "SIDECAR_PRICING_FILE": str(pricing),
    }
    if "SIDECAR_DATABASE_URL" in os.environ:  # the PostgreSQL pass (tests/sqlbackend.py)
        env["SIDECAR_DATABASE_URL"] = os.environ["SIDECAR_DATABASE_URL"]
    log = tmp_path / "serve.log"
    seen: dict[int, str] = {}
    hups = 0
    storming = threading.Event()
    storming.set()

    def storm(pid: int) -> None:
        nonlocal hups
        deadline = time.monotonic() + 5
        while not handles_sighup(pid) and time.monotonic() < deadline:
            time.sleep(0.001)
        while storming.is_set():
            for p in {pid, *descendants(pid)}:
                if p not in seen:
                    seen[p] = role(p)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGHUP)
                    hups += 1
            time.sleep(0.002)

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--workers", str(workers)],
            env=env,
            stderr=out,
            preexec_fn=_default_sighup,  # as from a shell, whatever this process does with it
        )
    stormer = threading.Thread(target=storm, args=(proc.pid,))
    stormer.start()
    try:
        deadline = time.monotonic() + 60
        while not ready(listen):
            assert proc.poll() is None, f"serve died: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.05)
        time.sleep(1.0)  # and on a little longer, once everything has started
        assert owns_port(proc.pid, listen), "another process shares the port: run again"
        storming.clear()
        stormer.join()
        assert hups > 100
        assert proc.poll() is None, log.read_text()[-3000:]
        # Nothing died and was replaced: every process ever seen is still there.
        running = descendants(proc.pid)
        lost = {p: r for p, r in seen.items() if p != proc.pid and p not in running}
        assert lost == {}, log.read_text()[-3000:]
        roles = sorted(role(p) for p in running)
        expected = ["redis", "writer"] + (["worker"] * workers if workers > 1 else [])
        assert roles == sorted(expected)
        assert "exited" not in log.read_text()
        # It serves, and the held reloads were done once each process could.
        assert call(listen, "PUT", "/v1/accounts/acme", {}, ADMIN)[0] == 201
        grant = {"grant_id": "g", "credits": 10, "reason": "test"}
        assert call(listen, "POST", "/v1/accounts/acme/grants", grant, ADMIN)[0] == 201
        check = {"account": "acme", "cost": 1, "idempotency_key": "k"}
        assert call(listen, "POST", "/v1/check", check, SERVICE)[0] == 200
        assert "pricing reloaded" in log.read_text()
    finally:
        storming.clear()
        stormer.join()
        code = stop(proc)
    assert code == 0, log.read_text()[-3000:]
