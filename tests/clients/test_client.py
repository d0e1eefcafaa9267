"""The Python client against a real sidecar: checks allowed and refused (402, 429), typed errors,
idempotent retries charged once after a dropped connection, the failure policies with the
sidecar stopped, holds and the holding block, the admin calls, and version checks."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from credit_sidecar import (
    AsyncClient,
    Client,
    Conflict,
    IncompatibleSidecar,
    InsufficientCredits,
    RateLimited,
    SidecarUnavailable,
    SpendLimitReached,
    Unauthorized,
)
from tests.clients.conftest import Sidecar, funded
from tests.conftest import SERVICE


def test_allowed_check_charges_and_answers_typed(
    admin_client: Client, service_client: Client
) -> None:
    funded(admin_client, "acme", 100)
    r = service_client.check("acme", 10, description="search")
    assert (r.allowed, r.account, r.balance, r.cost, r.replayed) == (True, "acme", 90, 10, False)
    assert r.transaction_id and r.charged
    dry = service_client.check("acme", 50, dry_run=True)
    assert dry.dry_run and dry.transaction_id is None
    assert admin_client.balance("acme").balance == 90
    assert service_client.sidecar_version  # learned lazily from /openapi.json


def test_insufficient_credits_is_402_with_balance_and_required(
    admin_client: Client, service_client: Client
) -> None:
    funded(admin_client, "poor", 5)
    with pytest.raises(InsufficientCredits) as e:
        service_client.check("poor", 10)
    assert (e.value.status, e.value.code, e.value.balance, e.value.required) == (
        402,
        "insufficient_credits",
        5,
        10,
    )
    assert admin_client.balance("poor").balance == 5  # nothing charged


def test_rate_limited_is_429_with_retry_time(admin_client: Client, service_client: Client) -> None:
    funded(admin_client, "busy", 100, rate_limit={"requests": 1, "period_ms": 60_000})
    service_client.check("busy", 1)
    with pytest.raises(RateLimited) as e:
        service_client.check("busy", 1)
    assert e.value.status == 429
    assert 0 < e.value.retry_after_ms <= 60_000
    assert e.value.retry_after_seconds == int(e.value.headers["retry-after"])


def test_spend_limit(admin_client: Client, service_client: Client) -> None:
    funded(admin_client, "capped", 100)
    admin_client.set_spend_limit("capped", {"credits": 15, "interval": "day"}, reason="test cap")
    service_client.check("capped", 10)
    with pytest.raises(SpendLimitReached) as e:
        service_client.check("capped", 10)
    assert (e.value.spent, e.value.required) == (10, 10)


def test_revoked_token_is_unauthorized(admin_client: Client, sidecar: Sidecar) -> None:
    funded(admin_client, "acme", 100)
    made = admin_client.create_token("app", ["service"], account_prefix="ac")
    with Client(sidecar.url, made.token) as scoped:
        assert scoped.check("acme", 1).balance == 99
        admin_client.revoke_token(made.token_id, reason="leaked")
        with pytest.raises(Unauthorized) as e:
            scoped.check("acme", 1)
    assert (e.value.status, e.value.code) == (401, "unauthorized")
    assert admin_client.balance("acme").balance == 99


def test_idempotency_key_reused_with_other_parameters_is_conflict(
    admin_client: Client, service_client: Client
) -> None:
    funded(admin_client, "acme", 100)
    service_client.check("acme", 1, idempotency_key="req-1")
    assert service_client.check("acme", 1, idempotency_key="req-1").replayed
    with pytest.raises(Conflict) as e:
        service_client.check("acme", 2, idempotency_key="req-1")
    assert e.value.code == "idempotency_conflict"


class DropAfterResponse(httpx.BaseTransport):
    """Forwards each request to the sidecar, reads its answer, then drops the connection
    instead of delivering it, ``drops`` times: the sidecar did the work, the caller never
    heard."""

    def __init__(self, drops: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.drops = drops
        self.sent: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        if request.url.path != "/openapi.json":
            self.sent.append(json.loads(request.content))
            if self.drops > 0:
                self.drops -= 1
                raise httpx.RemoteProtocolError("connection dropped", request=request)
        return response


class AsyncDropAfterResponse(httpx.AsyncBaseTransport):
    def __init__(self, drops: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.drops = drops

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if request.url.path != "/openapi.json" and self.drops > 0:
            self.drops -= 1
            raise httpx.ReadError("connection dropped", request=request)
        return response


def test_retry_after_a_dropped_connection_is_charged_once(
    admin_client: Client, sidecar: Sidecar
) -> None:
    funded(admin_client, "acme", 100)
    transport = DropAfterResponse(drops=2)
    with Client(sidecar.url, SERVICE, transport=transport, backoff=0.01) as c:
        r = c.check("acme", 10)
        usage = c.report_usage("acme", 5)
    assert r.replayed and r.balance == 90  # the third attempt: a replay of the first
    keys = {s["idempotency_key"] for s in transport.sent[:3]}
    assert len(transport.sent) == 4 and len(keys) == 1
    assert not usage.replayed or usage.balance == 85
    assert admin_client.balance("acme").balance == 85


async def test_async_retry_after_a_dropped_connection_is_charged_once(
    admin_client: Client, sidecar: Sidecar
) -> None:
    funded(admin_client, "acme", 100)
    async with AsyncClient(sidecar.url, SERVICE, transport=AsyncDropAfterResponse(1)) as c:
        r = await c.check("acme", 10)
        assert r.replayed and r.balance == 90
        assert admin_client.balance("acme").balance == 90


def test_retries_are_bounded_and_fail_closed_when_the_sidecar_is_down(
    admin_client: Client, sidecar: Sidecar
) -> None:
    funded(admin_client, "acme", 100)
    closed = Client(sidecar.url, SERVICE, backoff=0.01, verify_sidecar=False)
    opened = Client(sidecar.url, SERVICE, failure_policy="fail_open", backoff=0.01)
    assert closed.check("acme", 1).balance == 99
    sidecar.stop()
    with pytest.raises(SidecarUnavailable) as e:
        closed.check("acme", 1)
    assert e.value.status == 0 and "ConnectError" in e.value.message
    r = opened.check("acme", 1)
    assert r.allowed and r.unchecked and not r.charged and r.balance is None
    with opened.holding("acme", 10) as h:  # fail_open: no hold, nothing charged
        h.settle(3)
    assert h.hold is None and h.result is None
    with pytest.raises(SidecarUnavailable):
        opened.balance("acme")  # only checks and holding blocks fail open
    closed.close()
    opened.close()


def test_holding_settles_what_was_set_and_releases_on_error(
    admin_client: Client, service_client: Client
) -> None:
    funded(admin_client, "acme", 100)
    with service_client.holding("acme", 40) as h:
        assert admin_client.balance("acme").held == 40
        h.settle(25)
    assert h.result is not None and (h.result.state, h.result.charged) == ("settled", 25)
    with service_client.holding("acme", 40) as h:
        pass  # nothing set: released
    assert h.result is not None and h.result.state == "released"
    with pytest.raises(ValueError), service_client.holding("acme", 40) as h:
        raise ValueError("the work failed")
    b = admin_client.balance("acme")
    assert (b.balance, b.held) == (75, 0)
    with pytest.raises(InsufficientCredits):
        service_client.hold("acme", 1000)


async def test_async_holding_and_usage(admin_client: Client, sidecar: Sidecar) -> None:
    funded(admin_client, "acme", 100)
    async with AsyncClient(sidecar.url, SERVICE) as c:
        async with c.holding("acme", 30) as h:
            h.add(5)
            h.add(7)
        assert h.result is not None and h.result.charged == 12
        used = await c.report_usage("acme", 200, idempotency_key="job-1")
        assert (used.balance, used.debt_added) == (-112, 112)
        with pytest.raises(InsufficientCredits):
            await c.check("acme", 1)


def test_admin_calls(admin_client: Client) -> None:
    a = admin_client
    assert a.put_account("acme", {"overdraft_limit": 0}).created
    assert a.patch_account("acme", {"low_balance_threshold": 10}).low_balance_threshold == 10
    g = a.grant("acme", 50, reason="goodwill", grant_id="g-1")
    assert (g.balance, g.replayed) == (50, False)
    assert a.grant("acme", 50, reason="goodwill", grant_id="g-1").replayed
    k = a.create_key("acme", name="prod", idempotency_key="deploy-1")
    assert k.key and k.key.startswith("csk_")
    again = a.create_key("acme", name="prod", idempotency_key="deploy-1")
    assert again.replayed and again.key is None and again.key_id == k.key_id
    limited = a.set_key_spend_limit(k.key_id, {"credits": 5, "interval": "day"})
    assert limited.spend_limit is not None and limited.spend_limit["credits"] == 5
    assert [x.key_id for x in a.list_keys("acme")] == [k.key_id]
    assert a.revoke_key(k.key_id, reason="rotated").revoked_at
    plan = {"name": "Free", "allowance": {"credits": 100, "interval": "month"}}
    assert a.put_plan("free", plan).name == "Free"
    assert a.get_plan("free").allowance["credits"] == 100
    assert [p.plan for p in a.list_plans()] == ["free"]
    a.delete_plan("free")
    assert a.list_plans() == []
    s = a.create_portal_session("acme", return_url="https://app.test/", locale="en")
    assert s.url and s.account == "acme" and s.return_url == "https://app.test/"
    t = a.create_token("ci", ["read"])
    assert t.token and [x.token_id for x in a.list_tokens()] == [t.token_id]
    rotated = a.rotate_token(t.token_id, grace_seconds=0)
    assert rotated.token and rotated.token != t.token
    assert a.get_token(t.token_id).rotated_at
    assert a.revoke_token(t.token_id).revoked_at


class OlderSidecar(httpx.BaseTransport):
    """The real sidecar, whose spec lacks ``POST /v1/usage``: as a sidecar from before it."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path != "/openapi.json":
            return response
        spec = json.loads(response.read())
        del spec["paths"]["/v1/usage"]
        return httpx.Response(200, json=spec)


