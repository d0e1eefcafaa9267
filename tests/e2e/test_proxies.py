"""End to end through real proxies running the shipped configs: examples/nginx/credit-sidecar.conf
(auth_request) and examples/caddy/Caddyfile (forward_auth). For each: allowed requests reach the
API with the credit headers and an untouched body; 402, 429 and 401 reach the client as JSON; a
retried request with the same X-Request-Id is charged once."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import admin
from tests.e2e.conftest import Stack, wait_listening
from tests.ports import free_port
from tests.rawhttp import send

pytestmark = pytest.mark.proxy

EXAMPLES = Path(__file__).parents[2] / "examples"


def render(example: str, s: Stack, listen_from: str, listen_to: str) -> str:
    text = (EXAMPLES / example).read_text()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{s.sidecar_port}")
    text = text.replace("127.0.0.1:9000", f"127.0.0.1:{s.upstream_port}")
    return text.replace(listen_from, listen_to)


def binary(name: str, *fallbacks: str) -> str:
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).exists()), None)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (apt-get install {name})")
    return found


def start_nginx(tmp: Path, listen: int, s: Stack) -> subprocess.Popen[bytes]:
    nginx = binary("nginx", "/usr/sbin/nginx")
    site = render("nginx/credit-sidecar.conf", s, "listen 8000;", f"listen 127.0.0.1:{listen};")
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


def start_caddy(tmp: Path, listen: int, s: Stack) -> subprocess.Popen[bytes]:
    caddy = binary("caddy")
    site = render("caddy/Caddyfile", s, ":8000 {", f"http://127.0.0.1:{listen} {{")
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


# How each config answers a denial: nginx renders its own JSON (and adds X-Credits-Balance
# for the client); Caddy passes the sidecar's JSON through as it is.
DENIALS: dict[str, dict[str, Any]] = {
    "nginx": {
        "rate_limited": lambda body: body["error"] == "rate_limited",
        "insufficient": {"error": "insufficient_credits", "balance": 0},
        "unauthorized": lambda body: body["reason"] == "invalid_api_key",
        "client_balance_header": True,
    },
    "caddy": {
        "rate_limited": lambda body: body["reason"] == "rate_limited",
        "insufficient": {
            "allowed": False,
            "reason": "insufficient_credits",
            "balance": 0,
            "required": 1,
        },
        "unauthorized": lambda body: True,
        "client_balance_header": False,
    },
}
STARTERS: dict[str, Callable[[Path, int, Stack], subprocess.Popen[bytes]]] = {
    "nginx": start_nginx,
    "caddy": start_caddy,
}


@dataclass
class Running:
    name: str  # nginx or caddy
    port: int
    stack: Stack


@pytest.fixture(params=["nginx", "caddy"])
async def running(
    request: pytest.FixtureRequest, stack: Stack, tmp_path: Path
) -> AsyncIterator[Running]:
    """The proxy, with its shipped config, in front of the sidecar and the echo upstream."""
    name: str = request.param
    port = free_port()
    proc = STARTERS[name](tmp_path, port, stack)
    try:
        await wait_listening(f"http://127.0.0.1:{port}/probe")
        stack.received.clear()
        yield Running(name, port, stack)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def proxy(running: Running) -> tuple[str, str, dict[str, Any]]:
    """(base URL of the proxy, an API key of account acme with 3 credits, its denial style)."""
    return f"http://127.0.0.1:{running.port}", running.stack.key, DENIALS[running.name]


async def test_allowed_request_reaches_the_api_with_credit_headers_and_its_body(
    proxy: tuple[str, str, dict[str, Any]],
) -> None:
    base, key, style = proxy
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base + "/v1/images?size=2",
            data=b'{"prompt": "a cat"}',
            headers={"Authorization": f"Bearer {key}", "X-Request-Id": "req-1"},
        ) as r,
    ):
        assert r.status == 200
        if style["client_balance_header"]:
            assert r.headers["X-Credits-Balance"] == "2"
        got = await r.json()
    assert got["method"] == "POST" and got["path"] == "/v1/images?size=2"
    assert got["body"] == '{"prompt": "a cat"}'
    assert got["headers"]["X-Credits-Account"] == "acme"
    assert got["headers"]["X-Credits-Balance"] == "2"
    assert got["headers"]["X-Credits-Transaction"].startswith("tx_")


async def test_402_429_and_401_reach_the_client_as_json(
    proxy: tuple[str, str, dict[str, Any]],
) -> None:
    base, key, style = proxy
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/search", headers={**auth, "X-Request-Id": "s1"}) as r:
            assert r.status == 200
        async with http.get(base + "/v1/search", headers={**auth, "X-Request-Id": "s2"}) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "60"
            assert style["rate_limited"](await r.json())
        for i in range(2):
            async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": f"x{i}"}) as r:
                assert r.status == 200
        async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": "x9"}) as r:
            assert r.status == 402
            assert r.headers["Content-Type"].startswith("application/json")
            assert await r.json() == style["insufficient"]
        async with http.get(base + "/v1/x", headers={"Authorization": "Bearer csk_wrong"}) as r:
            assert r.status == 401
            (challenge,) = r.headers.getall("WWW-Authenticate")  # one challenge, not two
            assert challenge.startswith("Bearer")
            assert style["unauthorized"](await r.json())


async def test_a_spending_limit_402_reaches_the_client_as_json_with_the_limit(
    proxy: tuple[str, str, dict[str, Any]], running: Running
) -> None:
    """nginx renders its own 402 body: a refusal over the spending limit must say so (not
    insufficient_credits, whose balance it does not carry: that body was not JSON), and the
    API never receives the spending headers from a client."""
    base, _, _ = proxy
    key = running.stack.rich_key
    limit = {"spend_limit": {"credits": 1, "interval": "month"}}
    async with aiohttp.ClientSession() as http:
        url = f"{running.stack.sidecar_url}/v1/accounts/rich"
        async with http.patch(url, json=limit, headers=admin()) as r:
            assert r.status == 200
        auth = {"Authorization": f"Bearer {key}", "X-Credits-Spent": "0"}
        async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": "l1"}) as r:
            assert r.status == 200
            assert "X-Credits-Spent" not in (await r.json())["headers"]
        async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": "l2"}) as r:
            assert r.status == 402
            assert r.headers["Content-Type"].startswith("application/json")
            assert r.headers["X-Credits-Spent"] == "1"
            assert r.headers["X-Credits-Spend-Limit"] == "1"
            body = await r.json()
        assert body["reason"] == "spend_limit" and body["spent"] == 1
        assert body["window_ends_at"].endswith("-01T00:00:00.000Z")
        if running.name == "nginx":
            assert body["error"] == "spend_limit"
        lifetime = {"spend_limit": {"credits": 1}}  # another window: counted from now
        async with http.patch(url, json=lifetime, headers=admin()) as r:
            assert r.status == 200
        async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": "l3"}) as r:
            assert r.status == 200
        async with http.get(base + "/v1/x", headers={**auth, "X-Request-Id": "l4"}) as r:
            assert r.status == 402
            assert (await r.json())["window_ends_at"] is None


async def test_retries_with_the_same_request_id_are_charged_once(
    proxy: tuple[str, str, dict[str, Any]],
) -> None:
    base, key, _ = proxy
    headers = {"X-API-Key": key, "X-Request-Id": "retry-me"}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(base + "/v1/x", data=b"payload", headers=headers) as r:
                assert r.status == 200
                assert (await r.json())["headers"]["X-Credits-Balance"] == "2"


# (method, the raw request target, the outcome): a cost charged (the request reaches the API
# with its raw target) or (status, reason) of the refusal (the API never sees it).
Refusal = tuple[int, str | None]
TRICKS: list[tuple[bytes, bytes, int | Refusal | dict[str, Refusal]]] = [
    (b"POST", b"/v1/images/a", 10),
    (b"GET", b"/%69nternal/secret", (403, "route_denied")),
    (b"POST", b"/v1/%69mages/a", 10),
    (b"POST", b"/v1/x/%2e%2E/images/a", 10),
    (b"GET", b"/v1/x/../../internal/secret", (403, "route_denied")),
    (b"GET", b"/v1/x/%2e%2e/%2e%2e/internal/secret", (403, "route_denied")),
    # Above the root: nginx refuses it itself (its HTML 400), Caddy leaves it to the sidecar.
    (
        b"GET",
        b"/v1/%2e%2e/%2e%2e/internal/secret",
        {"nginx": (400, None), "caddy": (400, "invalid_path")},
    ),
    (b"GET", b"/../internal/secret", {"nginx": (400, None), "caddy": (400, "invalid_path")}),
    (b"POST", b"/v1/./images/a", 10),
    (b"POST", b"//v1//images//a", 10),
    (b"POST", b"/v1/images;x=1/a", 10),
    (b"GET", b"/v1/images/..;/..;/internal/secret", (400, "invalid_path")),
    (b"POST", b"/v1/images%2Fa", (400, "invalid_path")),
    (b"POST", b"/v1/images%2fa", (400, "invalid_path")),
    (b"POST", b"/v1/%2569mages/a", 1),  # the API decodes once: /v1/%69mages/a, not images
    (b"GET", b"/internal\\secret", (400, "invalid_path")),
    (b"GET", b"/v1/images%5Ca", (400, "invalid_path")),
    (b"POST", b"/V1/Images/a", 1),  # case-sensitive (the pricing file can fold case)
    (b"POST", b"/v1/images/a?next=/../../internal/x", 10),
    (b"GET", b"/v1/a%00b", {"nginx": (400, None), "caddy": (400, "invalid_path")}),
    (b"GET", b"/v1/a%FFb", (400, "invalid_path")),
    (b"GET", b"/v1/a\xffb", (400, "invalid_path")),
]


async def test_tricky_paths_are_priced_as_the_route_the_api_serves(running: Running) -> None:
    """Each trick through the real proxy: what reached the API and what was charged."""
    s = running.stack
    spent = 0
    for i, (method, target, expected) in enumerate(TRICKS):
        if isinstance(expected, dict):
            expected = expected[running.name]
        s.received.clear()
        headers = {"X-API-Key": s.rich_key.encode(), "X-Request-Id": b"t%d" % i}
        r = await send(running.port, method, target, headers)
        body = r.json() if r.body.startswith(b"{") else {}
        assert isinstance(body, dict)
        if isinstance(expected, int):
            assert r.status == 200, (target, r.status, r.body)
            assert [x["raw_path"] for x in s.received] == [target.decode()]
            assert s.received[0]["headers"]["X-Credits-Cost"] == str(expected)
            spent += expected
        else:
            assert (r.status, body.get("reason")) == expected, (target, r.status, r.body)
            assert s.received == [], target
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{s.sidecar_url}/v1/accounts/rich/balance", headers=admin()) as balance,
    ):
        assert (await balance.json())["balance"] == 1000 - spent


async def test_bad_bytes_in_a_key_header_are_a_400_naming_it(running: Running) -> None:
    headers = {"X-API-Key": b"csk_\xff\xfe", "X-Request-Id": b"k1"}
    r = await send(running.port, b"GET", b"/v1/x", headers)
    body = r.json()
    assert r.status == 400 and isinstance(body, dict)
    assert (body["reason"], body["field"]) == ("invalid_header", "X-API-Key")
    assert running.stack.received == []


async def test_a_clients_own_method_and_uri_headers_do_not_change_the_price(
    running: Running,
) -> None:
    """The proxy replaces them: the sidecar prices the request line, not what the client says."""
    lies = [
        ("X-Original-URI", b"/v1/x"),
        ("X-Original-Method", b"GET"),
        ("X-Forwarded-Uri", b"/v1/x"),
        ("X-Forwarded-Method", b"GET"),
    ]
    headers = [("X-API-Key", running.stack.rich_key.encode()), ("X-Request-Id", b"lie"), *lies]
    r = await send(running.port, b"POST", b"/v1/images/a", headers)
    assert r.status == 200
    assert running.stack.received[0]["headers"]["X-Credits-Cost"] == "10"
