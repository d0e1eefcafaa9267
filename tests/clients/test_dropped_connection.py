"""A dropped connection on a real socket: a TCP relay in front of the sidecar forwards each
request, reads the sidecar's whole answer, then closes the caller's connection without a byte
(the first ``drops`` times). The work was done, the answer lost: the client's retry, with the
same idempotency key, is answered as a replay and the account is charged once."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from credit_sidecar import AsyncClient, Client
from tests.clients.conftest import Sidecar, funded
from tests.conftest import SERVICE


class Relay:
    def __init__(self, upstream: str, drops: int) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.drops = drops
        self.forwarded: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            line = f.readline().decode()
            if not line:
                return
            method, path, _ = line.split(" ", 2)
            headers: dict[str, str] = {}
            while (h := f.readline().decode()) not in ("\r\n", ""):
                name, _, value = h.partition(":")
                headers[name.strip()] = value.strip()
            body = f.read(int(headers.get("Content-Length", headers.get("content-length", 0))))
            upstream = http.client.HTTPConnection(*self.upstream, timeout=10)
            upstream.request(method, path, body, headers)
            answer = upstream.getresponse()
            payload = answer.read()
            upstream.close()
            if path != "/openapi.json":
                self.forwarded.append(path)
                if self.drops > 0:
                    self.drops -= 1
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return  # closed (reset) without answering
            head = f"HTTP/1.1 {answer.status} {answer.reason}\r\n"
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                    head += f"{name}: {value}\r\n"
            head += f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            conn.sendall(head.encode() + payload)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def relay(sidecar: Sidecar) -> Iterator[Relay]:
    r = Relay(sidecar.url, drops=2)
    yield r
    r.close()


def test_sync_retry_after_a_dropped_connection_charged_once(
    admin_client: Client, relay: Relay
) -> None:
    funded(admin_client, "acme", 100)
    with Client(relay.url, SERVICE, backoff=0.01) as c:
        r = c.check("acme", 10)
    assert r.replayed and r.balance == 90
    assert relay.forwarded == ["/v1/check"] * 3  # reached the sidecar three times
    assert admin_client.balance("acme").balance == 90


async def test_async_hold_retried_after_a_dropped_connection_held_once(
    admin_client: Client, relay: Relay
) -> None:
    funded(admin_client, "acme", 100)
    async with AsyncClient(relay.url, SERVICE, backoff=0.01) as c:
        hold = await c.hold("acme", 30)
    assert hold.replayed
    assert admin_client.balance("acme").held == 30
