"""Hostile callers and chaos against the Python middleware, on one real sidecar for the module:
a request id reused for other requests, odd ids, bad accounts and costs, header injection, two
checks in one request, and a sidecar answering garbage or 5xx (a refusal never becomes an allow,
nothing is charged twice or answered as refused after a charge)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from fastapi import Depends, FastAPI
from flask import Flask

from credit_sidecar import AsyncClient, Client
from credit_sidecar.middleware.asgi import CreditsMiddleware, RequireCredits
from credit_sidecar.middleware.flask import FlaskCredits, require_credits
from credit_sidecar.streaming import MeteredStreamingResponse
from sidecar.redis.embedded import RedisServer
from tests.clients.conftest import Sidecar, funded, redis_only, serving
from tests.conftest import ADMIN, SERVICE, premigrated
from tests.ports import free_port


@pytest.fixture(scope="module")
def shared(
    redis_server: RedisServer, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sidecar]:
    data_dir = premigrated(sqlite_template, tmp_path_factory.mktemp("attacks"))
    # trust_cost_header: the api_key= middleware prices its routes
    with serving(redis_only(redis_server, data_dir, trust_cost_header=True), redis_server) as s:
        yield s


@pytest.fixture(scope="module")
def admin(shared: Sidecar) -> Iterator[Client]:
    with Client(shared.url, ADMIN) as c:
        yield c


def fresh(admin: Client, credits: int) -> str:
    account = f"atk-{uuid.uuid4().hex[:12]}"
    funded(admin, account, credits)
    return account


def app_for(url: str, who: Any, **client: Any) -> FastAPI:
    """Middleware pricing /a and /b at 1, /big at 10; /both also has a RequireCredits(5)."""
    app = FastAPI()
    app.add_middleware(
        CreditsMiddleware,
        client=AsyncClient(url, SERVICE, **client),
        account=who,
        costs={"/a": 1, "/b": 1, "/big": 10, "/both": 1},
    )

    @app.get("/a")
    @app.get("/b")
    @app.get("/big")
    async def priced() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/both", dependencies=[Depends(RequireCredits(5))])
    async def both() -> dict[str, str]:
        return {"ok": "both"}

    return app


async def get(app: FastAPI, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        sent = {k.replace("_", "-").encode(): v.encode("latin-1") for k, v in headers.items()}
        return await http.get(path, headers=sent)


async def test_one_request_id_on_other_routes_and_accounts(admin: Client, shared: Sidecar) -> None:
    one, two = fresh(admin, 100), fresh(admin, 100)
    who = {"k1": one, "k2": two}
    app = app_for(shared.url, lambda c: who.get(c.headers.get("x-key", "")))
    rid = {"X-Request-Id": "same-id-1"}
    assert (await get(app, "/a", x_key="k1", **rid)).status_code == 200
    again = await get(app, "/a", x_key="k1", **rid)  # the retry: charged once
    assert again.headers["X-Credits-Replayed"] == "true"
    for path in ("/b", "/big"):  # the id on other routes: a new charge, never a free pass
        r = await get(app, path, x_key="k1", **rid)
        assert (r.status_code, r.headers["X-Credits-Replayed"]) == (200, "false")
    r = await get(app, "/a", x_key="k2", **rid)  # another account: its own charge
    assert (r.status_code, r.headers["X-Credits-Replayed"]) == (200, "false")
    assert admin.balance(one).balance == 100 - 1 - 1 - 10
    assert admin.balance(two).balance == 99


async def test_two_checks_in_one_request_with_a_request_id(admin: Client, shared: Sidecar) -> None:
    """The table's check and the route's RequireCredits both charge, with or without an id, and
    a retry with the id replays both: never a 409 after a charge."""
    acct = fresh(admin, 100)
    app = app_for(shared.url, lambda c: acct)
    assert (await get(app, "/both")).status_code == 200
    assert admin.balance(acct).balance == 94
    first = await get(app, "/both", x_request_id="both-1")
    assert first.status_code == 200, first.text
    assert admin.balance(acct).balance == 88
    retry = await get(app, "/both", x_request_id="both-1")
    assert (retry.status_code, retry.headers["X-Credits-Replayed"]) == (200, "true")
    assert admin.balance(acct).balance == 88


@pytest.mark.parametrize("rid", ["", "x" * 129, "a b", "é", "a/b", "a\tb"])
async def test_odd_request_ids_are_new_requests(admin: Client, shared: Sidecar, rid: str) -> None:
    acct = fresh(admin, 10)
    app = app_for(shared.url, lambda c: acct)
    headers = {"X-Request-Id": rid.encode("utf-8").decode("latin-1")}
    for _ in range(2):
        r = await get(app, "/a", **headers)
        assert (r.status_code, r.headers["X-Credits-Replayed"]) == (200, "false")
    assert admin.balance(acct).balance == 8


@pytest.mark.parametrize(
    "account", ["bad id", "x" * 300, "a\r\nSet-Cookie: x=1", "no-such-account-zz", "../admin"]
)
async def test_bad_accounts_never_allowed_nor_500(shared: Sidecar, account: str) -> None:
    app = app_for(shared.url, lambda c: account)
    r = await get(app, "/a")
    assert r.status_code in (401, 402, 404, 422), (r.status_code, r.text)
    assert "set-cookie" not in r.headers
    assert r.json()["error"]["code"] if "error" in r.json() else r.json()["reason"]


@pytest.mark.parametrize("cost", [-1, 1.5, 2**60, True])
async def test_bad_costs_never_charge_nor_credit(admin: Client, shared: Sidecar, cost: Any) -> None:
    acct = fresh(admin, 10)
    app = FastAPI()
    app.add_middleware(
        CreditsMiddleware,
        client=AsyncClient(shared.url, SERVICE),
        account=lambda c: acct,
        costs={"/x": cost},
    )

    @app.get("/x")
    async def x() -> dict[str, str]:
        return {"ok": "ran"}

    r = await get(app, "/x")
    balance = admin.balance(acct).balance
    if r.status_code == 200:
        assert cost is True and balance == 9
    else:
        assert r.status_code == 422 and balance == 10, (r.status_code, balance)


class Chaos:
    """A relay in front of the sidecar that spoils the answers of the paths in ``rules``
    (a path's ending -> what to do): ``garbage`` a 200 that is not JSON, ``empty`` a 200 with
    no body, ``500`` an error page, ``cut`` a 200 cut mid-body and closed, ``hang`` no answer;
    ``after:`` forwards the request to the sidecar first (it took effect, the answer is lost);
    ``once:`` spoils the first such request only."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.rules: dict[str, str] = {}
        self.seen: list[str] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(request.path)
        key = next((k for k in self.rules if request.path.endswith(k)), None)
        rule = self.rules.get(key) if key else None
        if key and rule and rule.startswith("once:"):  # the first such request only
            rule = rule.removeprefix("once:")
            del self.rules[key]
        forward = rule is None or rule.startswith("after:")
        if forward:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            async with (
                aiohttp.ClientSession() as http,
                http.request(
                    request.method, self.sidecar.url + request.path_qs, data=body, headers=headers
                ) as r,
            ):
                answer = web.Response(
                    status=r.status, body=await r.read(), content_type=r.content_type
                )
            if rule is None:
                return answer
        action = (rule or "").removeprefix("after:")
        if action == "hang":
            await asyncio.sleep(2)  # past any client's deadline in these tests
        if action == "500":
            return web.Response(status=500, text="<html>Internal Server Error</html>")
        if action == "empty":
            return web.Response(status=200)
        if action == "cut":
            cut = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            cut.content_length = 500
            await cut.prepare(request)
            await cut.write(b'{"allowed": tr')
            assert request.transport is not None
            request.transport.close()
            return cut
        if action == "evil402":  # a refusal whose fields would split the response's headers
            evil = "insufficient_credits\r\nSet-Cookie: stolen=1"
            return web.json_response(
                {"allowed": False, "reason": evil, "balance": evil, "required": 1}, status=402
            )
        return web.Response(status=200, text="<html>welcome to nginx</html>")

    def start(self) -> None:
        async def up() -> None:
            self.runner = web.AppRunner(web.Application(handler_args={}, middlewares=[]))
            self.runner.app.router.add_route("*", "/{tail:.*}", self.handle)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self.sidecar._run(up())

    def stop(self) -> None:
        if self.runner is not None:
            self.sidecar._run(self.runner.cleanup())


@pytest.fixture(scope="module")
def chaos(shared: Sidecar) -> Iterator[Chaos]:
    c = Chaos(shared)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def rules(chaos: Chaos) -> Iterator[dict[str, str]]:
    chaos.rules.clear()
    chaos.seen.clear()
    yield chaos.rules
    chaos.rules.clear()


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
@pytest.mark.parametrize("spoil", ["garbage", "empty", "500", "after:garbage", "after:500"])
async def test_a_spoiled_check_answer(
    admin: Client, chaos: Chaos, rules: dict[str, str], spoil: str, policy: str
) -> None:
    """A check answered with no usable answer is the sidecar unavailable: 503 under fail_closed,
    through (marked fail_open) under fail_open; never the app's 500, never an allow that says
    it was charged."""
    acct = fresh(admin, 10)
    rules["/v1/check"] = spoil
    app = app_for(chaos.url, lambda c: acct, failure_policy=policy, max_attempts=1)
    r = await get(app, "/a")
    if policy == "fail_closed":
        assert (r.status_code, r.json()["error"]["code"]) == (503, "credits_unavailable")
    else:
        assert (r.status_code, r.headers["X-Credits-Reason"]) == (200, "fail_open")


async def test_a_check_cut_mid_answer_is_retried_and_charged_once(
    admin: Client, chaos: Chaos, rules: dict[str, str]
) -> None:
    acct = fresh(admin, 10)
    rules["/v1/check"] = "once:after:cut"
    r = await get(app_for(chaos.url, lambda c: acct), "/a")
    assert (r.status_code, r.headers.get("X-Credits-Replayed")) == (200, "true"), r.text
    assert admin.balance(acct).balance == 9


async def test_one_request_id_sent_100_times_at_once_is_charged_once(
    admin: Client, shared: Sidecar
) -> None:
    acct = fresh(admin, 100)
    app = app_for(shared.url, lambda c: acct)
    answers = await asyncio.gather(*(get(app, "/big", x_request_id="burst-1") for _ in range(100)))
    replayed = sorted(r.headers.get("X-Credits-Replayed", str(r.status_code)) for r in answers)
    assert {r.status_code for r in answers} <= {200, 409}, {r.status_code for r in answers}
    assert replayed.count("false") == 1, replayed
    assert admin.balance(acct).balance == 90


async def test_a_settle_whose_answer_is_lost_is_retried_and_charged_once(
    admin: Client, chaos: Chaos, rules: dict[str, str]
) -> None:
    acct = fresh(admin, 100)
    rules["/settle"] = "once:after:cut"
    async with AsyncClient(chaos.url, SERVICE) as client, client.holding(acct, 50) as h:
        h.settle(7)
    assert h.result is not None and h.result.charged == 7
    assert admin.balance(acct).balance == 93
    assert chaos.seen.count(f"/v1/holds/{h.hold_id}/settle") == 2


@pytest.mark.parametrize("fail_at", [0, 2])
async def test_a_stream_whose_body_fails_is_released_once(
    admin: Client, shared: Sidecar, fail_at: int
) -> None:
    acct = fresh(admin, 100)
    client = AsyncClient(shared.url, SERVICE)
    app = FastAPI()

    @app.get("/stream")
    async def stream() -> MeteredStreamingResponse:
        async def tokens() -> AsyncIterator[str]:
            for i in range(5):
                if i == fail_at:
                    raise RuntimeError("the model failed")
                yield "tok "

        hold = await client.hold(acct, 50)
        return MeteredStreamingResponse(client, hold, tokens(), count=lambda _: 1)

    with contextlib.suppress(Exception):  # the app's error, however the server shows it
        await get(app, "/stream")
    assert admin.balance(acct).balance == 100
    held = admin.balance(acct)
    assert held.held == 0, held


def test_flask_table_and_view_checks_with_a_request_id(admin: Client, shared: Sidecar) -> None:
    acct = fresh(admin, 100)
    app = Flask(__name__)
    with Client(shared.url, SERVICE) as client:
        FlaskCredits(app, client=client, account=lambda r: acct, costs={"/both": 1})

        @app.get("/both")
        @require_credits(5)
        def both() -> dict[str, str]:
            return {"ok": "both"}

        http = app.test_client()
        for _ in range(2):  # the second: a retry, both checks replayed
            r = http.get("/both", headers={"X-Request-Id": "flask-both"})
            assert r.status_code == 200, r.get_data(as_text=True)
        assert admin.balance(acct).balance == 94


async def test_a_sidecar_that_never_answers_is_given_up_by_the_deadline(
    chaos: Chaos, rules: dict[str, str]
) -> None:
    rules["/v1/check"] = "hang"
    app = app_for(chaos.url, lambda c: "anyone", timeout=0.2, deadline=0.5, max_attempts=10)
    started = time.monotonic()
    r = await get(app, "/a")
    assert r.status_code == 503
    assert time.monotonic() - started < 1.5


async def test_header_injection_through_the_sidecar_answer(
    chaos: Chaos, rules: dict[str, str]
) -> None:
    """A refusal is still a refusal, and its fields never become headers of their own."""
    rules["/v1/check"] = "evil402"
    r = await get(app_for(chaos.url, lambda c: "anyone"), "/a")
    assert r.status_code == 402
    assert "set-cookie" not in r.headers
    assert all("\r" not in v and "\n" not in v for v in r.headers.values()), r.headers


async def test_two_checks_by_api_key_in_one_request_with_a_request_id(
    admin: Client, shared: Sidecar
) -> None:
    acct = fresh(admin, 100)
    key = admin.create_key(acct, name="k").key
    assert key is not None
    app = FastAPI()
    app.add_middleware(
        CreditsMiddleware,
        client=AsyncClient(shared.url, SERVICE),
        api_key=lambda c: c.headers.get("x-api-key"),
        costs={"/both": 1},
    )

    @app.get("/both", dependencies=[Depends(RequireCredits(5))])
    async def both() -> dict[str, str]:
        return {"ok": "both"}

    for _ in range(2):  # the second: a retry, both checks replayed
        r = await get(app, "/both", x_api_key=key, x_request_id="keyed-both")
        assert r.status_code == 200, r.text
    assert admin.balance(acct).balance == 94


UNSENDABLE = [  # (path, key suffix): what no header may carry, and what httpx cannot encode
    ("/a%00", ""),
    ("/a%0D%0AX-Credits-Cost:%200", ""),
    ("/a%7F", ""),
    ("/a%C3%A9", ""),
    ("/a", "\x01"),
    ("/a", "\x7f"),
    ("/a", "\xe9"),
]


def keyed(admin: Client) -> tuple[str, str]:
    acct = fresh(admin, 10)
    key = admin.create_key(acct, name="k").key
    assert key is not None
    return acct, key


def charged_or_refused(admin: Client, acct: str, status: int, text: str) -> None:
    """Never the app's 500, never let through uncharged (fail_open must not cover a bad input)."""
    balance = admin.balance(acct).balance
    assert status < 500, (status, balance, text)
    if status < 400:
        assert balance == 9, (status, balance, text)


@pytest.mark.parametrize("path,suffix", UNSENDABLE)
async def test_a_request_whose_uri_or_key_cannot_be_a_header_is_charged_or_refused(
    admin: Client, shared: Sidecar, path: str, suffix: str
) -> None:
    acct, key = keyed(admin)
    app = FastAPI()
    app.add_middleware(
        CreditsMiddleware,
        client=AsyncClient(shared.url, SERVICE, failure_policy="fail_open"),
        api_key=lambda c: c.headers.get("x-api-key"),
        default_cost=1,
    )

    @app.get("/{p:path}")
    async def anything(p: str) -> dict[str, str]:
        return {"ok": "ran"}

    r = await get(app, path, x_api_key=key + suffix)
    charged_or_refused(admin, acct, r.status_code, r.text)


@pytest.mark.parametrize("path,suffix", UNSENDABLE)
def test_flask_a_request_whose_uri_or_key_cannot_be_a_header_is_charged_or_refused(
    admin: Client, shared: Sidecar, path: str, suffix: str
) -> None:
    acct, key = keyed(admin)
    app = Flask(__name__)
    with Client(shared.url, SERVICE, failure_policy="fail_open") as client:
        FlaskCredits(
            app, client=client, api_key=lambda r: r.headers.get("x-api-key"), default_cost=1
        )

        @app.get("/<path:p>")
        def anything(p: str) -> dict[str, str]:
            return {"ok": "ran"}

        r = app.test_client().get(path, headers={"X-Api-Key": key + suffix})
        charged_or_refused(admin, acct, r.status_code, r.get_data(as_text=True))
