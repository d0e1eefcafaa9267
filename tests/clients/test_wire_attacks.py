"""Hostile conditions for the async client's aiohttp wire (credit_sidecar._wire), against a real
sidecar: answers lost after the sidecar acted (a request the client does not send again must not
be sent again by aiohttp either), a first burst of calls while the sidecar is silent (each call
still ends by its deadline), odd ids in paths, a path prefix, one client on two event loops."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis as redis_sync
from aiohttp import web
from pydantic import SecretStr

from credit_sidecar import AsyncClient, Client, InvalidRequest, SidecarUnavailable
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.clients.conftest import Sidecar, funded
from tests.conftest import ADMIN, SERVICE, premigrated
from tests.ports import free_port


@pytest.fixture(scope="module")
def shared(
    redis_server: RedisServer, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sidecar]:
    r = redis_sync.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    settings = Settings(
        redis_url=redis_server.url,
        admin_token=SecretStr(ADMIN),
        service_token=SecretStr(SERVICE),
        data_dir=premigrated(sqlite_template, tmp_path_factory.mktemp("wire-attacks")),
        writer="off",
        billing_worker="off",
    )
    s = Sidecar(settings)
    s.start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def admin(shared: Sidecar) -> Iterator[Client]:
    with Client(shared.url, ADMIN) as c:
        yield c


class Relay:
    """In front of the sidecar, under an optional path ``prefix``: forwards every request; a
    path ending in a ``lose`` entry is forwarded, then its connection closed with no answer
    (the sidecar acted, the answer is lost); ``silent`` never answers anything."""

    def __init__(self, sidecar: Sidecar, prefix: str = "") -> None:
        self.sidecar = sidecar
        self.prefix = prefix
        self.lose: set[str] = set()
        self.silent = False
        self.seen: list[str] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{prefix}"
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(f"{request.method} {request.raw_path}")
        if self.silent:
            await asyncio.sleep(1)
        if not request.raw_path.startswith(self.prefix + "/"):
            return web.json_response({"error": {"code": "not_found"}}, status=404)
        path = request.raw_path.removeprefix(self.prefix)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                self.sidecar.url + path,
                data=body,
                headers=headers,
                skip_auto_headers=("Content-Type",),
            ) as r,
        ):
            answer = web.Response(status=r.status, body=await r.read(), content_type=r.content_type)
        if any(request.path.endswith(p) for p in self.lose):
            assert request.transport is not None
            request.transport.close()
        return answer

    def start(self) -> None:
        async def up() -> None:
            self.runner = web.AppRunner(web.Application())
            self.runner.app.router.add_route("*", "/{tail:.*}", self.handle)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self.sidecar._run(up())

    def stop(self) -> None:
        if self.runner is not None:
            self.sidecar._run(self.runner.cleanup())


@pytest.fixture
def relay(shared: Sidecar) -> Iterator[Relay]:
    r = Relay(shared)
    r.start()
    yield r
    r.stop()


PLAN = {"name": "Free", "allowance": {"credits": 1, "interval": "day"}}


async def test_a_delete_whose_answer_is_lost_is_sent_once(admin: Client, relay: Relay) -> None:
    """delete_plan is not sent again once it may have landed (a repeat is a 404): aiohttp's own
    re-send of an idempotent method on a dropped connection must not do it either."""
    plan = f"p-{uuid.uuid4().hex[:8]}"
    admin.put_plan(plan, PLAN)
    relay.lose.add(f"/v1/plans/{plan}")
    async with AsyncClient(relay.url, ADMIN, verify_sidecar=False) as c:
        with pytest.raises(SidecarUnavailable):
            await c.delete_plan(plan)
    assert relay.seen.count(f"DELETE /v1/plans/{plan}") == 1, relay.seen


async def test_concurrent_first_calls_to_a_silent_sidecar_each_end_by_the_deadline(
    relay: Relay,
) -> None:
    """A first burst shares one read of the spec, and its failure: the sixth call does not wait
    for five reads to fail before its own (6 deadlines)."""
    relay.silent = True
    async with AsyncClient(relay.url, SERVICE, timeout=0.3, deadline=0.3, max_attempts=1) as c:
        start = time.monotonic()
        outcomes = await asyncio.gather(
            *(c.check("acme", 1) for _ in range(6)), return_exceptions=True
        )
        took = time.monotonic() - start
    assert all(isinstance(o, SidecarUnavailable) for o in outcomes), outcomes
    assert relay.seen == ["GET /openapi.json"]
    assert took < 1.2, took


@pytest.fixture
def prefixed(shared: Sidecar) -> Iterator[Relay]:
    r = Relay(shared, prefix="/sidecar")
    r.start()
    yield r
    r.stop()


async def test_a_base_url_with_a_path_prefix_keeps_it(admin: Client, prefixed: Relay) -> None:
    acct = f"wa-{uuid.uuid4().hex[:8]}"
    funded(admin, acct, 7)
    async with AsyncClient(prefixed.url, ADMIN) as c:
        assert (await c.balance(acct)).balance == 7
    with Client(prefixed.url, ADMIN) as s:
        assert s.balance(acct).balance == 7
    assert all(seen.startswith("GET /sidecar/") for seen in prefixed.seen), prefixed.seen


@pytest.mark.parametrize("reason", ["a\r\nX-Evil: 1", "a\x00"])
async def test_a_header_with_a_control_character_is_an_invalid_request_never_sent(
    relay: Relay, reason: str
) -> None:
    """Never "unavailable" (retried, and let through under fail_open): a clear 400, unsent."""
    async with AsyncClient(relay.url, ADMIN, verify_sidecar=False) as c:
        with pytest.raises(InvalidRequest) as e:
            await c.put_account("crlf", {}, reason=reason)
        assert (e.value.status, e.value.code, e.value.field) == (
            400,
            "invalid_header",
            "X-Audit-Reason",
        )
    with (
        Client(relay.url, ADMIN + reason, verify_sidecar=False) as s,
        pytest.raises(InvalidRequest),
    ):
        s.balance("crlf")
    assert relay.seen == []
