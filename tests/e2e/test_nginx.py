"""End to end through a real nginx running examples/nginx/credit-sidecar.conf: allowed requests
reach the API with the credit headers and an untouched body; 402, 429 and 401 reach the client as
JSON; a retried request with the same X-Request-Id is charged once."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.embedded import free_port
from tests.e2e.conftest import Stack, wait_listening

EXAMPLE = Path(__file__).parents[2] / "examples" / "nginx" / "credit-sidecar.conf"


def start_nginx(tmp: Path, listen: int, s: Stack) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed: `make test` installs it (apt-get install nginx)")
    site = EXAMPLE.read_text()
    site = site.replace("127.0.0.1:8080", f"127.0.0.1:{s.sidecar_port}")
    site = site.replace("127.0.0.1:9000", f"127.0.0.1:{s.upstream_port}")
    site = site.replace("listen 8000;", f"listen 127.0.0.1:{listen};")
    (tmp / "site.conf").write_text(site)
    temps = "\n".join(
        f"  {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/error.log info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n  access_log off;\n{temps}\n  include {tmp}/site.conf;\n}}\n"
    )
    return subprocess.Popen([nginx, "-p", str(tmp), "-c", str(conf)])


@pytest.fixture
async def through_nginx(stack: Stack, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """(base URL of nginx, an API key of account acme with 3 credits)."""
    port = free_port()
    proc = start_nginx(tmp_path, port, stack)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_listening(base + "/healthz-probe")
        yield base, stack.key
    finally:
        proc.terminate()
        proc.wait(10)


async def test_allowed_request_reaches_the_api_with_credit_headers_and_its_body(
    through_nginx: tuple[str, str],
) -> None:
    base, key = through_nginx
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base + "/v1/images?size=2",
            data=b'{"prompt": "a cat"}',
            headers={"Authorization": f"Bearer {key}", "X-Request-Id": "req-1"},
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["X-Credits-Balance"] == "2"
        got = await r.json()
    assert got["method"] == "POST" and got["path"] == "/v1/images?size=2"
    assert got["body"] == '{"prompt": "a cat"}'
    assert got["headers"]["X-Credits-Account"] == "acme"
    assert got["headers"]["X-Credits-Balance"] == "2"
    assert got["headers"]["X-Credits-Transaction"].startswith("tx_")


async def test_402_429_and_401_reach_the_client_as_json(through_nginx: tuple[str, str]) -> None:
    base, key = through_nginx
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/search", headers={**auth, "X-Request-Id": "s1"}) as r:
            assert r.status == 200
        async with http.get(base + "/v1/search", headers={**auth, "X-Request-Id": "s2"}) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "60"
            assert (await r.json())["error"] == "rate_limited"
        for i in range(2):
            async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": f"x{i}"}) as r:
                assert r.status == 200
        async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": "x9"}) as r:
            assert r.status == 402
            assert r.headers["Content-Type"].startswith("application/json")
            assert await r.json() == {"error": "insufficient_credits", "balance": 0}
        async with http.get(base + "/v1/x", headers={"Authorization": "Bearer csk_wrong"}) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await r.json())["reason"] == "invalid_api_key"


async def test_retries_with_the_same_request_id_are_charged_once(
    through_nginx: tuple[str, str],
) -> None:
    base, key = through_nginx
    headers = {"X-API-Key": key, "X-Request-Id": "retry-me"}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(base + "/v1/x", data=b"payload", headers=headers) as r:
                assert r.status == 200 and r.headers["X-Credits-Balance"] == "2"
