"""The shipped Envoy and Traefik configs, replayed: Envoy and Traefik cannot be installed here, so
these tests read `examples/envoy/envoy.yaml` and `examples/traefik/dynamic.yml` and act as that
proxy would with that config: the same auth request (method, path, the headers the config lets
through) and the same use of the answer (which headers reach your API, what reaches the client).
A config edit that breaks the integration breaks these tests."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.http.app import create_app
from sidecar.settings import Settings
from tests.conftest import FakeClock
from tests.http.test_proxy import PRICING, Client, onboard

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Outcome:
    """What the proxy does with the sidecar's answer."""

    allowed: bool
    upstream_headers: dict[str, str]  # added to the request your API receives
    status: int = 200  # on a denial: what the client gets
    client_headers: dict[str, str] | None = None
    body: Any = None
    api_headers: dict[str, str] | None = None  # on allow: every header your API receives


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def string_matches(patterns: list[dict[str, str]], name: str) -> bool:
    """Envoy's ListStringMatcher (exact/prefix) over a lower-case header name."""
    name = name.lower()
    return any(
        name == p["exact"] if "exact" in p else name.startswith(p["prefix"]) for p in patterns
    )


class Envoy:
    """ext_authz over HTTP as configured in examples/envoy/envoy.yaml."""

    ALWAYS = ("host", "content-length", "authorization")  # sent whatever allowed_headers says

    def __init__(self, config: dict[str, Any]) -> None:
        filters = [n for n in walk(config) if n.get("name") == "envoy.filters.http.ext_authz"]
        assert len(filters) == 1
        self.authz = filters[0]["typed_config"]
        # Header mutations that run before ext_authz, in the HTTP filter chain's order.
        chain = next(n["http_filters"] for n in walk(config) if "http_filters" in n)
        names = [f["name"] for f in chain]
        before = chain[: names.index("envoy.filters.http.ext_authz")]
        self.removed = {
            m["remove"].lower()
            for f in before
            if f["name"] == "envoy.filters.http.header_mutation"
            for m in f["typed_config"]["mutations"].get("request_mutations", [])
            if "remove" in m
        }
        self.http = self.authz["http_service"]
        clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
        assert self.http["server_uri"]["cluster"] in clusters

    async def check(self, c: Client, method: str, path: str, headers: Mapping[str, str]) -> Outcome:
        allowed = self.http["authorization_request"]["allowed_headers"]["patterns"]
        headers = {k: v for k, v in headers.items() if k.lower() not in self.removed}
        sent = {
            k: v
            for k, v in headers.items()
            if k.lower() in self.ALWAYS or string_matches(allowed, k)
        }
        sent["Content-Length"] = "0"  # the body is not sent
        r = await c.request(method, self.http["path_prefix"] + path, headers=sent)
        answer = self.http["authorization_response"]
        if r.status == 200:
            up = answer["allowed_upstream_headers"]["patterns"]
            added = pick(r.headers, lambda k: string_matches(up, k))
            return Outcome(True, added, api_headers=overlay(headers, added))
        down = answer["allowed_client_headers"]["patterns"]
        return Outcome(
            False,
            {},
            r.status,
            pick(r.headers, lambda k: string_matches(down, k)),
            orjson.loads(await r.read()),
        )


class Traefik:
    """ForwardAuth as configured in examples/traefik/dynamic.yml."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.auth = config["http"]["middlewares"]["credits"]["forwardAuth"]
        assert "credits" in config["http"]["routers"]["api"]["middlewares"]

    async def check(self, c: Client, method: str, path: str, headers: Mapping[str, str]) -> Outcome:
        wanted = {h.lower() for h in self.auth["authRequestHeaders"]}
        sent = {k: v for k, v in headers.items() if k.lower() in wanted}
        sent |= {
            "X-Forwarded-Method": method,
            "X-Forwarded-Uri": path,
            "X-Forwarded-Host": "api.example.com",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-For": "203.0.113.9",
        }
        address = self.auth["address"]
        assert address.startswith("http://127.0.0.1:8080/")
        r = await c.get(address.removeprefix("http://127.0.0.1:8080"), headers=sent)
        if 200 <= r.status < 300:
            # Each listed header is deleted from the request, then copied if the answer has
            # it; with the regex, every matching request header is deleted, then the
            # answer's matching ones copied (Traefik's forward_auth.go).
            copy = {h.lower() for h in self.auth["authResponseHeaders"]}
            regex = self.auth.get("authResponseHeadersRegex")
            pattern = re.compile(regex, re.IGNORECASE) if regex else None

            def copied(k: str) -> bool:
                return k.lower() in copy or (pattern is not None and bool(pattern.search(k)))

            added = pick(r.headers, copied)
            api = {k: v for k, v in headers.items() if not copied(k)}
            return Outcome(True, added, api_headers=overlay(api, added))
        # Any other answer goes back as it is: every header, the body.
        return Outcome(False, {}, r.status, dict(r.headers), orjson.loads(await r.read()))


def pick(headers: CIMultiDictProxy[str] | CIMultiDict[str], keep: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if keep(k)}


def overlay(request: Mapping[str, str], added: Mapping[str, str]) -> dict[str, str]:
    """The request's headers with ``added`` replacing those of the same (any-case) name."""
    names = {k.lower() for k in added}
    return {**{k: v for k, v in request.items() if k.lower() not in names}, **added}