def test_a_sidecar_too_old_for_a_call(admin_client: Client, sidecar: Sidecar) -> None:
    funded(admin_client, "acme", 100)
    with Client(sidecar.url, SERVICE, transport=OlderSidecar()) as c:
        assert c.check("acme", 1).balance == 99  # what it has works
        with pytest.raises(IncompatibleSidecar) as e:
            c.report_usage("acme", 1)
    assert "POST /v1/usage" in e.value.message and "too old" in e.value.message
    with Client(sidecar.url, SERVICE, supported_sidecar=("9.0.0", "10.0.0")) as c:
        with pytest.raises(IncompatibleSidecar) as e:
            c.check_compatibility()
        assert ">=9.0.0" in e.value.message
        with pytest.raises(IncompatibleSidecar):
            c.check("acme", 1)
    assert admin_client.balance("acme").balance == 99


def test_a_sidecar_newer_than_the_client_warns_and_works(
    admin_client: Client, sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    funded(admin_client, "acme", 100)
    with Client(sidecar.url, SERVICE, supported_sidecar=("0.0.1", "0.1.0")) as c:
        assert c.check("acme", 1).balance == 99  # an upgraded sidecar must not stop the app
    assert "newer than this client" in caplog.text


@pytest.mark.parametrize(
    "url", ["http://user:pass@127.0.0.1:8080", "ftp://127.0.0.1", "127.0.0.1:8080", "http://"]
)
def test_a_base_url_with_credentials_or_without_an_http_host_is_refused_at_once(url: str) -> None:
    for make in (Client, AsyncClient):
        with pytest.raises(ValueError, match="base_url"):
            make(url, SERVICE)
