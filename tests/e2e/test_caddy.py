"""End to end through a real Caddy running examples/caddy/Caddyfile (forward_auth): allowed
requests reach the API with the credit headers and an untouched body; 402, 429 and 401 reach
the client as the sidecar's JSON; a retried request with the same X-Request-Id is charged once."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.embedded import free_port
from tests.e2e.conftest import Stack, wait_listening

EXAMPLE = Path(__file__).parents[2] / "examples" / "caddy" / "Caddyfile"


def start_caddy(tmp: Path, listen: int, s: Stack) -> subprocess.Popen[bytes]:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.fail("caddy is not installed: `make test` installs it (apt-get install caddy)")
    site = EXAMPLE.read_text()
    site = site.replace("127.0.0.1:8080", f"127.0.0.1:{s.sidecar_port}")
    site = site.replace("127.0.0.1:9000", f"127.0.0.1:{s.upstream_port}")
    site = site.replace(":8000 {", f"http://127.0.0.1:{listen} {{")
    conf = tmp / "Caddyfile"
    conf.write_text("{\n\tadmin off\n\tauto_https off\n}\n" + site)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "cfg")}
    log = (tmp / "caddy.log").open("wb")
    return subprocess.Popen(
        [caddy, "run", "--config", str(conf), "--adapter", "caddyfile"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
async def through_caddy(stack: Stack, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    port = free_port()
    proc = start_caddy(tmp_path, port, stack)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_listening(base + "/probe")
        yield base, stack.key
    finally:
        proc.terminate()
        proc.wait(10)


async def test_allowed_request_reaches_the_api_with_credit_headers_and_its_body(
    through_caddy: tuple[str, str],
) -> None:
    base, key = through_caddy
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base + "/v1/images?size=2",
            data=b'{"prompt": "a cat"}',
            headers={"Authorization": f"Bearer {key}", "X-Request-Id": "req-1"},
        ) as r,
    ):
        assert r.status == 200
        got = await r.json()
    assert got["method"] == "POST" and got["path"] == "/v1/images?size=2"
    assert got["body"] == '{"prompt": "a cat"}'
    assert got["headers"]["X-Credits-Account"] == "acme"
    assert got["headers"]["X-Credits-Balance"] == "2"
    assert got["headers"]["X-Credits-Transaction"].startswith("tx_")


async def test_402_429_and_401_reach_the_client_as_json(through_caddy: tuple[str, str]) -> None:
    base, key = through_caddy
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/search", headers={**auth, "X-Request-Id": "s1"}) as r:
            assert r.status == 200
        async with http.get(base + "/v1/search", headers={**auth, "X-Request-Id": "s2"}) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "60"
            assert (await r.json())["reason"] == "rate_limited"
        for i in range(2):
            async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": f"x{i}"}) as r:
                assert r.status == 200
        async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": "x9"}) as r:
            assert r.status == 402
            assert await r.json() == {
                "allowed": False,
                "reason": "insufficient_credits",
                "balance": 0,
                "required": 1,
            }
        async with http.get(base + "/v1/x", headers={"Authorization": "Bearer csk_wrong"}) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_retries_with_the_same_request_id_are_charged_once(
    through_caddy: tuple[str, str],
) -> None:
    base, key = through_caddy
    headers = {"X-API-Key": key, "X-Request-Id": "retry-me"}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(base + "/v1/x", data=b"payload", headers=headers) as r:
                assert r.status == 200
                assert (await r.json())["headers"]["X-Credits-Balance"] == "2"