def load(path: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / path).read_text())
    return data


@pytest.fixture(params=["envoy", "traefik"])
def proxy_model(request: pytest.FixtureRequest) -> Envoy | Traefik:
    if request.param == "envoy":
        return Envoy(load("envoy/envoy.yaml"))
    return Traefik(load("traefik/dynamic.yml"))


@pytest.fixture
async def client(
    settings: Settings, tmp_path: Path, redis: Any, clock: FakeClock
) -> AsyncIterator[tuple[Client, str]]:
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(PRICING)
    s = settings.model_copy(update={"pricing_file": pricing})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        yield c, await onboard(c, 12)


async def test_allowed_request_reaches_the_api_with_the_credit_headers(
    proxy_model: Envoy | Traefik, client: tuple[Client, str]
) -> None:
    c, key = client
    h = {"Authorization": f"Bearer {key}", "X-Request-Id": "r1", "Cookie": "not-forwarded"}
    out = await proxy_model.check(c, "POST", "/v1/images/gen?size=2", h)
    assert out.allowed
    up = {k.lower(): v for k, v in out.upstream_headers.items()}
    assert up["x-credits-account"] == "acme" and up["x-credits-balance"] == "2"
    assert up["x-credits-cost"] == "10" and up["x-credits-transaction"]


async def test_a_retry_with_the_same_request_id_is_charged_once(
    proxy_model: Envoy | Traefik, client: tuple[Client, str]
) -> None:
    c, key = client
    h = {"X-API-Key": key, "X-Request-Id": "same"}
    first = await proxy_model.check(c, "GET", "/v1/things", h)
    again = await proxy_model.check(c, "GET", "/v1/things", h)
    assert first.allowed and again.allowed
    # The same charge; the retry is marked as one, for the API not to redo the work.
    replayed = {k: v for k, v in again.upstream_headers.items() if k != "X-Credits-Replayed"}
    assert replayed == {
        k: v for k, v in first.upstream_headers.items() if k != "X-Credits-Replayed"
    }
    assert first.upstream_headers["X-Credits-Replayed"] == "false"
    assert again.upstream_headers["X-Credits-Replayed"] == "true"


async def test_denials_reach_the_client_with_status_json_and_headers(
    proxy_model: Envoy | Traefik, client: tuple[Client, str]
) -> None:
    c, key = client
    h = {"Authorization": f"Bearer {key}"}
    await proxy_model.check(c, "POST", "/v1/images/a", {**h, "X-Request-Id": "a"})
    poor = await proxy_model.check(c, "POST", "/v1/images/b", {**h, "X-Request-Id": "b"})
    assert (poor.allowed, poor.status) == (False, 402)
    assert poor.body["reason"] == "insufficient_credits" and poor.body["balance"] == 2
    assert poor.client_headers is not None
    assert poor.client_headers["Content-Type"].startswith("application/json")

    await proxy_model.check(c, "GET", "/v1/search?q=1", {**h, "X-Request-Id": "s1"})
    limited = await proxy_model.check(c, "GET", "/v1/search?q=2", {**h, "X-Request-Id": "s2"})
    assert limited.status == 429 and limited.client_headers is not None
    assert int(limited.client_headers["Retry-After"]) >= 1

    bad = await proxy_model.check(c, "GET", "/v1/x", {"Authorization": "Bearer csk_nope"})
    assert bad.status == 401 and bad.client_headers is not None
    assert "WWW-Authenticate" in bad.client_headers

    denied = await proxy_model.check(c, "DELETE", "/internal/users", {**h, "X-Request-Id": "d"})
    assert denied.status == 403 and denied.body["reason"] == "route_denied"


# The X-Credits-* names the sidecar answers with (sidecar/http/proxy.py).
CREDIT_HEADERS = [
    "X-Credits-Account",
    "X-Credits-Balance",
    "X-Credits-Cost",
    "X-Credits-Transaction",
    "X-Credits-Replayed",
    "X-Credits-Reason",
    "X-Credits-Deny-Status",
    "X-Credits-Field",
    "X-Credits-Shadow-Status",
    "X-Credits-Spend-Limit",
    "X-Credits-Spent",
    "X-Credits-Window-Ends",
]


