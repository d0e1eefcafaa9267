"""Schemathesis fuzzes the real app, served on a local port, from its own OpenAPI document
(generated from the route declarations, sidecar/http/api.py): valid and invalid requests for
every operation, with the admin token or, for half the cases, a named token holding only the
operation's scope (the proxies' auth endpoints get real API keys). Checked
on every answer: never a server error, the status and content type are documented, the body
matches the generated response schema (response_schema_conformance); and an answer of 4xx
changed nothing in Redis (equal snapshots before and after).

Each operation starts from the same seeded state (an account with credits, a hold, a refundable
grant, API keys, a package), and half the generated cases have their valid ids swapped for
those, so the fuzzer reaches the handlers' real work and not only their 404s. Stripe is the
local fake of tests/billing, so the billing routes run their real code.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sidecar.http.api import API, build_spec
from sidecar.http.app import create_app
from sidecar.http.schemas import (
    ID_PATTERN,
)
from sidecar.http.state import BILLING, LEDGER
from sidecar.ledger.tokens import SCOPES
from sidecar.persistence.writer import OutboxWriter
from sidecar.redis.client import RedisClient, connect
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.billing.fakestripe import FakeStripe
from tests.conftest import ADMIN, SERVICE, FakeClock, snapshot
from tests.persistence.test_writer import drain
from tests.ports import free_port

T = TypeVar("T")
# Per operation; SIDECAR_FUZZ_EXAMPLES=500 for a deeper run by hand. The same examples every
# run (derandomized: CI is reproducible) unless SIDECAR_FUZZ_RANDOM=1 explores new ones.
MAX_EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "25"))
DERANDOMIZE = os.environ.get("SIDECAR_FUZZ_RANDOM", "") != "1"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
VALID_ID = re.compile(ID_PATTERN)
PRICE = "price_starter"

# Each scoped operation's scopes, by (method, path as the spec writes it).
SCOPED = {(op.method, op.spec_path): op.auth.scopes for op in API.operations if op.auth.scopes}
# The proxies' auth endpoints answer any method with one handler: GET and POST are enough.
schema = schemathesis.openapi.from_dict(build_spec()).exclude(
    operation_id_regex=r"^auth_.*_(put|patch|delete)$"
)


@dataclass
class Served:
    """The app on a local port, run by an event loop in a thread of its own (schemathesis
    calls it synchronously), and what the checks need from that loop."""

    url: str
    loop: asyncio.AbstractEventLoop
    redis: RedisClient
    app: web.Application
    operation: str = ""  # the operation being fuzzed
    # What seed() made: ids by the names fields and parameters give them; API keys.
    ids: dict[str, str] = field(default_factory=dict)
    api_keys: tuple[str, str] = ("", "")  # the rich account's, the broke one's
    tokens: dict[str, str] = field(default_factory=dict)  # a named token of each scope
    portal: dict[str, str] = field(default_factory=dict)  # acme's portal session: its headers
    in_sql: bool = False  # the first seed was written to the SQL ledger
    # The last snapshot taken, and Redis' write counter when it was taken.
    known: tuple[int, dict[bytes, object]] | None = field(default=None, repr=False)

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        async def call() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def writes(self) -> int:
        """Redis' count of writes so far (persistence is off, so nothing resets it)."""
        info: Any = self.run(lambda: self.redis.info("persistence"))
        return int(info["rdb_changes_since_last_save"])

    def state(self) -> tuple[int, dict[bytes, object]]:
        """(write count, snapshot) now; the snapshot is taken again only after writes."""
        count = self.writes()
        if self.known is None or self.known[0] != count:
            self.known = (count, self.run(lambda: snapshot(self.redis)))
        return self.known

    def start(self, operation: str) -> None:
        """The same seeded state for each operation (and few keys: quick snapshots)."""
        if operation != self.operation:
            self.operation = operation
            self.run(self.redis.flushall)
            seed(self)


def seed(s: Served) -> None:
    """Account acme with credits, a hold, a usage transaction to refund and an API key;
    account broke with no credits and a key; a package; a plan. The first seed is also written to
    the SQL ledger, for the read routes (Redis is wiped before each operation, SQL is not)."""
    auth = {"Authorization": f"Bearer {ADMIN}"}

    def call(method: str, path: str, body: dict[str, Any]) -> Any:
        r = requests.request(method, s.url + path, json=body, headers=auth, timeout=10)
        assert r.status_code in (200, 201), (path, r.status_code, r.text)
        return r.json()

    call("PUT", "/v1/accounts/acme", {})
    call("PUT", "/v1/accounts/broke", {})
    call("POST", "/v1/accounts/acme/grants", {"grant_id": "g1", "credits": 1000, "reason": "test"})
    usage = call("POST", "/v1/check", {"account": "acme", "cost": 3, "idempotency_key": "r1"})
    call("POST", "/v1/holds", {"account": "acme", "hold_id": "h1", "amount": 5})
    package = {"name": "Starter", "credits": 1000, "price": 500, "stripe_price_id": PRICE}
    call("PUT", "/v1/admin/packages/starter", package)
    plan = {"name": "Pro", "allowance": {"credits": 100, "interval": "month"}}
    call("PUT", "/v1/plans/pro", plan)
    for scope in SCOPES:  # a named token of each scope, for half the cases (SCOPED below)
        s.tokens[scope] = call("POST", "/v1/tokens", {"name": scope, "scopes": [scope]})["token"]
    rich = call("POST", "/v1/accounts/acme/keys", {"name": "fuzz"})
    broke = call("POST", "/v1/accounts/broke/keys", {"name": "fuzz"})
    s.api_keys = (rich["key"], broke["key"])
    link = call("POST", "/v1/accounts/acme/portal-sessions", {})["url"]
    opened = requests.get(link, allow_redirects=False, timeout=10)
    assert opened.status_code == 303, opened.text
    cookie = opened.headers["Set-Cookie"].split(";")[0]
    view = requests.get(s.url + "/v1/portal/session", headers={"Cookie": cookie}, timeout=10)
    s.portal = {"Cookie": cookie, "X-CSRF-Token": view.json()["csrf_token"]}
    s.ids = {
        "account": "acme",
        "hold_id": "h1",
        "key_id": rich["key_id"],
        "package_id": "starter",
        "plan": "pro",
        "transaction_id": usage["transaction_id"],
    }
    if not s.in_sql:
        ledger = s.app[LEDGER]
        s.run(lambda: drain(OutboxWriter(ledger.redis, s.app[BILLING].sql.engine, ledger.keys)))
        s.in_sql = True


