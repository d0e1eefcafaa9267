"""End-to-end fixtures: the sidecar and a small echo API on real ports, an account with a key,
and a helper to wait for a proxy to listen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.http.app import create_app
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin
from tests.ports import free_port

PRICING = """
[[route]]
name = "search"
path = "/v1/search*"
cost = 1
rate_limit = { requests = 1, period_ms = 60000 }
[[route]]
name = "images"
methods = ["POST"]
path = "/v1/images/*"
cost = 10
[[route]]
name = "internal"
path = "/internal/*"
cost = "deny"
"""
RECEIVED = web.AppKey("received", list[dict[str, Any]])


async def echo(request: web.Request) -> web.Response:
    """The API behind the proxy: tells (and records) what reached it."""
    seen = {
        "method": request.method,
        "path": request.path_qs,
        "raw_path": request.raw_path,
        "body": (await request.read()).decode(),
        "headers": {k: v for k, v in request.headers.items() if k.startswith("X-")},
    }
    request.app[RECEIVED].append(seen)
    return web.json_response(seen)


@dataclass
class Stack:
    sidecar_port: int
    upstream_port: int
    key: str  # an API key of account acme, which holds 3 credits
    rich_key: str  # an API key of account rich, which holds 1000 credits
    received: list[dict[str, Any]]  # what reached the upstream, in order
    sidecar_url: str = ""


def write(path: Path, text: str) -> None:
    path.write_text(text)


async def wait_listening(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 60  # a process starting on a busy CI machine
        while time.monotonic() < deadline:
            try:
                async with http.get(url):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    pytest.fail(f"nothing listens on {url}")


@pytest.fixture
async def stack(
    settings: Settings, redis: Any, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Stack]:
    pricing = tmp_path / "pricing.toml"
    write(pricing, PRICING)
    s = settings.model_copy(update={"pricing_file": pricing})
    sidecar = TestServer(create_app(s, clock=clock), host="127.0.0.1", port=free_port())
    upstream_app = web.Application()
    upstream_app[RECEIVED] = []
    upstream_app.router.add_route("*", "/{tail:.*}", echo)
    upstream = TestServer(upstream_app, host="127.0.0.1", port=free_port())
    await sidecar.start_server()
    await upstream.start_server()
    base = f"http://127.0.0.1:{sidecar.port}"
    async with aiohttp.ClientSession() as http:
        await http.put(f"{base}/v1/accounts/acme", json={}, headers=admin())
        grant = {"grant_id": "g", "credits": 3, "reason": "test"}
        await http.post(f"{base}/v1/accounts/acme/grants", json=grant, headers=admin())
        async with http.post(f"{base}/v1/accounts/acme/keys", json={}, headers=admin()) as r:
            key = (await r.json())["key"]
        await http.put(f"{base}/v1/accounts/rich", json={}, headers=admin())
        grant = {"grant_id": "g", "credits": 1000, "reason": "test"}
        await http.post(f"{base}/v1/accounts/rich/grants", json=grant, headers=admin())
        async with http.post(f"{base}/v1/accounts/rich/keys", json={}, headers=admin()) as r:
            rich_key = (await r.json())["key"]
    try:
        yield Stack(
            sidecar.port or 0,
            upstream.port or 0,
            key,
            rich_key,
            upstream_app[RECEIVED],
            base,
        )
    finally:
        await sidecar.close()
        await upstream.close()