@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_clients_own_credit_headers_reach_neither_the_sidecar_nor_the_api(
    proxy_model: Envoy | Traefik,
    settings: Settings,
    tmp_path: Path,
    redis: Any,
    clock: FakeClock,
    fail_open: bool,
) -> None:
    """A client's X-Credits-Cost would be honoured under SIDECAR_TRUST_COST_HEADER, and your
    API believes X-Credits-Account: whatever the sidecar's answer holds (under fail_open
    none of them), the API sees only the sidecar's."""
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(PRICING)
    policy = "fail_open" if fail_open else "fail_closed"
    update = {"pricing_file": pricing, "trust_cost_header": True, "failure_policy": policy}
    lies = {h: "0" if h == "X-Credits-Cost" else "victim" for h in CREDIT_HEADERS}
    async with TestClient(
        TestServer(create_app(settings.model_copy(update=update), clock=clock))
    ) as c:
        key = await onboard(c, 12)
        h = {"Authorization": f"Bearer {key}", **lies}
        if fail_open:  # the key resolved (and cached), then Redis refuses every write
            assert (await proxy_model.check(c, "GET", "/v1/x", {**h, "X-Request-Id": "w"})).allowed
            await redis.config_set("min-replicas-to-write", 1)
        try:
            out = await proxy_model.check(c, "POST", "/v1/images/gen", {**h, "X-Request-Id": "l"})
        finally:
            await redis.config_set("min-replicas-to-write", 0)
    assert out.allowed and out.api_headers is not None
    lied = {k.lower(): v for k, v in lies.items()}
    api = {k.lower(): v for k, v in out.api_headers.items()}
    assert [k for k, v in api.items() if lied.get(k) == v] == []
    if fail_open:
        assert api["x-credits-reason"] == "fail_open"
    else:
        assert api["x-credits-cost"] == "10" and api["x-credits-account"] == "acme"


def test_envoy_fails_closed_and_keeps_client_request_ids() -> None:
    """Unreachable sidecar → 503, not a silent allow; a client's X-Request-Id survives the edge."""
    config = load("envoy/envoy.yaml")
    envoy = Envoy(config)
    assert envoy.authz["failure_mode_allow"] is False
    assert envoy.authz["status_on_error"]["code"] == 503
    hcm = next(n for n in walk(config) if "preserve_external_request_id" in n)
    assert hcm["preserve_external_request_id"] is True


def test_envoy_normalises_the_path_it_prices_and_forwards() -> None:
    """The path Envoy forwards is the one it sends the sidecar; an encoded slash is refused."""
    hcm = next(n for n in walk(load("envoy/envoy.yaml")) if "preserve_external_request_id" in n)
    assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"


def test_traefik_does_not_trust_client_forwarded_headers() -> None:
    """The route's price comes from X-Forwarded-Method/-Uri, so clients must not set them."""
    auth = Traefik(load("traefik/dynamic.yml")).auth
    assert auth["trustForwardHeader"] is False
    static = load("traefik/traefik.yml")
    assert static["providers"]["file"]["filename"] == "dynamic.yml"


def seconds(value: str) -> float:
    """An nginx/Envoy/Caddy duration: 500ms, 6s, 1m."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", value.strip())
    assert m, value
    return float(m[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m[2]]


def test_every_proxy_waits_for_the_sidecar_longer_than_its_redis_deadline() -> None:
    """When Redis is slow the sidecar answers (503, or 200 under fail_open) once its Redis
    deadline has passed: every shipped proxy config must wait longer than that for the auth
    answer, or the failure policy never reaches the client (Envoy at 0.5 s answered its own
    status_on_error; fail_open never let anything through)."""
    deadline = Settings.model_fields["redis_deadline_s"].default
    envoy = Envoy(load("envoy/envoy.yaml"))
    nginx = (EXAMPLES / "nginx/credit-sidecar.conf").read_text()
    auth_location = nginx[nginx.index("location = /_credits") :]
    auth_location = auth_location[: auth_location.index("}")]
    caddy = (EXAMPLES / "caddy/Caddyfile").read_text()
    waits = {
        "envoy": seconds(envoy.authz["http_service"]["server_uri"]["timeout"]),
        "nginx read": seconds(re.search(r"proxy_read_timeout\s+(\S+);", auth_location)[1]),  # type: ignore[index]
        "nginx send": seconds(re.search(r"proxy_send_timeout\s+(\S+);", auth_location)[1]),  # type: ignore[index]
        "caddy": seconds(re.search(r"response_header_timeout\s+(\S+)", caddy)[1]),  # type: ignore[index]
        "traefik": 30.0,  # fixed, not configurable (ForwardAuth's HTTP client)
    }
    assert {k: v for k, v in waits.items() if v <= deadline} == {}
    # and not much longer: the policy's answer is what the client should get
    assert all(v <= deadline + 2 for k, v in waits.items() if k != "traefik"), waits
    compose = (EXAMPLES / "compose/nginx.conf").read_text()
    assert auth_location in compose
