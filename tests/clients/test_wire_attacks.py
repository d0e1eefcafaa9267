"""Hostile conditions for the async client's aiohttp wire (credit_sidecar._wire), against a real
sidecar: answers lost after the sidecar acted (a request the client does not send again must not
be sent again by aiohttp either), a first burst of calls while the sidecar is silent (each call
still ends by its deadline), odd ids in paths, a path prefix, one client on two event loops."""

from __future__ import annotations

import asyncio
import gc
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from credit_sidecar import (
    AsyncClient,
    Client,
    CreditSidecarError,
    InvalidRequest,
    SidecarUnavailable,
)
from sidecar.redis.embedded import RedisServer
from tests.clients.conftest import Sidecar, funded, redis_only, serving
from tests.conftest import ADMIN, SERVICE, premigrated
from tests.ports import free_port


@pytest.fixture(scope="module")
def shared(
    redis_server: RedisServer, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sidecar]:
    data_dir = premigrated(sqlite_template, tmp_path_factory.mktemp("wire-attacks"))
    with serving(redis_only(redis_server, data_dir), redis_server) as s:
        yield s


@pytest.fixture(scope="module")
def admin(shared: Sidecar) -> Iterator[Client]:
    with Client(shared.url, ADMIN) as c:
        yield c


class Relay:
    """In front of the sidecar, under an optional path ``prefix``: forwards every request; a
    path ending in a ``lose`` entry is forwarded, then its connection closed with no answer
    (the sidecar acted, the answer is lost); ``silent`` never answers anything."""

    def __init__(
        self, sidecar: Sidecar, prefix: str = "", tls: ssl.SSLContext | None = None
    ) -> None:
        self.sidecar = sidecar
        self.prefix = prefix
        self.lose: set[str] = set()
        self.redirect: set[str] = set()  # answered 307 to /elsewhere (same origin)
        self.silent = False
        self.seen: list[str] = []
        self.port = free_port()
        self.tls = tls
        self.url = f"http{'s' if tls else ''}://127.0.0.1:{self.port}{prefix}"
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(f"{request.method} {request.raw_path}")
        if self.silent:
            await asyncio.sleep(1)
        if any(request.path.endswith(p) for p in self.redirect):
            raise web.HTTPTemporaryRedirect(f"{self.prefix}/elsewhere")
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
            await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.tls).start()

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


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A private CA (ca.pem) and 127.0.0.1's certificate it signed (cert.pem, key.pem)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: the HTTPS test makes its CA with it")
    d = tmp_path_factory.mktemp("tls")
    (d / "leaf.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "authorityKeyIdentifier=keyid,issuer\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    for args in (
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr",
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1"
        " -extfile leaf.cnf -out cert.pem",
    ):
        subprocess.run([openssl, *args.split()], cwd=d, check=True, capture_output=True)
    return d / "ca.pem", d / "cert.pem", d / "key.pem"


@pytest.fixture
def https_relay(shared: Sidecar, tls_files: tuple[Path, Path, Path]) -> Iterator[Relay]:
    _, cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    r = Relay(shared, tls=context)
    r.start()
    yield r
    r.stop()


async def test_an_https_sidecar_signed_by_the_ca_in_ssl_cert_file_is_trusted(
    admin: Client,
    https_relay: Relay,
    tls_files: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SSL_CERT_FILE names the CA of a private sidecar's certificate, as it did before the
    clients stopped reading proxies from the environment (trust_env=False)."""
    acct = f"wa-{uuid.uuid4().hex[:8]}"
    funded(admin, acct, 3)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
    with Client(https_relay.url, ADMIN, max_attempts=1) as s:
        assert s.balance(acct).balance == 3
    # aiohttp's default TLS context is made at its import: the async client in a process whose
    # environment names the CA from its start, as an app's does
    script = (
        "import asyncio, sys\n"
        "from credit_sidecar import AsyncClient\n"
        "async def main():\n"
        "    async with AsyncClient(sys.argv[1], sys.argv[2], max_attempts=1) as c:\n"
        "        print((await c.balance(sys.argv[3])).balance)\n"
        "asyncio.run(main())\n"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, https_relay.url, ADMIN, acct],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "3"), done.stderr


async def test_a_redirect_is_not_followed_by_either_client(relay: Relay) -> None:
    """As httpx (the sync client) and node:http: a 307 from whatever answers at the sidecar's
    address is an error, never the check sent on to another address."""
    relay.redirect.add("/v1/check")
    async with AsyncClient(relay.url, SERVICE, verify_sidecar=False) as c:
        with pytest.raises(CreditSidecarError) as e:
            await c.check("acme", 1)
    assert e.value.status == 307
    with Client(relay.url, SERVICE, verify_sidecar=False) as s, pytest.raises(CreditSidecarError):
        s.check("acme", 1)
    assert not any("/elsewhere" in seen for seen in relay.seen), relay.seen


def test_a_client_used_on_many_event_loops_keeps_no_session_of_a_finished_one(
    shared: Sidecar,
) -> None:
    """A sync app calling asyncio.run(client.check(...)) per request, with one client: each
    loop's session is let go when the next loop comes, never kept until the client goes."""

    async def one(c: AsyncClient) -> None:
        await c.list_plans()

    def sessions() -> int:
        gc.collect()
        # type(), not isinstance: a lazy object (Django's) would be evaluated
        return sum(type(o) is aiohttp.ClientSession for o in gc.get_objects())

    before = sessions()
    c = AsyncClient(shared.url, ADMIN, verify_sidecar=False)
    for _ in range(30):
        asyncio.run(one(c))
    assert sessions() - before <= 1
    asyncio.run(c.aclose())
