"""What a hostile client can put in front of the gate, sent byte for byte over TCP (HTTP
libraries normalise or refuse most of it) to every proxy endpoint: other spellings of a priced
or denied path are priced as the route the upstream serves; paths without one safe reading,
and non-UTF-8 or repeated headers, are a 400 naming the header, before anything reaches
Redis; the trusted cost header takes ASCII digits only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.gate.pricing import PricingError, load_pricing
from sidecar.http.app import create_app
from sidecar.settings import Settings
from tests.conftest import FakeClock, snapshot
from tests.http.test_proxy import PRICING, Client, onboard
from tests.rawhttp import Headers, Reply, send

pytestmark = pytest.mark.sql_bystander  # its subject: bytes before the gate

MODES = ["nginx", "forward", "envoy"]
URI_FIELD = {"nginx": "X-Original-URI", "forward": "X-Forwarded-Uri", "envoy": "path"}
METHOD_HEADER = {"nginx": "X-Original-Method", "forward": "X-Forwarded-Method"}


@pytest.fixture
async def app(
    settings: Settings, tmp_path: Path, redis: Any, clock: FakeClock
) -> AsyncIterator[tuple[Client, str]]:
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(PRICING)
    s = settings.model_copy(update={"pricing_file": pricing})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        yield c, await onboard(c, 1000)


async def ask(
    c: Client, mode: str, method: str, uri: bytes, headers: Headers = ()
) -> tuple[int, Reply]:
    """The decision as the client would see it (nginx's 403 + X-Credits-Deny-Status unfolded)."""
    port = c.server.port
    assert port is not None
    pairs: list[tuple[str, bytes]] = list(
        headers.items() if isinstance(headers, Mapping) else headers
    )
    if mode == "envoy":
        r = await send(port, method.encode(), b"/auth/envoy" + uri, pairs)
    else:
        via = [(METHOD_HEADER[mode], method.encode()), (URI_FIELD[mode], uri)]
        r = await send(port, b"GET", f"/auth/{mode}".encode(), via + pairs)
    if mode == "nginx" and r.status == 403 and "x-credits-deny-status" in r.headers:
        return int(r.headers["x-credits-deny-status"]), r
    return r.status, r


def key_header(key: str) -> list[tuple[str, bytes]]:
    return [("Authorization", f"Bearer {key}".encode())]


# (method, URI as the client sends it, what it is charged: a cost, or "deny")
SPELLINGS: list[tuple[str, bytes, int | str]] = [
    ("POST", b"/v1/images/a", 10),
    ("POST", b"/v1/%69mages/a", 10),
    ("POST", b"/v1/%69%6D%61%67%65%73/a", 10),
    ("POST", b"/v1/./images/a", 10),
    ("POST", b"//v1//images//a", 10),
    ("POST", b"/v1/x/../images/a", 10),
    ("POST", b"/v1/x/%2e%2E/images/a", 10),
    ("POST", b"/v1/images;x=1/a", 10),
    ("POST", b"/v1/images/a?next=/../../internal/x", 10),
    ("POST", b"/v1/%2569mages/a", 1),  # the upstream decodes once: /v1/%69mages/a
    ("POST", b"/V1/IMAGES/a", 1),  # case-sensitive unless the pricing file says otherwise
    ("GET", b"/%69nternal/secret", "deny"),
    ("GET", b"/v1/status/../../internal/x", "deny"),
    ("GET", b"/internal;a=b/x", "deny"),
    ("GET", b"/v1/%73tatus", 0),
]


@pytest.mark.parametrize("mode", MODES)
async def test_every_spelling_of_a_route_is_priced_as_the_route(
    app: tuple[Client, str], mode: str
) -> None:
    c, key = app
    for i, (method, uri, price) in enumerate(SPELLINGS):
        status, r = await ask(
            c, mode, method, uri, [*key_header(key), ("X-Request-Id", b"r%d" % i)]
        )
        if price == "deny":
            assert (status, r.headers["x-credits-reason"]) == (403, "route_denied"), uri
        else:
            assert status == 200, uri
            assert r.headers.get("x-credits-cost", "0") == str(price), uri


# URIs with no single safe reading; the envoy endpoint gets them in its request line.
UNREADABLE = [
    b"/v1/images%2Fa",
    b"/v1/images%2fa",
    b"/v1/images%5Ca",
    b"/v1\\images/a",
    b"/v1/images/a%00",
    b"/..",
    b"/v1/../../internal/x",
    b"/v1/images/..;/internal/x",
    b"/v1/images/%FF",
    b"/v1/images/%C0%AF",
    b"/v1/images/%zz",
]
# Only a header can carry these: aiohttp's parser refuses them in a request line.
UNREADABLE_IN_HEADERS = [b"/v1/images/\xff", b"/v1/im\xc3ages", b"/v1/a\tb", b"v1/images/a", b""]


@pytest.mark.parametrize("mode", MODES)
async def test_unreadable_paths_are_a_400_naming_the_header_and_write_nothing(
    app: tuple[Client, str], redis: Any, mode: str
) -> None:
    c, key = app
    before = await snapshot(redis)
    uris = UNREADABLE + (UNREADABLE_IN_HEADERS if mode != "envoy" else [])
    for uri in uris:
        status, r = await ask(c, mode, "POST", uri, key_header(key))
        assert (status, r.headers["x-credits-reason"]) == (400, "invalid_path"), uri
        assert r.headers["x-credits-field"] == URI_FIELD[mode], uri
        body = r.json()
        assert isinstance(body, dict) and body["field"] == URI_FIELD[mode], uri
        assert URI_FIELD[mode] in body["message"], uri
    assert await snapshot(redis) == before


@pytest.mark.parametrize("mode", MODES)
async def test_bad_bytes_in_the_key_or_request_id_headers_are_a_400_naming_the_header(
    app: tuple[Client, str], redis: Any, mode: str
) -> None:
    c, key = app
    before = await snapshot(redis)
    good = f"Bearer {key}".encode()
    cases: list[tuple[str, list[tuple[str, bytes]]]] = [
        ("Authorization", [("Authorization", good + b"\xff")]),
        ("Authorization", [("Authorization", b"Bearer \xc3(")]),
        ("X-API-Key", [("Authorization", good), ("X-API-Key", b"csk_\xff")]),
        ("X-API-Key", [("X-API-Key", b"csk_a\tb")]),
        ("X-Request-Id", [("Authorization", good), ("X-Request-Id", b"r-\xfe\xff")]),
        ("X-Request-Id", [("Authorization", good), ("X-Request-Id", b"r\tx")]),
        ("Authorization", [("Authorization", good), ("Authorization", b"Bearer csk_other")]),
        ("X-Request-Id", [("Authorization", good), ("X-Request-Id", b"a"), ("X-Request-Id", b"b")]),
    ]
    for field, headers in cases:
        status, r = await ask(c, mode, "POST", b"/v1/images/a", headers)
        assert (status, r.headers["x-credits-reason"]) == (400, "invalid_header"), headers
        assert r.headers["x-credits-field"] == field
        body = r.json()
        assert isinstance(body, dict) and body["field"] == field and field in body["message"]
    assert await snapshot(redis) == before


@pytest.mark.parametrize("mode", ["nginx", "forward"])
async def test_methods_must_be_short_http_tokens(
    app: tuple[Client, str], redis: Any, mode: str
) -> None:
    c, key = app
    before = await snapshot(redis)
    header = METHOD_HEADER[mode]
    port = c.server.port
    assert port is not None
    for method in (b"P\xffST", b"P\xc3\xa9ST", b"GET /x", b"GE\tT", b"A" * 17, b"G(T"):
        via = [(header, method), (URI_FIELD[mode], b"/v1/images/a"), *key_header(key)]
        r = await send(port, b"GET", f"/auth/{mode}".encode(), via)
        status = int(r.headers.get("x-credits-deny-status", r.status))
        assert (status, r.headers["x-credits-reason"]) == (400, "invalid_method"), method
        assert r.headers["x-credits-field"] == header
    repeated = [(header, b"GET"), (header, b"POST"), (URI_FIELD[mode], b"/v1/x")]
    r = await send(port, b"GET", f"/auth/{mode}".encode(), repeated + key_header(key))
    assert r.headers["x-credits-reason"] == "invalid_method"
    assert await snapshot(redis) == before


async def test_a_clients_bad_bytes_never_fail_another_clients_check(
    app: tuple[Client, str],
) -> None:
    """The bad request is refused before Redis, so it cannot spoil an auto-pipelined batch."""
    c, key = app

    async def good(i: int) -> int:
        rid = ("X-Request-Id", b"g%d" % i)
        return (await ask(c, "nginx", "GET", b"/v1/x", [*key_header(key), rid]))[0]

    async def bad(i: int) -> int:
        rid = ("X-Request-Id", b"b%d" % i)
        return (await ask(c, "nginx", "GET", b"/v1/x\xff", [*key_header(key), rid]))[0]

    statuses = await asyncio.gather(*(good(i) if i % 5 else bad(i) for i in range(40)))
    assert [s for i, s in enumerate(statuses) if i % 5] == [200] * 32
    assert [s for i, s in enumerate(statuses) if not i % 5] == [400] * 8


async def test_the_trusted_cost_header_takes_ascii_digits_only(
    settings: Settings, redis: Any, clock: FakeClock
) -> None:
    s = settings.model_copy(update={"trust_cost_header": True})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        key = await onboard(c, 100)
        before = await snapshot(redis)
        for raw in ("٣".encode(), "²".encode(), "\uff15".encode(), b"1_0", b"+5", b"-1", b"5.0"):
            status, r = await ask(
                c, "forward", "GET", b"/v1/x", [*key_header(key), ("X-Credits-Cost", raw)]
            )
            assert (status, r.headers["x-credits-reason"]) == (400, "invalid_cost_header"), raw
            assert r.headers["x-credits-field"] == "X-Credits-Cost"
        for raw in (b"9007199254740992", b"1" * 40):
            status, r = await ask(
                c, "forward", "GET", b"/v1/x", [*key_header(key), ("X-Credits-Cost", raw)]
            )
            assert status == 400, raw
        assert await snapshot(redis) == before
        status, r = await ask(
            c, "forward", "GET", b"/v1/x", [*key_header(key), ("X-Credits-Cost", b"7")]
        )
        assert (status, r.headers["x-credits-cost"], r.headers["x-credits-balance"]) == (
            200,
            "7",
            "93",
        )


@pytest.mark.parametrize("mode", MODES)
async def test_a_request_id_that_cannot_be_used_is_a_400_not_a_fresh_id(
    app: tuple[Client, str], redis: Any, mode: str
) -> None:
    """A fresh id in its place would charge each of the client's retries again."""
    c, key = app
    before = await snapshot(redis)
    for bad in (b"x" * 129, b"a b", b"r/1", b"{uuid}", b"r\xc3\xa9"):
        headers = [*key_header(key), ("X-Request-Id", bad)]
        status, r = await ask(c, mode, "POST", b"/v1/images/a", headers)
        assert (status, r.headers["x-credits-reason"]) == (400, "invalid_header"), bad
        assert r.headers["x-credits-field"] == "X-Request-Id"
    assert await snapshot(redis) == before
    for _ in range(2):  # a usable one: the retry is charged once
        headers = [*key_header(key), ("X-Request-Id", b"x" * 128)]
        status, r = await ask(c, mode, "POST", b"/v1/images/a", headers)
        assert (status, r.headers["x-credits-balance"]) == (200, "990")


@pytest.mark.parametrize("mode", MODES)
async def test_every_header_the_proxy_modes_read_is_a_400_naming_it_when_repeated(
    settings: Settings, tmp_path: Path, redis: Any, clock: FakeClock, mode: str
) -> None:
    """Never "first wins" (or last): a trusted cost sent twice, even twice the same, or a
    second method or URI header, is a 400 naming the header, and nothing is charged."""
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(PRICING)
    s = settings.model_copy(update={"pricing_file": pricing, "trust_cost_header": True})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        key = await onboard(c, 100)
        before = await snapshot(redis)
        cases: list[tuple[str, str, list[tuple[str, bytes]]]] = [
            ("X-Credits-Cost", "invalid_cost_header", [("X-Credits-Cost", b"0")] * 2),
            (
                "X-Credits-Cost",
                "invalid_cost_header",
                [("X-Credits-Cost", b"0"), ("x-credits-cost", b"7")],
            ),
        ]
        if mode != "envoy":
            m, u = METHOD_HEADER[mode], URI_FIELD[mode]
            cases += [
                (m, "invalid_method", [(m, b"GET")]),
                (u, "invalid_path", [(u, b"/v1/status")]),
            ]
        for i, (field, reason, extra) in enumerate(cases):
            headers = [*key_header(key), ("X-Request-Id", b"dup%d" % i), *extra]
            status, r = await ask(c, mode, "POST", b"/v1/images/a", headers)
            assert (status, r.headers["x-credits-reason"]) == (400, reason), extra
            assert r.headers["x-credits-field"] == field
            body = r.json()
            assert isinstance(body, dict) and body["field"] == field and field in body["message"]
        assert await snapshot(redis) == before


async def test_shadow_mode_lets_an_unreadable_path_through_and_says_it_would_be_a_400(
    settings: Settings, redis: Any, clock: FakeClock
) -> None:
    s = settings.model_copy(update={"shadow": True})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        key = await onboard(c, 10)
        before = await snapshot(redis)
        status, r = await ask(c, "forward", "GET", b"/v1/a%2Fb", key_header(key))
        assert status == 200 and r.headers["x-credits-shadow-status"] == "400"
        assert r.headers["x-credits-reason"] == "invalid_path"
        assert await snapshot(redis) == before


def test_case_insensitive_pricing_folds_patterns_and_paths(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    rules = '[[route]]\nname = "i"\npath = "/v1/Images/*"\ncost = 10\n'
    p.write_text(rules)
    assert load_pricing(p).match("POST", "/V1/IMAGES/a").cost == 1
    assert load_pricing(p).match("POST", "/v1/Images/a").cost == 10
    p.write_text("case_insensitive = true\n" + rules)
    assert load_pricing(p).match("POST", "/V1/IMAGES/a").cost == 10
    assert load_pricing(p).match("POST", "/v1/images/a").cost == 10


@pytest.mark.parametrize(
    "pattern",
    [
        "/%69nternal/*",
        "/v1/a%2Fb",
        "/v1/x;y/*",
        "/v1//x",
        "/v1/./x",
        "/v1/../x",
        "/v1/..",
        "/a\\\\b",
    ],
)
def test_patterns_no_canonical_path_can_match_are_refused_at_load(
    tmp_path: Path, pattern: str
) -> None:
    p = tmp_path / "p.toml"
    p.write_text(
        f'[[route]]\nname = "ok"\npath = "/v1/x"\ncost = 1\n'
        f'[[route]]\nname = "x"\npath = "{pattern}"\ncost = "deny"\n'
    )
    with pytest.raises(PricingError, match=r"route\.1\.path: .*never matches"):
        load_pricing(p)


def test_patterns_may_use_the_escapes_canonical_paths_keep(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('[[route]]\nname = "q"\npath = "/v1/what%3f/*"\ncost = 5\n')
    assert load_pricing(p).match("GET", "/v1/what%3F/x").cost == 5
