"""GET /metrics: Prometheus text with checks counted by endpoint and outcome and timed, Redis
round trips, the outbox per shard read at scrape time, billing dead letters, webhooks by type
and outcome, auto top-ups, fail-open; an optional bearer token; and one sum over the workers
of `serve --workers 2`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from sidecar.http.app import create_app
from sidecar.ledger.arguments import (
    wall_clock_ms,
)
from sidecar.redis.client import RedisClient
from sidecar.settings import Settings
from tests import workers
from tests.billing.conftest import Rig, fake, make_rig, rig  # noqa: F401  (fixtures)
from tests.billing.fakestripe import event, sign_webhook
from tests.billing.test_topup import arm, grant, spend, wait_for
from tests.conftest import FakeClock, admin, service

pytestmark = pytest.mark.sql_bystander  # its subject: the metrics

Client = TestClient[web.Request, web.Application]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
METRICS_TOKEN = "metrics-test-token-0123"
WEBHOOK_SECRET = "whsec_metrics_test_secret"


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(c: Client, headers: dict[str, str] | None = None) -> Samples:
    r = await c.get("/metrics", headers=headers or {})
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    return parse(await r.text())


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
async def app_client(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> AsyncIterator[Client]:
    s = settings.model_copy(update={"stripe_webhook_secrets": SecretStr(WEBHOOK_SECRET)})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        yield c


async def onboard(c: Client, account: str, credits: int, **settings: Any) -> str:
    """The account with ``credits``; returns an API key of it."""
    r = await c.put(f"/v1/accounts/{account}", json=settings, headers=admin())
    assert r.status == 201, await r.text()
    r = await c.post(
        f"/v1/accounts/{account}/grants",
        json={"grant_id": "g", "credits": credits, "reason": "test"},
        headers=admin(),
    )
    assert r.status == 201
    r = await c.post(f"/v1/accounts/{account}/keys", json={}, headers=admin())
    key: str = (await r.json())["key"]
    return key


async def checked(c: Client, account: str, cost: int, key: str, token: str = "") -> int:
    r = await c.post(
        "/v1/check",
        json={"account": account, "cost": cost, "idempotency_key": key},
        headers={"Authorization": f"Bearer {token}"} if token else service(),
    )
    return r.status


async def test_checks_are_counted_by_endpoint_and_outcome_and_timed(app_client: Client) -> None:
    c = app_client
    key = await onboard(c, "acme", 10)
    await onboard(c, "slow", 10, rate_limit={"requests": 1, "period_ms": 60_000})
    before = await scrape(c)

    assert await checked(c, "acme", 5, "k1") == 200
    assert await checked(c, "acme", 100, "k2") == 402
    assert await checked(c, "slow", 1, "k3") == 200
    assert await checked(c, "slow", 1, "k4") == 429
    assert await checked(c, "acme", 1, "k5", token="wrong-token-xxxxxxxx") == 401
    r = await c.post("/v1/check", json={"account": "acme"}, headers=service())
    assert r.status == 422
    nginx = {"Authorization": f"Bearer {key}", "X-Original-URI": "/x", "X-Request-Id": "n1"}
    assert (await c.get("/auth/nginx", headers=nginx)).status == 200
    bad = {"Authorization": "Bearer csk_nope", "X-Forwarded-Uri": "/x"}
    assert (await c.get("/auth/forward", headers=bad)).status == 401
    envoy = {"Authorization": f"Bearer {key}", "X-Request-Id": "e1"}
    assert (await c.get("/auth/envoy/v1/x", headers=envoy)).status == 200
    after = await scrape(c)

    name = "credit_sidecar_checks_total"
    expected = {
        ("check", "allowed"): 2,
        ("check", "insufficient"): 1,
        ("check", "rate_limited"): 1,
        ("check", "rejected"): 2,
        ("check", "error"): 0,
        ("nginx", "allowed"): 1,
        ("forward", "rejected"): 1,
        ("forward", "allowed"): 0,
        ("envoy", "allowed"): 1,
    }
    for (endpoint, outcome), n in expected.items():
        assert delta(before, after, name, endpoint=endpoint, outcome=outcome) == n, (
            endpoint,
            outcome,
        )
    hist = "credit_sidecar_check_duration_seconds"
    assert delta(before, after, f"{hist}_count", endpoint="check") == 6
    assert delta(before, after, f"{hist}_bucket", endpoint="check", le="+Inf") == 6
    assert delta(before, after, f"{hist}_count", endpoint="nginx") == 1
    assert 0 < delta(before, after, f"{hist}_sum", endpoint="check") < 6 * 0.1
    # Sub-millisecond buckets are there, and cumulative.
    buckets = [
        value(after, f"{hist}_bucket", endpoint="check", le=le)
        for le in ("0.00025", "0.0005", "0.001", "0.0025", "0.1", "+Inf")
    ]
    assert buckets == sorted(buckets)
    # The auto-pipeline's batches (round trips) and calls, read from its counters.
    assert delta(before, after, "credit_sidecar_redis_round_trips_total") >= 1
    assert delta(before, after, "credit_sidecar_redis_script_calls_total") >= 6


async def test_every_series_exists_from_the_start_with_help_and_type(
    app_client: Client,
) -> None:
    r = await app_client.get("/metrics")
    text = await r.text()
    for line in (
        "# TYPE credit_sidecar_checks_total counter",
        "# TYPE credit_sidecar_check_duration_seconds histogram",
        'credit_sidecar_checks_total{endpoint="envoy",outcome="error"}',
        'credit_sidecar_auto_topups_total{result="failed"}',
        "credit_sidecar_fail_open_total",
        "credit_sidecar_redis_up 1.0",
        "credit_sidecar_sql_up 1.0",
        'credit_sidecar_billing_dead_letters{kind="stripe_event"} 0.0',
        'credit_sidecar_billing_dead_letters{kind="notification"} 0.0',
        'credit_sidecar_outbox_dead_letters{shard="0"} 0.0',
    ):
        assert line in text, line


async def test_outbox_length_unwritten_and_writer_lag_per_shard(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    clock.now = wall_clock_ms() + 60_000  # the entries' ids are Redis's time: 60 s behind
    s = settings.model_copy(update={"shards": 2})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        await onboard(c, "acme", 10)
        samples = await scrape(c)
        shards = [str(n) for n in range(2)]
        length = [value(samples, "credit_sidecar_outbox_length", shard=n) for n in shards]
        unwritten = [value(samples, "credit_sidecar_outbox_unwritten", shard=n) for n in shards]
        lag = [value(samples, "credit_sidecar_writer_lag_seconds", shard=n) for n in shards]
        # account, grant, key: three entries on the account's shard, and their three audit
        # entries on shard 0 (docs/audit.md); none written (no writer)
        assert sum(length) == 6 and length[0] >= 3 and unwritten == length
        assert max(lag) >= 30
        assert samples[("credit_sidecar_redis_up", frozenset())] == 1


async def test_metrics_token_is_required_when_set(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    s = settings.model_copy(update={"metrics_token": SecretStr(METRICS_TOKEN)})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        assert (await c.get("/metrics")).status == 401
        assert (await c.get("/metrics", headers=admin())).status == 401
        r = await c.get("/metrics", headers={"Authorization": "Basic " + METRICS_TOKEN})
        assert r.status == 401
        body = await r.json()
        assert body["error"]["code"] == "unauthorized"
        await scrape(c, {"Authorization": f"Bearer {METRICS_TOKEN}"})


async def test_webhooks_are_counted_by_type_and_outcome(app_client: Client) -> None:
    c = app_client
    before = await scrape(c)

    async def deliver(etype: str, event_id: str, secret: str = WEBHOOK_SECRET) -> int:
        body = orjson.dumps(event(etype, {"id": "obj_1", "object": "x"}, event_id=event_id))
        headers = {"Stripe-Signature": sign_webhook(body, secret)}
        return (await c.post("/webhooks/stripe", data=body, headers=headers)).status

    assert await deliver("charge.refunded", "evt_1") == 200
    assert await deliver("charge.refunded", "evt_1") == 200  # Stripe retrying
    assert await deliver("customer.created", "evt_2") == 200
    assert await deliver("charge.refunded", "evt_3", secret="whsec_wrong") == 400
    after = await scrape(c)
    name = "credit_sidecar_webhook_events_total"
    assert delta(before, after, name, type="charge.refunded", outcome="received") == 1
    assert delta(before, after, name, type="charge.refunded", outcome="duplicate") == 1
    assert delta(before, after, name, type="other", outcome="received") == 1
    assert delta(before, after, name, type="unknown", outcome="invalid_signature") == 1


async def test_store_failures_are_counted_and_fail_open_too(
    settings: Settings, redis: RedisClient, clock: FakeClock
) -> None:
    s = settings.model_copy(update={"failure_policy": "fail_open"})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        key = await onboard(c, "acme", 10)
        assert await checked(c, "acme", 1, "warm") == 200  # the key is resolved and cached
        before = await scrape(c)
        # Redis now refuses every write (it wants a replica it does not have).
        await redis.config_set("min-replicas-to-write", 1)
        try:
            h = {"Authorization": f"Bearer {key}", "X-Forwarded-Uri": "/x"}
            r = await c.get("/auth/forward", headers=h)
            assert r.status == 200 and r.headers["X-Credits-Reason"] == "fail_open"
            assert await checked(c, "acme", 1, "k1") == 503
        finally:
            await redis.config_set("min-replicas-to-write", 0)
        after = await scrape(c)
    assert delta(before, after, "credit_sidecar_fail_open_total") == 1
    checks = "credit_sidecar_checks_total"
    assert delta(before, after, checks, endpoint="forward", outcome="error") == 1
    assert delta(before, after, checks, endpoint="check", outcome="error") == 1
    errors = "credit_sidecar_redis_errors_total"
    assert delta(before, after, errors, endpoint="forward") == 1
    assert delta(before, after, errors, endpoint="check") == 1


async def test_auto_topups_are_counted(rig: Rig) -> None:  # noqa: F811
    before = await scrape(rig.client)
    await rig.account("acme")
    await rig.package()
    await grant(rig, "acme", 150, "free")
    await arm(rig, "acme")
    await spend(rig, "acme", 100, "r1")  # crosses the threshold: one charge, granted

    async def topped_up() -> bool:
        return await rig.balance("acme") == 1050

    await wait_for(rig, topped_up)
    after = await scrape(rig.client)
    name = "credit_sidecar_auto_topups_total"
    assert delta(before, after, name, result="started") == 1
    assert delta(before, after, name, result="succeeded") == 1
    assert delta(before, after, name, result="failed") == 0


# -- serve --workers 2 -------------------------------------------------------------------------


def _get(listen: str, path: str, token: str = "") -> tuple[int, bytes, str]:
    return workers.get(listen, path, token)


def _post(listen: str, path: str, body: object, token: str) -> int:
    method = "POST" if path != "/v1/accounts/acme" else "PUT"
    return workers.send(listen, method, path, body, token)[0]


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[str]:
    with workers.two_workers(tmp_path) as listen:
        yield listen


async def test_metrics_of_two_workers_are_one_sum(two_workers: str) -> None:
    listen, admin_token, service_token = (
        two_workers,
        workers.ADMIN_TOKEN,
        workers.SERVICE_TOKEN,
    )

    def run() -> tuple[int, list[float]]:
        assert _post(listen, "/v1/accounts/acme", {}, admin_token) == 201
        grant = {"grant_id": "g", "credits": 1000, "reason": "test"}
        assert _post(listen, "/v1/accounts/acme/grants", grant, admin_token) == 201
        n = 60
        for i in range(n):  # a new connection each: the kernel spreads them over both workers
            check = {"account": "acme", "cost": 1, "idempotency_key": f"k{i}"}
            assert _post(listen, "/v1/check", check, service_token) == 200
        time.sleep(1.5)  # each worker flushes its counts every second
        totals = []
        for _ in range(6):  # whichever worker answers, the same sum
            status, body, _ = _get(listen, "/metrics")
            assert status == 200
            samples = parse(body.decode())
            totals.append(
                value(samples, "credit_sidecar_checks_total", endpoint="check", outcome="allowed")
            )
        return n, totals

    n, totals = await asyncio.to_thread(run)
    assert totals == [n] * len(totals)
