"""Graceful shutdown of `serve` (one process, and `--workers 2`): on SIGTERM it stops
accepting connections, answers the request in flight, lets the writer put every acknowledged
check into SQL, stops the embedded Redis cleanly, and exits 0; started again on the same data
dir, the balance is the one it had."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from sidecar.persistence.db import engine_for
from sidecar.settings import Settings
from tests.ports import free_port

ADMIN = "admin-token-shutdown-0123"
SERVICE = "service-token-shutdown-0123"


def call(listen: str, method: str, path: str, body: object, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://{listen}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start(env: dict[str, str], workers: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--workers", str(workers)],
        env=env,
        stderr=open(Path(env["SIDECAR_DATA_DIR"]) / f"serve-{time.monotonic_ns()}.log", "wb"),  # noqa: SIM115
    )
    deadline = time.monotonic() + 90  # N workers starting on a busy CI machine
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{env['SIDECAR_LISTEN']}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail("serve did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return {int(p) for p in out.stdout.split()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_in_flight_writes_sql_and_keeps_the_aof(
    tmp_path: Path, workers: int
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    host, port = listen.rsplit(":", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {
        "SIDECAR_DATA_DIR": str(tmp_path),
        "SIDECAR_LISTEN": listen,
        "SIDECAR_ADMIN_TOKEN": ADMIN,
        "SIDECAR_SERVICE_TOKEN": SERVICE,
        "SIDECAR_LOG_FORMAT": "text",
        # The writer waits 2 s between small batches: without the drain at shutdown, the last
        # checks would still be in the outbox when it is stopped.
        "SIDECAR_WRITER_LINGER_MS": "2000",
        # The drain ends once the outbox is written; the bound only has to outlast a busy
        # machine (the default 5 s is the production trade-off, not what is tested here).
        "SIDECAR_SHUTDOWN_DRAIN_S": "60",
    }
    if "SIDECAR_DATABASE_URL" in os.environ:  # the PostgreSQL pass (tests/sqlbackend.py)
        env["SIDECAR_DATABASE_URL"] = os.environ["SIDECAR_DATABASE_URL"]
    proc = start(env, workers)
    started = children(proc.pid)
    assert call(listen, "PUT", "/v1/accounts/acme", {}, ADMIN)[0] == 201
    grant = {"grant_id": "g", "credits": 1000, "reason": "test"}
    assert call(listen, "POST", "/v1/accounts/acme/grants", grant, ADMIN)[0] == 201
    acknowledged = []
    for i in range(20):
        check = {"account": "acme", "cost": 1, "idempotency_key": f"k{i}"}
        status, body = call(listen, "POST", "/v1/check", check, SERVICE)
        assert status == 200
        acknowledged.append(body["transaction_id"])

    # A check in flight at SIGTERM: Redis is busy (a script spinning for 2 s) when it
    # arrives, so its handler is still waiting for Redis when the signal comes.
    busy = threading.Thread(target=spin_redis, args=(redis_url(tmp_path), 2.0))
    busy.start()
    time.sleep(0.2)
    body = json.dumps({"account": "acme", "cost": 1, "idempotency_key": "in-flight"}).encode()
    conn = socket.create_connection((host, int(port)), timeout=30)
    conn.sendall(
        b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {SERVICE}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    time.sleep(0.3)  # the handler has started and waits for Redis
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection((host, int(port)), timeout=2).close()
    reply = b""
    while not reply.rstrip().endswith(b"}"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        reply += chunk
    conn.close()
    busy.join()
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply
    answered = json.loads(payload)
    assert answered["allowed"] is True
    acknowledged.append(answered["transaction_id"])

    assert proc.wait(60) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in started):
        time.sleep(0.05)
    assert not [p for p in started if alive(p)], "a child of serve outlived it"
    logs = "".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
    assert "not yet in SQL" not in logs

    # Every acknowledged check is in SQL (the writer was stopped only after writing them).
    assert set(acknowledged) <= transactions_in_sql(tmp_path)
    # Redis shut down by itself (AOF fsynced), and the AOF has everything: started again, the
    # ledger is where it was.
    server_log = (tmp_path / "redis" / "server.log").read_text()
    assert "ready to exit" in server_log
    proc = start(env, 1)
    try:
        status, balance = call(listen, "GET", "/v1/accounts/acme/balance", None, ADMIN)
        assert status == 200 and balance["balance"] == 1000 - 21
        check = {"account": "acme", "cost": 1, "idempotency_key": "in-flight"}
        status, again = call(listen, "POST", "/v1/check", check, SERVICE)
        assert again["replayed"] is True and again["transaction_id"] == answered["transaction_id"]
    finally:
        assert stop(proc) == 0


def redis_url(data_dir: Path) -> str:
    """The embedded Redis's URL, as serve logged it."""
    for log in data_dir.glob("serve-*.log"):
        for line in log.read_text().splitlines():
            if "listening on unix://" in line:
                return line.rsplit(" ", 1)[-1]
    raise AssertionError("serve did not log its Redis")


def spin_redis(url: str, seconds: float) -> None:
    """Keeps Redis busy (one script, which blocks every other client) for ``seconds``."""
    script = "local t0 = redis.call('TIME') local s = tonumber(ARGV[1]) "
    script += "while true do local t = redis.call('TIME') "
    script += "if (t[1] - t0[1]) + (t[2] - t0[2]) / 1e6 >= s then return 1 end end"
    with redis.Redis.from_url(url, socket_timeout=30) as client:
        client.eval(script, 0, str(seconds))


def transactions_in_sql(data_dir: Path) -> set[str]:
    """The ids in the SQL ledger serve used (SQLite in the data dir, or the PostgreSQL
    database of the PostgreSQL pass)."""
    settings = Settings(data_dir=data_dir, database_url=os.environ.get("SIDECAR_DATABASE_URL"))

    async def read() -> set[str]:
        engine = engine_for(settings)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(text("SELECT id FROM credit_transactions"))
                return {str(row[0]) for row in rows}
        finally:
            await engine.dispose()

    return asyncio.run(read())
