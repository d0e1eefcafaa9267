"""The TypeScript client (clients/typescript) against a real sidecar: this module starts one
(real Redis, the app on a free port), installs the package's dev dependencies once (`npm ci`,
skipped while package-lock.json is unchanged), runs its `node --test` files with the sidecar's
URL and tokens in the environment, and type-checks its declarations (`tsc`). Skipped only when
node or npm is missing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from sidecar.http.app import create_app
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.conftest import ADMIN, SERVICE, premigrated
from tests.ports import free_port

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
STAMP = PACKAGE / "node_modules" / ".credit-sidecar-lock-sha256"


def tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed: the TypeScript client's tests need them")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 20, f"the TypeScript client needs Node 20+, found {version.stdout.strip()}"
    return node, npm


def npm_ci(npm: str) -> None:
    """`npm ci` once per package-lock.json (its hash stamped in node_modules)."""
    lock = hashlib.sha256((PACKAGE / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == lock:
        return
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    STAMP.write_text(lock)


async def run(*argv: str, env: dict[str, str], limit_s: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=PACKAGE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -1, out.decode(errors="replace") + f"\n(killed after {limit_s} s)"
    return proc.returncode or 0, out.decode(errors="replace")


async def test_typescript_client_against_a_real_sidecar(
    redis_server: RedisServer, sqlite_template: Path, tmp_path: Path
) -> None:
    node, npm = tools()
    await asyncio.to_thread(npm_ci, npm)
    settings = Settings(
        redis_url=redis_server.url,
        admin_token=SecretStr(ADMIN),
        service_token=SecretStr(SERVICE),
        data_dir=premigrated(sqlite_template, tmp_path),
        writer="off",  # balances and holds come from Redis
        billing_worker="off",
    )
    server = TestServer(create_app(settings), host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env |= {
            "SIDECAR_URL": f"http://127.0.0.1:{server.port}",
            "SIDECAR_ADMIN_TOKEN": ADMIN,
            "SIDECAR_SERVICE_TOKEN": SERVICE,
            "NODE_OPTIONS": "",
        }
        # The sidecar answers on this event loop while node runs: the subprocess is awaited.
        code, out = await run(node, "--test", "test/", env=env, limit_s=240)
        assert code == 0, f"node --test failed (exit {code}):\n{out}"
        assert "# fail 0" in out, out
    finally:
        await server.close()
    # The declarations (src/*.d.ts) against test/types.ts, which uses them as an app would.
    tsc = PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"
    code, out = await run(node, str(tsc), "-p", "tsconfig.json", env=env, limit_s=240)
    assert code == 0, f"tsc found type errors:\n{out}"
