"""The embedded default: with no SIDECAR_REDIS_URL the app starts a private server in its data
dir, serves on it, and stops it on shutdown; `credit-sidecar serve` does the same end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from sidecar.http.app import create_app
from sidecar.redis.embedded import DataDirInUse, RedisServer, find_server_binary
from sidecar.settings import Settings
from tests.conftest import ADMIN, SERVICE, admin, service
from tests.ports import free_port


def server_pids(data_dir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def test_app_without_redis_url_runs_a_private_server_and_stops_it(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, admin_token=SecretStr(ADMIN), service_token=SecretStr(SERVICE)
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        assert (tmp_path / "redis" / "redis.sock").exists()
        assert server_pids(tmp_path)
        r = await client.put("/v1/accounts/a", json={}, headers=admin())
        assert r.status == 201
        r = await client.post(
            "/v1/accounts/a/grants",
            json={"grant_id": "g", "credits": 5, "reason": "test"},
            headers=admin(),
        )
        assert r.status == 201
        r = await client.post(
            "/v1/check", json={"account": "a", "cost": 2, "idempotency_key": "k"}, headers=service()
        )
        assert (await r.json())["balance"] == 3
    assert not server_pids(tmp_path)
    assert list((tmp_path / "redis").glob("appendonly*"))  # AOF on


async def test_embedded_data_survives_a_restart(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, admin_token=SecretStr(ADMIN), service_token=SecretStr(SERVICE)
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        await client.put("/v1/accounts/a", json={}, headers=admin())
        await client.post(
            "/v1/accounts/a/grants",
            json={"grant_id": "g", "credits": 5, "reason": "test"},
            headers=admin(),
        )
    async with TestClient(TestServer(create_app(settings))) as client:
        body = await (await client.get("/v1/accounts/a/balance", headers=admin())).json()
        assert body["balance"] == 5


def test_server_binary_is_found() -> None:
    assert os.access(find_server_binary(), os.X_OK)


def test_long_data_dir_puts_the_socket_in_a_private_temp_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    server = RedisServer(deep)
    assert server.unixsocket is not None and server.url.startswith("unix://")
    assert server.unixsocket.parent.stat().st_mode & 0o777 == 0o700
    server.start()
    try:
        assert server.ping()
    finally:
        server.stop()
    assert not server.ping()


async def test_serve_command_starts_on_embedded_defaults_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """What `make run` does: generated tokens in the data dir, a private Redis, clean exit."""
    port = free_port()
    env = {**os.environ, "SIDECAR_DATA_DIR": str(tmp_path), "SIDECAR_LISTEN": f"127.0.0.1:{port}"}
    for k in ("SIDECAR_REDIS_URL", "SIDECAR_ADMIN_TOKEN", "SIDECAR_SERVICE_TOKEN"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env)  # noqa: ASYNC220
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60  # generous: a busy CI machine
            while time.monotonic() < deadline:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("serve did not come up")
            token = (tmp_path / "admin_token").read_text().strip()
            assert oct((tmp_path / "admin_token").stat().st_mode & 0o777) == "0o600"
            async with http.put(
                f"http://127.0.0.1:{port}/v1/accounts/a",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                assert r.status == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not server_pids(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = RedisServer(tmp_path)
    first.start()
    try:
        with pytest.raises(DataDirInUse):
            RedisServer(tmp_path).start()
    finally:
        first.stop()
    again = RedisServer(tmp_path)
    again.start()
    again.stop()


def test_an_orphaned_server_is_shut_down_before_a_new_start(tmp_path: Path) -> None:
    """A sidecar SIGKILLed without its server: the next owner stops the orphan first."""
    orphan = RedisServer(tmp_path)
    orphan.start()
    orphan._release_dir()  # what the kernel does to a killed owner's lock
    successor = RedisServer(tmp_path)
    successor.start()
    try:
        assert orphan.process is not None and orphan.process.wait(5) is not None
        assert successor.ping()
    finally:
        successor.stop()


def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    code = (
        "import sys, pathlib\n"
        "from sidecar.redis.embedded import RedisServer\n"
        "s = RedisServer(pathlib.Path(sys.argv[1])); s.start()\n"
        "print(s.process.pid, flush=True)\n"
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
    )
    pid = int(out.stdout.split()[0])
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(100):
        if not stat.exists() or stat.read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the server outlived its parent")
