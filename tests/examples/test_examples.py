"""examples/fastapi and examples/express, each started with its own one command (run.sh) against
a real sidecar on a free port and exercised as their READMEs say: the free route charges
nothing, the 1- and 10-credit routes charge that with the X-Credits-* headers, a broke account is
answered 402, a stream is settled by the tokens it sent and a disconnect releases its hold.
One sidecar for the module; the express example is skipped when node or npm is missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from credit_sidecar import Client
from sidecar.redis.embedded import RedisServer
from tests.clients.conftest import Sidecar, redis_only, serving
from tests.conftest import ADMIN, SERVICE, premigrated
from tests.ports import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FUNDED, BROKE = "demo-key-acme", "demo-key-broke"  # the examples' DEMO_KEYS


@pytest.fixture(scope="module")
def sidecar(
    redis_server: RedisServer, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sidecar]:
    data_dir = premigrated(sqlite_template, tmp_path_factory.mktemp("examples"))
    # the writer is off: balances and holds come from Redis
    with serving(redis_only(redis_server, data_dir), redis_server) as s:
        with Client(s.url, ADMIN) as admin:
            admin.put_account("acme", {})
            admin.grant("acme", 1000, source="purchase", grant_id="fund-acme")
            admin.put_account("broke", {})
        yield s


@pytest.fixture(scope="module")
def admin(sidecar: Sidecar) -> Iterator[Client]:
    with Client(sidecar.url, ADMIN) as c:
        yield c


def start(example: str, sidecar: Sidecar) -> Iterator[str]:
    """``examples/<example>/run.sh`` on a free port, pointed at ``sidecar``; its URL once up."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {"SIDECAR_URL": sidecar.url, "SIDECAR_SERVICE_TOKEN": SERVICE, "PORT": str(port)}
    proc = subprocess.Popen(
        [str(EXAMPLES / example / "run.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # the first run of the express one runs `npm ci`
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"{example}/run.sh exited with {proc.returncode}:\n{out}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"{example} did not come up"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()  # run.sh execs the server: this stops it
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def fastapi_example(sidecar: Sidecar) -> Iterator[str]:
    yield from start("fastapi", sidecar)


@pytest.fixture
def express_example(sidecar: Sidecar) -> Iterator[str]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the Express example needs them")
    yield from start("express", sidecar)


def until(predicate: Callable[[], bool], what: str, limit_s: float = 5.0) -> None:
    """Settling a stream's hold may finish just after its last byte reached us."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def exercise(url: str, admin: Client) -> None:
    def balance() -> int:
        return admin.balance("acme").balance

    def held() -> int:
        return admin.balance("acme").held

    with httpx.Client(base_url=url, timeout=10) as http:
        funded, broke = {"X-API-Key": FUNDED}, {"X-API-Key": BROKE}
        before = balance()

        r = http.get("/v1/free")
        assert r.status_code == 200, r.text
        assert not any(k.lower().startswith("x-credits-") for k in r.headers)
        assert balance() == before

        r = http.get("/v1/quote")
        assert r.status_code == 401, r.text  # no key: nobody to bill

        for path, cost in (("/v1/quote", 1), ("/v1/report", 10)):
            r = http.get(path, headers=funded)
            assert r.status_code == 200, r.text
            before -= cost
            assert r.headers["X-Credits-Account"] == "acme"
            assert r.headers["X-Credits-Cost"] == str(cost)
            assert r.headers["X-Credits-Balance"] == str(before)
            assert r.headers["X-Credits-Replayed"] == "false"
            assert r.headers["X-Credits-Transaction"]
            assert balance() == before

        for path in ("/v1/quote", "/v1/report"):
            r = http.get(path, headers=broke)
            assert r.status_code == 402, r.text
            assert r.json()["reason"] == "insufficient_credits"
            assert r.headers["X-Credits-Reason"] == "insufficient_credits"
        r = http.post("/v1/generate", headers=broke)
        assert r.status_code == 402, r.text  # the estimate cannot be held

        r = http.post("/v1/generate", params={"tokens": 25}, headers=funded)
        assert r.status_code == 200, r.text
        assert len(r.text.split()) == 25
        assert r.headers["X-Credits-Hold"]
        before -= 25  # settled by the tokens sent, not the estimate held
        until(lambda: balance() == before and held() == 0, "the stream was not settled")

        # A client gone mid-stream: its hold is released, nothing charged.
        with http.stream("POST", "/v1/generate", params={"tokens": 200}, headers=funded) as r:
            assert r.status_code == 200
            chunks = r.iter_bytes()  # kept: an iterator dropped closes the response
            next(chunks)
            assert held() == 200
        until(lambda: held() == 0, "the hold was not released after the disconnect")
        assert balance() == before


def test_fastapi_example(fastapi_example: str, admin: Client) -> None:
    exercise(fastapi_example, admin)


def test_express_example(express_example: str, admin: Client) -> None:
    exercise(express_example, admin)
