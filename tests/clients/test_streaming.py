"""A streamed response billed by tokens, on a real uvicorn server (and a Flask app) in front of
a real sidecar: the estimate is held before the response starts, the counted tokens are settled
when the stream ends, and a client that disconnects mid-stream gets its hold released (nothing
charged)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from flask import Flask
from flask import Response as FlaskResponse
from flask import request as flask_request
from starlette.requests import Request
from starlette.responses import Response

from credit_sidecar import AsyncClient, Client, InsufficientCredits, late
from credit_sidecar.middleware.asgi import render
from credit_sidecar.middleware.common import refused
from credit_sidecar.streaming import MeteredStreamingResponse, metered, metered_sync
from tests.clients.conftest import Sidecar, funded
from tests.conftest import SERVICE
from tests.ports import free_port

ESTIMATE = 100


def streaming_app(sidecar_url: str) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncClient(sidecar_url, SERVICE) as client:  # one, reused: a connection pool
            app.state.credits = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/generate")
    async def generate(request: Request, words: int = 5, delay: float = 0.0) -> Response:
        client: AsyncClient = request.app.state.credits
        try:
            hold = await client.hold("acme", ESTIMATE)
        except InsufficientCredits as e:
            return render(refused(e))

        async def tokens() -> AsyncIterator[str]:
            for i in range(words):
                if delay:
                    await asyncio.sleep(delay)
                yield f"word{i} "

        # each chunk is one token here; an LLM stream would count its usage
        return MeteredStreamingResponse(
            client, hold, tokens(), count=lambda chunk: 1, media_type="text/plain"
        )

    return app


@pytest.fixture
def server(sidecar: Sidecar) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        streaming_app(sidecar.url), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_stream_settled_by_tokens(admin_client: Client, server: str) -> None:
    funded(admin_client, "acme", 1000)
    r = httpx.get(f"{server}/generate?words=7", timeout=10)
    assert r.status_code == 200 and r.text.count("word") == 7
    wait_for(lambda: admin_client.balance("acme").held == 0)
    assert admin_client.balance("acme").balance == 993  # 7 tokens, not the 100 held


def test_stream_refused_before_it_starts(admin_client: Client, server: str) -> None:
    funded(admin_client, "acme", 10)
    r = httpx.get(f"{server}/generate", timeout=10)
    assert r.status_code == 402 and r.json()["required"] == ESTIMATE


def test_disconnect_releases_the_hold(admin_client: Client, server: str) -> None:
    funded(admin_client, "acme", 1000)
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"GET /generate?words=50&delay=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in s.recv(4096)
        wait_for(lambda: admin_client.balance("acme").held == ESTIMATE)
    # the client is gone: uvicorn tells the app, the stream stops, the hold is released
    wait_for(lambda: admin_client.balance("acme").held == 0, timeout=10)
    b = admin_client.balance("acme")
    assert b.balance == 1000


def flask_streaming_app(client: Client) -> Flask:
    app = Flask(__name__)

    @app.get("/generate")
    def generate() -> FlaskResponse:
        hold = client.hold("acme", ESTIMATE)
        words = (f"word{i} " for i in range(int(flask_request.args.get("words", 5))))
        body = metered_sync(client, hold, words, count=lambda chunk: 1)
        return FlaskResponse(body, mimetype="text/plain")

    return app


def test_wsgi_stream_settled_and_closed_early_released(
    admin_client: Client, sidecar: Sidecar
) -> None:
    funded(admin_client, "acme", 1000)
    with Client(sidecar.url, SERVICE) as client:
        http = flask_streaming_app(client).test_client()
        assert http.get("/generate?words=4").text.count("word") == 4
        assert admin_client.balance("acme").balance == 996
        r = http.get("/generate?words=50", buffered=False)
        assert next(iter(r.response)) == b"word0 "
        assert admin_client.balance("acme").held == ESTIMATE
        r.close()  # what a WSGI server does when the client goes away
    b = admin_client.balance("acme")
    assert (b.balance, b.held) == (996, 0)


async def test_a_settle_the_sidecar_could_not_take_lands_once_it_is_back(
    admin_client: Client, sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(late, "BACKOFF_S", (0.05, 0.1))
    funded(admin_client, "acme", 100)
    async with AsyncClient(sidecar.url, SERVICE, deadline=0.3, backoff=0.01) as client:
        hold = await client.hold("acme", 30, ttl_ms=60_000)

        async def tokens() -> AsyncIterator[str]:
            for t in ("a", "b", "c"):
                yield t
            await asyncio.to_thread(sidecar.stop)  # down as the stream ends

        assert [t async for t in metered(client, hold, tokens(), count=lambda t: 4)] == list("abc")
        [retrying] = late.pending()
        assert not retrying.done()  # the settle failed within its deadline; retried
        await asyncio.to_thread(sidecar.resume)
        assert await asyncio.wait_for(retrying, 10) is True
    b = admin_client.balance("acme")
    assert (b.balance, b.held) == (88, 0)  # 12 charged, once; the rest of the hold back


async def test_a_late_settle_stops_at_hold_expired_and_charges_nothing(
    admin_client: Client, sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(late, "BACKOFF_S", (0.05,))
    funded(admin_client, "acme", 100)
    async with AsyncClient(sidecar.url, SERVICE, deadline=0.3, backoff=0.01) as client:
        hold = await client.hold("acme", 30, ttl_ms=200)
        await asyncio.sleep(0.4)  # the hold lapses: its TTL released it
        assert await asyncio.wait_for(late.settle_later(client, hold, 12), 10) is False
    b = admin_client.balance("acme")
    assert (b.balance, b.held) == (100, 0)


def test_a_wsgi_settle_the_sidecar_could_not_take_lands_once_it_is_back(
    admin_client: Client, sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(late, "BACKOFF_S", (0.05, 0.1))
    funded(admin_client, "acme", 100)
    with Client(sidecar.url, SERVICE, deadline=0.3, backoff=0.01) as client:
        hold = client.hold("acme", 30, ttl_ms=60_000)
        threads: list[threading.Thread] = []
        real = late.settle_later_sync
        monkeypatch.setattr(late, "settle_later_sync", lambda *a: threads.append(real(*a)))

        def tokens() -> Iterator[str]:
            yield from ("a", "b")
            sidecar.stop()

        assert list(metered_sync(client, hold, tokens(), count=lambda t: 5)) == ["a", "b"]
        [thread] = threads
        sidecar.resume()
        thread.join(timeout=10)
        assert not thread.is_alive()
    b = admin_client.balance("acme")
    assert (b.balance, b.held) == (90, 0)
