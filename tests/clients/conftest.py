"""A real sidecar for the clients' tests: the app on a real port, served from its own thread and
event loop (so the sync client, the WSGI frameworks and the async ones can all call it), and
stoppable mid-test (the failure policies)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from aiohttp import web
from pydantic import SecretStr

from credit_sidecar import Client
from sidecar.http.app import create_app
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.conftest import ADMIN, SERVICE
from tests.ports import free_port


class Sidecar:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> None:
        self.thread.start()
        self.resume()

    def resume(self) -> None:
        """Serves again on the same port (after :meth:`stop`): a sidecar restarted."""

        async def up() -> None:
            self.runner = web.AppRunner(create_app(self.settings))
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self._run(up())

    def stop(self) -> None:
        if self.runner is not None:
            self._run(self.runner.cleanup())
            self.runner = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextlib.contextmanager
def serving(settings: Settings, redis_server: RedisServer) -> Iterator[Sidecar]:
    """A sidecar with ``settings`` on ``redis_server``, flushed first, until the block ends."""
    r = redis_sync.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    s = Sidecar(settings)
    s.start()
    try:
        yield s
    finally:
        s.close()


def redis_only(redis_server: RedisServer, data_dir: Path, **more: Any) -> Settings:
    """Settings of a sidecar answering from Redis alone: the writer and billing worker off."""
    return Settings(
        redis_url=redis_server.url,
        admin_token=SecretStr(ADMIN),
        service_token=SecretStr(SERVICE),
        data_dir=data_dir,
        **({"writer": "off", "billing_worker": "off"} | more),
    )


@pytest.fixture
def sidecar(settings: Settings, redis_server: RedisServer) -> Iterator[Sidecar]:
    with serving(settings, redis_server) as s:
        yield s


@pytest.fixture
def admin_client(sidecar: Sidecar) -> Iterator[Client]:
    with Client(sidecar.url, ADMIN) as c:
        yield c


@pytest.fixture
def service_client(sidecar: Sidecar) -> Iterator[Client]:
    with Client(sidecar.url, SERVICE) as c:
        yield c


def funded(admin: Client, account: str, credits: int, **settings: Any) -> None:
    """An account with ``credits``."""
    admin.put_account(account, settings)
    if credits:
        admin.grant(account, credits, source="purchase", grant_id=f"fund-{account}")
