"""Retries, timeouts and the deadline, against the real sidecar behind transports that fail in
known ways: 502/503/504 and dropped connections are retried (bounded), a 4xx never; an attempt
waits at most ``timeout``, a call at most ``deadline``."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from credit_sidecar import AsyncClient, Client, InsufficientCredits, SidecarUnavailable
from credit_sidecar.middleware.common import rate_limit_headers, route_cost
from tests.clients.conftest import Sidecar, funded
from tests.conftest import SERVICE


class Unavailable(httpx.BaseTransport):
    """Answers ``status`` to the first ``failures`` calls (not /openapi.json) without passing
    them on, then forwards to the sidecar; counts what reached it."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.inner = httpx.HTTPTransport()
        self.failures = failures
        self.status = status
        self.attempts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/openapi.json":
            self.attempts += 1
            if self.failures > 0:
                self.failures -= 1
                return httpx.Response(
                    self.status, json={"error": {"code": "store_unavailable", "message": "x"}}
                )
        return self.inner.handle_request(request)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_5xx_is_retried_within_the_attempts(
    status: int, admin_client: Client, sidecar: Sidecar
) -> None:
    funded(admin_client, "acme", 100)
    t = Unavailable(2, status)
    with Client(sidecar.url, SERVICE, transport=t, backoff=0.01) as c:
        assert c.check("acme", 1).balance == 99
    assert t.attempts == 3
    t = Unavailable(5, status)
    c = Client(sidecar.url, SERVICE, transport=t, backoff=0.01)
    with c, pytest.raises(SidecarUnavailable) as e:
        c.check("acme", 1)
    assert (t.attempts, e.value.status, e.value.code) == (3, status, "store_unavailable")
    assert admin_client.balance("acme").balance == 99


def test_4xx_is_never_retried(admin_client: Client, sidecar: Sidecar) -> None:
    funded(admin_client, "acme", 1)
    t = Unavailable(0)
    with Client(sidecar.url, SERVICE, transport=t) as c, pytest.raises(InsufficientCredits):
        c.check("acme", 10)
    assert t.attempts == 1


def test_a_call_without_idempotency_is_not_resent(admin_client: Client, sidecar: Sidecar) -> None:
    t = Unavailable(1)
    c = Client(sidecar.url, "admin-test-token", transport=t)
    with c, pytest.raises(SidecarUnavailable):
        c.create_token("once", ["read"])  # a second token would be a leaked one
    assert t.attempts == 1
    assert admin_client.list_tokens() == []


@pytest.fixture
def silent() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_timeout_per_attempt_and_deadline(silent: str) -> None:
    with Client(silent, SERVICE, timeout=0.2, deadline=0.5, verify_sidecar=False) as c:
        start = time.monotonic()
        with pytest.raises(SidecarUnavailable) as e:
            c.check("acme", 1)
        took = time.monotonic() - start
    assert 0.35 < took < 1.0, took
    assert "Timeout" in e.value.message or "deadline" in e.value.message


async def test_async_timeout_per_attempt_and_deadline(silent: str) -> None:
    async with AsyncClient(silent, SERVICE, timeout=0.2, deadline=0.5, verify_sidecar=False) as c:
        start = time.monotonic()
        with pytest.raises(SidecarUnavailable) as e:
            await c.check("acme", 1)
        took = time.monotonic() - start
    assert 0.35 < took < 1.0, took
    assert "Timeout" in e.value.message or "deadline" in e.value.message


async def test_async_refused_connection_is_retried_then_unavailable() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: every connection is refused, no byte of a request left
    async with AsyncClient(
        f"http://127.0.0.1:{port}", SERVICE, backoff=0.001, verify_sidecar=False
    ) as c:
        with pytest.raises(SidecarUnavailable) as e:
            await c.report_usage("acme", 1)
    assert "ClientConnectorError" in e.value.message


def test_rate_limit_headers_follow_the_ietf_draft() -> None:
    state = {"policy": "key", "limit": 100, "remaining": 7, "reset_ms": 1500, "period_ms": 60_000}
    assert rate_limit_headers(state) == {
        "RateLimit-Policy": '"key";q=100;w=60',
        "RateLimit": '"key";r=7;t=2',
    }
    assert rate_limit_headers(None) == {}


def test_route_costs() -> None:
    costs = {"GET /things": 1, "/search": 10, "POST /jobs/*": 5, "/jobs/big/*": 50}
    assert route_cost(costs, None, "GET", "/things") == 1
    assert route_cost(costs, None, "POST", "/things") is None
    assert route_cost(costs, 2, "POST", "/things") == 2
    assert route_cost(costs, None, "DELETE", "/search") == 10
    assert route_cost(costs, None, "POST", "/jobs/7") == 5
    assert route_cost(costs, None, "POST", "/jobs/big/7") == 50  # the longest prefix
    assert route_cost(costs, None, "GET", "/jobs/7") is None