def aim(case: schemathesis.Case[Any], served: Served) -> None:
    """Every other case (by a hash of its data): valid ids of things the seed made are
    swapped for the seeded ones; invalid values are left alone."""
    if zlib.crc32(repr((case.path_parameters, case.body, case.query)).encode()) % 2:
        return

    def swap(values: dict[str, Any], keep: str = "") -> None:
        for name, value in values.items():
            if name == keep:
                continue
            if name in served.ids and isinstance(value, str) and VALID_ID.match(value):
                values[name] = served.ids[name]

    if case.path_parameters:
        swap(case.path_parameters)
    if isinstance(case.body, dict):
        swap(case.body, keep="hold_id" if case.path == "/v1/holds" else "")  # new holds
        items = case.body.get("items")
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                swap(item)


def serve(
    redis_server: RedisServer, data_dir: Path, ready: threading.Event, box: dict[str, Any]
) -> None:
    async def main() -> None:
        async with FakeStripe() as fake:
            fake.add_price(PRICE, 500)
            settings = Settings(
                redis_url=redis_server.url,
                admin_token=SecretStr(ADMIN),
                service_token=SecretStr(SERVICE),
                data_dir=data_dir,
                writer="off",
                billing_worker="off",
                background=False,
                stripe_api_key=SecretStr(fake.api_key),
                stripe_api_base=fake.url,
                stripe_webhook_secrets=SecretStr("whsec_fuzz"),
            )
            runner = web.AppRunner(create_app(settings, clock=FakeClock()))
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            redis = connect(redis_server.url)
            stop = asyncio.Event()
            box.update(url=f"http://127.0.0.1:{port}", redis=redis, stop=stop, app=runner.app)
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            try:
                await stop.wait()
            finally:
                await redis.aclose()
                await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        ready.set()


@pytest.fixture(scope="module")
def served(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ready, box = threading.Event(), dict[str, Any]()
    thread = threading.Thread(
        target=serve,
        args=(redis_server, tmp_path_factory.mktemp("fuzz"), ready, box),
        name="fuzzed-app",
        daemon=True,
    )
    thread.start()
    assert ready.wait(60) and "loop" in box, "the app did not start"
    try:
        yield Served(box["url"], box["loop"], box["redis"], box["app"])
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=DERANDOMIZE,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_answers_as_documented_and_rejected_requests_change_nothing(
    case: schemathesis.Case[Any], served: Served
) -> None:
    served.start(case.operation.label)
    aim(case, served)
    token = ADMIN
    scopes = SCOPED.get((case.method.upper(), case.path))
    if scopes and zlib.crc32(repr((case.body, case.query)).encode()) % 2:
        token = served.tokens[scopes[0]]  # a named token with just the route's scope
    if case.path.startswith("/auth/"):  # a client's API key: one with credits, or broke
        token = served.api_keys[zlib.crc32(repr(case.headers).encode()) % 2]
    headers = {"Authorization": f"Bearer {token}"}
    if case.path.startswith("/v1/portal/"):  # the customer's session, not a token
        headers = dict(served.portal)
    before = served.state()
    response = case.call(base_url=served.url, headers=headers, timeout=30)
    # A probe's 503 is its documented answer, not a server error: this app runs no writer, so
    # its outbox lags and /readyz says so.
    probe = case.path in ("/readyz", "/healthz")
    case.validate_response(response, checks=CHECKS[1:] if probe else CHECKS)
    if 400 <= response.status_code < 500:
        after = served.state()
        assert after[1] == before[1], (
            f"{case.method} {case.formatted_path} answered {response.status_code} but changed "
            f"Redis: {response.text[:300]}"
        )


def test_a_checkout_key_reused_with_other_parameters_is_a_conflict(served: Served) -> None:
    """Found by the fuzzer: Stripe's idempotency error was a 502; it is the caller's 409."""
    served.start("checkout conflict")
    body = {
        "account": "acme",
        "package_id": "starter",
        "success_url": "https://example.com/ok",
        "cancel_url": "https://example.com/cancel",
        "idempotency_key": "order-1",
    }
    auth = {"Authorization": f"Bearer {ADMIN}"}
    first = requests.post(f"{served.url}/v1/checkout", json=body, headers=auth, timeout=10)
    assert first.status_code == 201
    again = requests.post(f"{served.url}/v1/checkout", json=body, headers=auth, timeout=10)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    other = body | {"success_url": "https://example.com/elsewhere"}
    r = requests.post(f"{served.url}/v1/checkout", json=other, headers=auth, timeout=10)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "idempotency_conflict"
    assert r.json()["error"]["field"] == "idempotency_key"
