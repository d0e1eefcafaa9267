"""What a client cannot slip through the shipped nginx and Caddy configs (real proxies): its
own X-Credits-* headers (a cost the sidecar would honour under SIDECAR_TRUST_COST_HEADER, an
account or a balance your API would believe) reach neither the sidecar nor your API; nginx's
auth subrequest carries only the headers the decision needs, and no body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.settings import Settings
from tests.conftest import admin
from tests.e2e.conftest import Stack, wait_listening
from tests.e2e.test_proxies import STARTERS, Running, running  # noqa: F401
from tests.ports import free_port

pytestmark = pytest.mark.proxy

# Every X-Credits-* name the sidecar answers with (sidecar/http/proxy.py), and one of the
# client's own invention.
SIDECAR_NAMES = [
    "X-Credits-Account",
    "X-Credits-Balance",
    "X-Credits-Cost",
    "X-Credits-Transaction",
    "X-Credits-Replayed",
    "X-Credits-Reason",
    "X-Credits-Deny-Status",
    "X-Credits-Field",
    "X-Credits-Shadow-Status",
]
LIES = {name: "0" if name == "X-Credits-Cost" else "victim" for name in SIDECAR_NAMES}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"trust_cost_header": True})


async def test_a_clients_own_credit_headers_reach_neither_the_sidecar_nor_the_api(
    running: Running,  # noqa: F811
) -> None:
    s = running.stack
    headers = {"X-API-Key": s.rich_key, "X-Request-Id": "lie-1", **LIES}
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{running.port}/v1/images/a"
        async with http.post(url, data=b"body", headers=headers) as r:
            assert r.status == 200, await r.text()
        async with http.get(f"{s.sidecar_url}/v1/accounts/rich/balance", headers=admin()) as b:
            assert (await b.json())["balance"] == 990  # the route's 10, not the client's 0
    (seen,) = s.received
    got = {k.lower(): v for k, v in seen["headers"].items()}
    assert got["x-credits-cost"] == "10" and got["x-credits-account"] == "rich"
    assert got["x-credits-balance"] == "990" and got["x-credits-transaction"].startswith("tx_")
    assert got["x-credits-replayed"] == "false"
    for name in SIDECAR_NAMES[5:]:
        assert name.lower() not in got, name


SUBREQUEST: list[dict[str, Any]] = []


async def _record(request: web.Request) -> web.Response:
    """A sidecar that records what it is asked and allows without a word (as fail_open does:
    no X-Credits-* in its answer)."""
    SUBREQUEST.append({"body": await request.read(), "headers": dict(request.headers)})
    return web.Response(status=200)


@pytest.fixture
async def recorder() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _record)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    SUBREQUEST.clear()
    yield server.port or 0
    await server.close()


@pytest.mark.parametrize("name", ["nginx", "caddy"])
async def test_the_auth_request_carries_no_client_credit_headers_and_an_empty_answer_adds_none(
    name: str, stack: Stack, recorder: int, tmp_path: Path
) -> None:
    """And through nginx, nothing but what the decision needs: no cookie, no body."""
    fake = Stack(recorder, stack.upstream_port, stack.key, stack.rich_key, stack.received)
    port = free_port()
    proc = STARTERS[name](tmp_path, port, fake)
    try:
        await wait_listening(f"http://127.0.0.1:{port}/probe")
        SUBREQUEST.clear()
        stack.received.clear()
        headers = {
            "Authorization": "Bearer k",
            "X-Request-Id": "r-1",
            "Cookie": "session=secret",
            "X-Unrelated": "u",
            **LIES,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{port}/v1/images/a", data=b"body", headers=headers) as r,
        ):
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(10)
    (asked,) = SUBREQUEST
    names = {k.lower() for k in asked["headers"]}
    assert asked["body"] == b""
    assert not [n for n in names if n.startswith("x-credits-")], names
    if name == "nginx":
        wanted = {"host", "authorization", "x-api-key", "x-request-id"}
        assert names <= wanted | {"x-original-method", "x-original-uri"}, names
        assert asked["headers"]["X-Original-URI"] == "/v1/images/a"
    (seen,) = stack.received
    assert seen["body"] == "body"
    for k, v in seen["headers"].items():
        if k.lower().startswith("x-credits-"):  # Caddy 2.6 sets a missing one to its placeholder
            assert v != LIES.get(k), (k, v)


async def test_a_replay_reaches_the_api_marked_as_one_whatever_its_body(
    running: Running,  # noqa: F811
) -> None:
    """The same request id on the same request is charged once; the sidecar never sees the
    body, so the API learns which one is the replay (same transaction) and must not redo
    the work for a different body."""
    s = running.stack
    headers = {"X-API-Key": s.rich_key, "X-Request-Id": "again-1"}
    url = f"http://127.0.0.1:{running.port}/v1/images/a"
    async with aiohttp.ClientSession() as http:
        for prompt in (b"a cat", b"a different, dearer prompt"):
            async with http.post(url, data=prompt, headers=headers) as r:
                assert r.status == 200, await r.text()
        async with http.get(f"{s.sidecar_url}/v1/accounts/rich/balance", headers=admin()) as b:
            assert (await b.json())["balance"] == 990  # charged once
    first, again = ({k.lower(): v for k, v in x["headers"].items()} for x in s.received)
    assert (first["x-credits-replayed"], again["x-credits-replayed"]) == ("false", "true")
    assert first["x-credits-transaction"] == again["x-credits-transaction"]
