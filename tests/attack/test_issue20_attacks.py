"""Issue 20 attacked as a hostile client and a chaos tester: settling above a hold (the extra
draw, the overdraft, `uncovered`, replays, refunds, spending limits, clawbacks, holds lapsing
in the same call, rebuild), usage reports, dry runs, spending-limit windows and odd input.

Money invariants throughout: nothing created, lost or counted twice; a call answered as
refused charged nothing; every 4xx names the problem in a JSON body; never a 500."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
import re
import signal
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar import errors
from sidecar.http.app import create_app
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.results import Allowed, HoldResult, RateLimit, SpendLimit
from sidecar.persistence.rebuild import rebuild
from sidecar.persistence.reconcile import reconcile
from sidecar.redis.client import RedisClient
from sidecar.redis.embedded import RedisServer
from sidecar.settings import Settings
from tests.conftest import FakeClock, admin, outbox_entries, service, snapshot
from tests.persistence.test_rebuild import redis_state
from tests.persistence.test_writer import drain, make_writer

Client = TestClient[web.Request, web.Application]
MAXINT = 2**53 - 1
PURCHASE = "purchase:cs_1:li_1"


async def make_account(c: Client, credits: int, **settings: Any) -> None:
    r = await c.put("/v1/accounts/acme", json=settings, headers=admin())
    assert r.status == 201, await r.text()
    if credits:
        grant = {"grant_id": "g", "credits": credits, "reason": "test"}
        r = await c.post("/v1/accounts/acme/grants", json=grant, headers=admin())
        assert r.status == 201, await r.text()


async def post(c: Client, path: str, body: Any, token: dict[str, str]) -> tuple[int, Any]:
    r = await c.post(path, json=body, headers=token)
    text = await r.text()
    assert r.status < 500, text
    return r.status, (await r.json()) if text else None


async def report(c: Client, cost: Any, key: str, **extra: Any) -> tuple[int, Any]:
    body = {"account": "acme", "cost": cost, "idempotency_key": key, **extra}
    return await post(c, "/v1/usage", body, service())


async def balance(c: Client) -> dict[str, Any]:
    r = await c.get("/v1/accounts/acme/balance", headers=admin())
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


def assert_names_the_problem(status: int, body: Any) -> None:
    assert 400 <= status < 500
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert body["error"].get("code") and body["error"].get("message"), body


# --- usage reports: debt past what the ledger can count -----------------------------------


async def test_usage_reports_never_push_the_debt_past_2_pow_53_minus_1(
    ledger: Ledger, redis: RedisClient
) -> None:
    """Credits are exact integers up to 2^53-1; a report is never refused for the balance, but
    debt past that range cannot be counted exactly (the second report used to be recorded with
    the debt rounded to 2^53: a credit lost, and a balance no reply model accepts). It is
    refused as balance_overflow (422), nothing charged. (On the ledger, not over HTTP: the
    process-wide metrics counters are floats, which such amounts would disturb for other
    tests.)"""
    await ledger.configure_account("acme")
    first = await ledger.report_usage("acme", MAXINT, "job-1")
    assert first.debt_added == MAXINT
    before = await snapshot(redis)
    with pytest.raises(errors.BalanceOverflow):
        await ledger.report_usage("acme", 2, "job-2")
    assert await snapshot(redis) == before
    b = await ledger.balance("acme")
    assert (b.debt, b.balance) == (MAXINT, -MAXINT)
    await ledger.grant("acme", "g", 5)  # repays debt; room for a report again
    assert (await ledger.report_usage("acme", 2, "job-2")).debt_added == 2


# --- settling above a hold ----------------------------------------------------------------


async def sql_round_trip(
    ledger: Ledger,
    redis: RedisClient,
    engine: AsyncEngine,
    clock: FakeClock,
    *,
    clawback_versions: bool = True,
) -> None:
    """Writes the outbox to SQL, checks reconcile is clean, then flushes Redis, rebuilds it
    from SQL and checks the state came back the same (``clawback_versions=False``: but for
    the versions of clawbacks, which a newer view with the same target changes in Redis only,
    as revoke.lua documents)."""
    await drain(make_writer(ledger, engine))
    assert await reconcile(redis, ledger.keys, engine) == []
    before = await redis_state(redis, ledger.keys)
    await redis.flushall()
    await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=ledger.retention_ms)
    after = await redis_state(redis, ledger.keys)
    name = ledger.keys.for_account("a").account.encode()
    before[name][1].pop(b"clock", None)
    after[name][1].pop(b"clock", None)
    if not clawback_versions:
        for state in (before, after):
            for f, v in state[name][1].items():
                if f.startswith(b"cbs:"):
                    state[name][1][f] = re.sub(rb'"v":\d+', b'"v":_', v)
    differing = {
        k: (before.get(k), after.get(k))
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k)
    }
    assert differing == {}


async def test_a_settle_above_its_hold_survives_rebuild_with_its_replay_and_refund(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """A settle above its hold that went into the overdraft and left some uncovered, another
    hold lapsing in the same call, a spending limit: SQL reconciles, rebuild restores the same
    Redis, and afterwards the replay answers the same and the refund walks the overdraft
    first, exactly as it would have without the rebuild."""
    await ledger.configure_account("a", overdraft_limit=4, spend_limit=SpendLimit(1000, "month"))
    await ledger.grant("a", "g1", 10, priority=-1)
    await ledger.grant("a", "g2", 6)
    assert isinstance(await ledger.hold("a", "lapses", 3, 1_000), HoldResult)
    assert isinstance(await ledger.hold("a", "h", 5, 60_000), HoldResult)
    clock.advance(1_000)  # "lapses" is due: the settle's own call releases it first
    s = await ledger.settle("a", "h", 30)
    # the hold's 5, the 11 left once "lapses" gave its 3 back, 4 of overdraft: 20; 10 not
    b = await ledger.balance("a")
    assert s.charged + s.uncovered == 30
    assert b.balance == s.balance == 16 - s.charged
    assert b.balance == -4 and b.debt == 4 and s.uncovered == 30 - 20
    spend = b.spend
    assert spend is not None and spend.spent == s.charged
    await sql_round_trip(ledger, redis, engine, clock)
    again = await ledger.settle("a", "h", 30)
    assert again.replayed and (again.transaction_id, again.charged, again.uncovered) == (
        s.transaction_id,
        s.charged,
        s.uncovered,
    )
    with pytest.raises(errors.IdempotencyConflict):
        await ledger.settle("a", "h", s.charged)
    r = await ledger.refund("a", "rf", s.transaction_id, 6)  # 4 of overdraft, then 2 to g2
    assert (r.refunded, r.balance) == (6, 2)
    b = await ledger.balance("a")
    assert b.debt == 0 and {x.id: x.remaining for x in b.buckets} == {"g2": 2}
    rest = await ledger.refund("a", "rf2", s.transaction_id)
    assert rest.refunded == s.charged - 6 and rest.balance == 16
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 0
    await sql_round_trip(ledger, redis, engine, clock)


async def test_fifty_identical_settles_above_a_hold_at_once_charge_once(
    client: Client,
) -> None:
    await make_account(client, 20, overdraft_limit=5)
    hold = {"account": "acme", "hold_id": "h", "amount": 8}
    assert (await post(client, "/v1/holds", hold, service()))[0] == 201
    settle = {"account": "acme", "amount": 40}
    answers = await asyncio.gather(
        *(post(client, "/v1/holds/h/settle", settle, service()) for _ in range(50))
    )
    assert {s for s, _ in answers} == {200}
    fresh = [b for _, b in answers if not b["replayed"]]
    assert len(fresh) == 1
    assert {(b["transaction_id"], b["charged"], b["uncovered"]) for _, b in answers} == {
        (fresh[0]["transaction_id"], 25, 15)
    }
    b = await balance(client)
    assert (b["balance"], b["debt"]) == (-5, 5)


async def test_fifty_identical_usage_reports_at_once_charge_once(client: Client) -> None:
    await make_account(client, 10)
    answers = await asyncio.gather(*(report(client, 15, "job") for _ in range(50)))
    assert sorted(s for s, _ in answers) == [200] * 49 + [201]
    assert len({b["transaction_id"] for _, b in answers}) == 1
    assert {b["debt_added"] for _, b in answers if not b["replayed"]} == {5}
    b = await balance(client)
    assert (b["balance"], b["debt"]) == (-5, 5)
    status, body = await report(client, 16, "job")  # another cost under the same key
    assert status == 409
    assert_names_the_problem(status, body)
    status, body = await report(client, 15, "job", metadata={"n": 1})  # other parameters
    assert status == 409
    assert (await balance(client))["balance"] == -5


async def test_the_extra_of_a_settle_in_a_later_window_is_given_back_by_its_refund(
    ledger: Ledger, clock: FakeClock
) -> None:
    """A hold made in one month and settled above it in the next counts its extra in the
    month of the settle; refunding the settle must give that extra back there (it is the
    usage's window: the draw happened in it)."""
    await ledger.configure_account("a", spend_limit=SpendLimit(100, "month"))
    await ledger.grant("a", "g", 1000)
    month_end = 1_801_440_000_000  # 2027-01-31T... (START_MS is 2027-01-15)
    clock.now = month_end - 60_000
    assert isinstance(await ledger.hold("a", "h", 10, 3_600_000), HoldResult)
    clock.now = month_end + 60_000
    s = await ledger.settle("a", "h", 40)  # 30 extra, counted in the new month
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 30
    await ledger.refund("a", "rf", s.transaction_id, 25)  # 25 of the extra
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 5
    await ledger.refund("a", "rf2", s.transaction_id)  # the extra's last 5, then the hold's
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 0


async def test_the_extra_of_a_settle_counted_by_a_limit_set_after_the_hold_is_given_back(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """(Also after SQL and a rebuild: the settle's entry carries the extra's count, xw.)"""
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 1000)
    assert isinstance(await ledger.hold("a", "h", 10, 60_000), HoldResult)
    await ledger.update_account("a", spend_limit=SpendLimit(100, "month"))
    s = await ledger.settle("a", "h", 40)  # 30 extra, counted by the new limit
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 30
    await sql_round_trip(ledger, redis, engine, clock)
    await ledger.refund("a", "rf", s.transaction_id)
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == 0


# --- spending-limit windows ---------------------------------------------------------------

DAY = 86_400_000
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def ms(d: datetime.datetime) -> int:
    return (d - EPOCH) // datetime.timedelta(milliseconds=1)


def add_months(d: datetime.datetime, n: int) -> datetime.datetime:
    i = d.year * 12 + d.month - 1 + n
    return d.replace(year=i // 12, month=i % 12 + 1, day=1)


def window_end(unit: str, count: int, now: int) -> int:
    """:func:`calendar_end`, at most the last millisecond of 9999 (as replies report it)."""
    try:
        return min(calendar_end(unit, count, now), 253402300799999)
    except (OverflowError, ValueError):  # past year 9999
        return 253402300799999


def calendar_end(unit: str, count: int, now: int) -> int:
    """The end of the window holding ``now``, by calendar arithmetic (independent of the Lua
    code): windows of ``count`` units counted from 1970-01-01 (weeks from Monday 1969-12-29)."""
    t = EPOCH + datetime.timedelta(milliseconds=now)
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        start = EPOCH
        step = datetime.timedelta(days=count)
        return ms(start + step * ((t - start) // step + 1))
    if unit == "week":
        start = datetime.datetime(1969, 12, 29, tzinfo=datetime.UTC)
        step = datetime.timedelta(weeks=count)
        return ms(start + step * ((t - start) // step + 1))
    months = count if unit == "month" else 12 * count
    since = (t.year - 1970) * 12 + t.month - 1
    first = add_months(midnight.replace(day=1), -(since % months))
    return ms(add_months(first, months))


INSTANTS = [
    datetime.datetime(2027, 1, 31, 23, 59, 59, 999000, tzinfo=datetime.UTC),
    datetime.datetime(2027, 2, 1, tzinfo=datetime.UTC),
    datetime.datetime(2027, 2, 28, 23, 59, 59, 999000, tzinfo=datetime.UTC),
    datetime.datetime(2027, 12, 31, 23, 59, 59, 999000, tzinfo=datetime.UTC),
    datetime.datetime(2028, 1, 1, tzinfo=datetime.UTC),  # a Saturday
    datetime.datetime(2028, 1, 3, tzinfo=datetime.UTC),  # a Monday
    datetime.datetime(2028, 2, 29, 12, tzinfo=datetime.UTC),
    datetime.datetime(2100, 2, 28, 23, 59, 59, 999000, tzinfo=datetime.UTC),  # not a leap year
    datetime.datetime(2100, 3, 1, tzinfo=datetime.UTC),
    datetime.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=datetime.UTC),
]


@pytest.mark.parametrize(
    ("unit", "count"),
    [
        ("day", 1),
        ("day", 2),
        ("day", 7),
        ("week", 1),
        ("week", 3),
        ("month", 1),
        ("month", 5),
        ("month", 12),
        ("year", 1),
        ("year", 7),
    ],
)
async def test_a_limits_window_ends_where_the_calendar_says_and_starts_counting_anew(
    ledger: Ledger, clock: FakeClock, unit: Literal["day", "week", "month", "year"], count: int
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10**12)
    clock.now = ms(INSTANTS[0]) - 1
    await ledger.update_account("a", spend_limit=SpendLimit(10**9, unit, count))
    last_end = None
    for i, at in enumerate(INSTANTS):
        clock.now = ms(at)
        assert isinstance(await ledger.deduct("a", 1, f"k{i}"), Allowed)
        spend = (await ledger.balance("a")).spend
        assert spend is not None
        end = window_end(unit, count, clock.now)
        assert spend.ends_at == end, (at, spend)
        # a new window counts from nothing: only this check; the same window: one more
        assert spend.spent == (1 if end != last_end else spend.spent), (at, spend)
        if end == last_end:
            assert spend.spent >= 2
        last_end = end


# --- account settings: PATCH races --------------------------------------------------------


async def test_concurrent_patches_of_different_settings_never_lose_each_other(
    client: Client, redis: RedisClient
) -> None:
    await make_account(client, 10)
    for round_ in range(5):
        patches = [
            {"overdraft_limit": 100 + round_},
            {"low_balance_threshold": 7 + round_},
            {"rate_limit": {"requests": 50 + round_, "period_ms": 1000}},
            {"spend_limit": {"credits": 500 + round_, "interval": "week"}},
        ]
        answers = await asyncio.gather(
            *(client.patch("/v1/accounts/acme", json=p, headers=admin()) for p in patches * 5)
        )
        assert {a.status for a in answers} == {200}
        r = await client.put("/v1/accounts/acme", json={}, headers=admin())
        got = await client.patch("/v1/accounts/acme", json={}, headers=admin())
        assert r.status == 200
        # an empty PATCH: every setting as it is (PUT {} removed them all)
        body = await got.json()
        assert got.status == 200, body
        assert (body["overdraft_limit"], body["spend_limit"]) == (0, None)
        answers = await asyncio.gather(
            *(client.patch("/v1/accounts/acme", json=p, headers=admin()) for p in patches)
        )
        assert {a.status for a in answers} == {200}
        got = await client.patch("/v1/accounts/acme", json={}, headers=admin())
        body = await got.json()
        assert body["overdraft_limit"] == 100 + round_
        assert body["low_balance_threshold"] == 7 + round_
        assert body["rate_limit"]["requests"] == 50 + round_
        assert body["spend_limit"]["credits"] == 500 + round_


async def test_patching_a_revoked_key_writes_nothing(client: Client, redis: RedisClient) -> None:
    await make_account(client, 10)
    r = await client.post("/v1/accounts/acme/keys", json={"name": "k"}, headers=admin())
    key_id = (await r.json())["key_id"]
    assert (await client.delete(f"/v1/keys/{key_id}", headers=admin())).status == 200
    before = await snapshot(redis)
    for body in ({"spend_limit": {"credits": 5}}, {"spend_limit": None}):
        r = await client.patch(f"/v1/keys/{key_id}", json=body, headers=admin())
        assert r.status == 409
        assert_names_the_problem(r.status, await r.json())
    assert await snapshot(redis) == before


# --- dry runs -----------------------------------------------------------------------------


async def test_a_dry_run_on_a_busy_account_writes_nothing_and_answers_as_the_check(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    """Due bucket expiries, a due hold lapsing into a live bucket and into an expired one, a
    spending limit the lapse gives room back to, a key with its own limit, a rate limit, a
    debt: every dry run leaves Redis byte for byte as it was, and the real call then gets the
    same answer."""
    from sidecar.ledger.apikeys import ApiKeys

    await ledger.configure_account(
        "a",
        overdraft_limit=3,
        low_balance_threshold=15,
        spend_limit=SpendLimit(40, "day"),
    )
    keys = ApiKeys(ledger)
    key, _ = await keys.create("a", spend_limit=SpendLimit(25, "day"))
    start = clock.now
    await ledger.grant("a", "soon", 10, expires_at=start + 5_000, priority=-1)
    await ledger.grant("a", "later", 30)
    assert isinstance(await ledger.hold("a", "h1", 12, 4_000), HoldResult)  # 10 of soon, 2 later
    assert isinstance(await ledger.hold("a", "h2", 6, 9_000), HoldResult)
    assert isinstance(await ledger.deduct("a", 20, "used", key_id=key.key_id), Allowed)
    clock.advance(10_000)  # soon expired, h1 and h2 lapsed: nothing processed yet
    for cost, kid in ((1, ""), (5, key.key_id), (6, key.key_id), (19, ""), (25, ""), (41, "")):
        before = await snapshot(redis)
        dry = await ledger.deduct("a", cost, f"c{cost}", key_id=kid, dry_run=True)
        assert await snapshot(redis) == before, cost
        real = await ledger.deduct("a", cost, f"r{cost}", key_id=kid)
        if isinstance(real, Allowed):
            assert isinstance(dry, Allowed)
            assert (dry.balance, dry.low_balance) == (real.balance, real.low_balance), cost
            await ledger.refund("a", f"undo{cost}", real.transaction_id)
        else:
            assert dry == real, cost


async def test_a_dry_run_with_a_cost_of_zero_is_a_422_naming_cost(
    client: Client, redis: RedisClient
) -> None:
    await make_account(client, 10)
    before = await snapshot(redis)
    body = {"account": "acme", "cost": 0, "idempotency_key": "k", "dry_run": True}
    status, answer = await post(client, "/v1/check", body, service())
    assert status == 422 and answer["error"]["field"] == "cost"
    assert await snapshot(redis) == before


# --- odd encodings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cost",
    [
        b"1.0",
        b"1e3",
        b"-0",
        b"-0.0",
        b'"5"',
        b"true",
        b"null",
        b"1e400",
        b"18446744073709551616",
        b"9007199254740992",
        b"99999999999999999999999999999999999999",
        b"NaN",
        b"Infinity",
        b"[5]",
        b"{}",
    ],
)
@pytest.mark.parametrize("path", ["/v1/usage", "/v1/check", "/v1/holds/h/settle"])
async def test_odd_numbers_are_a_4xx_naming_the_problem_and_charge_nothing(
    client: Client, redis: RedisClient, path: str, cost: bytes
) -> None:
    await make_account(client, 10)
    assert (
        await post(client, "/v1/holds", {"account": "acme", "hold_id": "h", "amount": 2}, service())
    )[0] == 201
    field = b"amount" if path.endswith("settle") else b"cost"
    body = b'{"account": "acme", "idempotency_key": "k", "' + field + b'": ' + cost + b"}"
    if path.endswith("settle"):
        body = b'{"account": "acme", "amount": ' + cost + b"}"
    before = await snapshot(redis)
    r = await client.post(
        path, data=body, headers={**service(), "Content-Type": "application/json"}
    )
    text = await r.text()
    if path.endswith("settle") and cost == b"-0":  # JSON's -0 is the integer 0: a valid settle
        assert r.status == 200 and (await r.json())["charged"] == 0, text
        return
    assert 400 <= r.status < 500, text
    assert_names_the_problem(r.status, await r.json())
    assert await snapshot(redis) == before


@pytest.mark.parametrize("path", ["/v1/usage", "/v1/check"])
async def test_a_duplicated_json_key_never_charges_other_than_what_is_answered(
    client: Client, redis: RedisClient, path: str
) -> None:
    """`{"cost": 1, "cost": 9}`: refused, or charged exactly the cost the answer names."""
    await make_account(client, 100)
    body = b'{"account": "acme", "idempotency_key": "k", "cost": 1, "cost": 9}'
    r = await client.post(
        path, data=body, headers={**service(), "Content-Type": "application/json"}
    )
    answer = await r.json()
    assert r.status < 500, answer
    if r.status >= 400:
        assert_names_the_problem(r.status, answer)
        assert (await balance(client))["balance"] == 100
    else:
        assert (await balance(client))["balance"] == 100 - answer["cost"]


async def test_unicode_descriptions_at_the_limit_are_kept_whole(client: Client) -> None:
    await make_account(client, 100)
    text = "𝄞é\u202e😀" * 128  # 512 characters, 4 bytes or fewer each: 1664 bytes
    status, body = await report(client, 3, "job", description=text, metadata={"ü": "𝄞" * 900})
    assert status == 201, body
    again = await report(client, 3, "job", description=text, metadata={"ü": "𝄞" * 900})
    assert again[0] == 200
    status, body = await report(client, 3, "job2", description="\x00")
    assert status == 422 and body["error"]["field"] == "description"
    r = await client.get("/v1/accounts/acme/transactions", headers=admin())
    assert r.status < 500


# --- settles above holds and clawbacks of refunded purchases ------------------------------


async def claw(ledger: Ledger, target: int, policy: Any, version: int = 1) -> Any:
    return await ledger.revoke(
        "a", "cs_1", target, buckets=[PURCHASE], policy=policy, version=version
    )


@pytest.mark.parametrize("policy", ["unspent", "negative"])
async def test_a_settle_above_a_hold_on_a_refunded_purchase_settles_the_clawback_once(
    ledger: Ledger,
    redis: RedisClient,
    clock: FakeClock,
    engine: AsyncEngine,
    policy: str,
) -> None:
    """The hold's credits came from a purchase refunded since (its clawback waits for them);
    another hold on it lapses in the same call; the extra is drawn from a grant. Everything
    adds up: bought + granted - charged - taken back = balance, and SQL and rebuild agree."""
    await ledger.configure_account("a")
    await ledger.grant("a", PURCHASE, 100, source="purchase", priority=-1)
    await ledger.grant("a", "g", 50)
    assert isinstance(await ledger.hold("a", "lapses", 60, 1_000), HoldResult)
    assert isinstance(await ledger.hold("a", "h", 40, 60_000), HoldResult)
    r = await claw(ledger, 100, policy)
    assert (r.taken, r.pending) == (0, 100)
    clock.advance(1_000)
    s = await ledger.settle("a", "h", 70)  # "lapses" gives its 60 back: taken at once
    assert (s.charged, s.uncovered) == (70, 0)
    b = await ledger.balance("a")
    buckets = {x.id: x.remaining for x in b.buckets}
    assert buckets.get(PURCHASE, 0) == 0 and buckets["g"] == 20
    if policy == "negative":  # the 40 the hold charged are owed
        assert (b.debt, b.balance) == (40, -20)
    else:  # they are lost to the seller
        assert (b.debt, b.balance) == (0, 20)
    revokes = [e for e in await outbox_entries(redis) if e.get("type") == "revoke"]
    assert sum(-e["amount"] for e in revokes) == (100 if policy == "negative" else 60)
    assert s.balance == b.balance
    await sql_round_trip(ledger, redis, engine, clock)
    again = await ledger.settle("a", "h", 70)
    assert again.replayed and (again.transaction_id, again.balance) == (s.transaction_id, s.balance)
    # refunding the settle: the extra back to g, the hold's 40 back to the purchase's bucket:
    # under "unspent" the clawback (40 short) takes them; under "negative" they stay there
    # and the 40 owed stay owed (the debt was the clawback's part): the balance is the same
    rf = await ledger.refund("a", "rf", s.transaction_id)
    assert rf.refunded == 70
    b = await ledger.balance("a")
    left = {x.id: x.remaining for x in b.buckets}.get(PURCHASE, 0)
    assert (b.balance, left, b.debt) == ((50, 0, 0) if policy == "unspent" else (50, 40, 40))
    await sql_round_trip(ledger, redis, engine, clock)


async def test_the_extra_drawn_from_a_purchase_refunded_afterwards_is_taken_back_on_refund(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 10, priority=-1)
    await ledger.grant("a", PURCHASE, 100, source="purchase")
    assert isinstance(await ledger.hold("a", "h", 10, 60_000), HoldResult)  # all of g
    s = await ledger.settle("a", "h", 35)  # the extra 25 from the purchase
    assert (s.charged, s.balance) == (35, 75)
    r = await claw(ledger, 100, "unspent")
    assert (r.taken, r.unrecovered) == (75, 25)
    rf = await ledger.refund("a", "rf", s.transaction_id)
    assert rf.refunded == 35
    b = await ledger.balance("a")
    # the 25 back to the purchase go to its clawback; the hold's 10 back to g
    assert ({x.id: x.remaining for x in b.buckets}, b.balance, b.debt) == ({"g": 10}, 10, 0)
    await sql_round_trip(ledger, redis, engine, clock)


async def test_rebuild_restores_the_balance_replays_answered_when_a_clawback_took_credits(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    await ledger.configure_account("a")
    await ledger.grant("a", PURCHASE, 100, source="purchase")
    assert isinstance(await ledger.hold("a", "h", 60, 60_000), HoldResult)
    await claw(ledger, 100, "unspent")  # takes the 40 left, waits for the 60 held
    first = await ledger.release("a", "h")  # the 60 come back and are taken at once
    assert first.balance == 0
    await drain(make_writer(ledger, engine))
    await redis.flushall()
    await rebuild(redis, ledger.keys, engine, now_ms=clock.now, retention_ms=ledger.retention_ms)
    again = await ledger.release("a", "h")
    assert again.replayed and again.balance == first.balance  # was 60 after the rebuild


# --- a paused Redis -----------------------------------------------------------------------


@pytest.mark.slow
async def test_settles_and_reports_queued_behind_a_paused_redis_are_never_charged_twice(
    paused: tuple[RedisServer, RedisClient],
) -> None:
    """Redis SIGSTOPped while settles above a hold and usage reports wait on it: every call is
    answered 503 and, once Redis resumes, none of them took effect (they reached it past
    their deadline); retried, each charges exactly once."""
    server, redis_client = paused
    ledger = Ledger(redis_client, KeySpace(), deadline_s=1.0, deadline_margin_ms=200)
    try:
        await ledger.configure_account("a", overdraft_limit=5)
        await ledger.grant("a", "g", 20)
        assert isinstance(await ledger.hold("a", "h", 8, 600_000), HoldResult)
        for i in range(10):  # connections up and scripts loaded
            await ledger.report_usage("a", 1, f"warm{i}")
        before = await ledger.balance("a")
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        results = await asyncio.gather(
            *(ledger.settle("a", "h", 40) for _ in range(5)),
            *(ledger.report_usage("a", 15, "job") for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, errors.StoreUnavailable) for r in results), results
        await asyncio.sleep(1.0)
        os.kill(server.process.pid, signal.SIGCONT)
        for _ in range(100):
            if await redis_client.ping():
                break
        await asyncio.sleep(0.5)  # the queued scripts (and any voids) have run by now
        after = await ledger.balance("a")
        assert (after.balance, after.held, after.debt) == (before.balance, 8, 0)
        s = await ledger.settle("a", "h", 40)
        assert not s.replayed and (s.charged, s.uncovered) == (15, 25)
        u = await ledger.report_usage("a", 15, "job")
        assert not u.replayed and u.debt_added == 15
        assert (await ledger.settle("a", "h", 40)).replayed
        assert (await ledger.report_usage("a", 15, "job")).replayed
        final = await ledger.balance("a")
        assert (final.balance, final.held, final.debt) == (-20, 0, 20)
    finally:
        ledger.close()


async def test_spending_past_2_pow_53_in_one_window_survives_sql_and_rebuild(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """Reports and settles are never refused by a limit, so what a window spent can pass any
    limit, and 2^53-1: it is kept at 2^53-1 (past it, the spend state was inexact and every
    later transaction of the account was dead-lettered by the SQL writer: "field spend is not
    'from:spent'"), the account keeps being refused checks, and it reaches SQL and comes
    back."""
    await ledger.configure_account("a", spend_limit=SpendLimit(10, "month"))
    for i in range(3):
        await ledger.grant("a", f"g{i}", MAXINT)
        await ledger.report_usage("a", MAXINT, f"job{i}")
    await ledger.grant("a", "more", 100)
    spend = (await ledger.balance("a")).spend
    assert spend is not None and spend.spent == MAXINT
    await sql_round_trip(ledger, redis, engine, clock)
    assert not isinstance(await ledger.deduct("a", 1, "c"), Allowed)


# --- dry runs through the proxy modes -----------------------------------------------------


@pytest.mark.parametrize("mode", ["nginx", "forward", "envoy"])
async def test_a_trusted_dry_run_header_changes_nothing_in_any_proxy_mode(
    settings: Settings, redis: RedisClient, clock: FakeClock, tmp_path: Path, mode: str
) -> None:
    """Allowed, over the key's limit, over the account's limit, short of credits, rate
    limited, with a revoked key, a replayed request id: Redis is byte for byte as before each
    dry run, every answer carries X-Credits-Dry-Run: 1, and none is a 5xx."""
    pricing = tmp_path / "pricing.toml"
    pricing.write_text("default_cost = 4\n")
    s = settings.model_copy(update={"pricing_file": pricing, "trust_dry_run_header": True})
    async with TestClient(TestServer(create_app(s, clock=clock))) as c:
        await make_account(
            c,
            30,
            spend_limit={"credits": 20, "interval": "day"},
            rate_limit={"requests": 3, "period_ms": 60_000, "burst": 3},
        )
        made = []
        for limit in ({"credits": 6, "interval": "day"}, None):
            body = {"name": "k"} | ({"spend_limit": limit} if limit else {})
            r = await c.post("/v1/accounts/acme/keys", json=body, headers=admin())
            made.append((await r.json())["key"])
        capped, free = made
        r = await c.post("/v1/accounts/acme/keys", json={"name": "gone"}, headers=admin())
        gone = await r.json()
        assert (await c.delete(f"/v1/keys/{gone['key_id']}", headers=admin())).status == 200

        async def call(key: str, rid: str, dry: bool) -> Any:
            h = {"Authorization": f"Bearer {key}", "X-Request-Id": rid}
            if dry:
                h["X-Credits-Dry-Run"] = "1"
            if mode == "nginx":
                h |= {"X-Original-URI": "/v1/x", "X-Original-Method": "GET"}
                return await c.get("/auth/nginx", headers=h)
            if mode == "forward":
                h |= {"X-Forwarded-Uri": "/v1/x", "X-Forwarded-Method": "GET"}
                return await c.get("/auth/forward", headers=h)
            return await c.get("/auth/envoy/v1/x", headers=h)

        assert (await call(capped, "real-1", False)).status == 200  # 4 of the key's 6
        cases = [(capped, "a"), (capped, "real-1"), (free, "b"), (gone["key"], "c")]
        for key, rid in cases * 2:
            before = await snapshot(redis)
            r = await call(key, rid, True)
            assert r.status < 500, await r.text()
            assert r.headers.get("X-Credits-Dry-Run") == "1", (key, rid, r.status)
            assert await snapshot(redis) == before, (key, rid)
        assert (await call(free, "real-2", False)).status == 200
        assert (await call(free, "real-3", False)).status == 200  # the rate limit's 3rd
        before = await snapshot(redis)
        r = await call(free, "d", True)  # rate limited now
        assert r.status in (403, 429) and r.headers.get("X-Credits-Dry-Run") == "1"
        assert await snapshot(redis) == before
        assert (await balance(c))["balance"] == 18


# --- API keys' limits ---------------------------------------------------------------------


async def test_a_revoked_keys_limit_leaves_nothing_behind_and_a_new_key_starts_from_nothing(
    ledger: Ledger, redis: RedisClient
) -> None:
    from sidecar.ledger.apikeys import ApiKeys

    keys = ApiKeys(ledger)
    await ledger.configure_account("a")
    await ledger.grant("a", "g", 100)
    old, _ = await keys.create("a", spend_limit=SpendLimit(5, "day"))
    assert isinstance(await ledger.deduct("a", 5, "r1", key_id=old.key_id), Allowed)
    await keys.revoke(old.key_id)
    fields = await redis.hkeys(ledger.keys.for_account("a").account)
    assert not [f for f in fields if old.key_id.encode() in f]
    assert not isinstance(await ledger.deduct("a", 1, "r2", key_id=old.key_id), Allowed)
    new, _ = await keys.create("a", spend_limit=SpendLimit(5, "day"))
    assert isinstance(await ledger.deduct("a", 5, "r3", key_id=new.key_id), Allowed)
    listed = {k.key_id: k for k in await keys.list("a")}
    assert listed[old.key_id].spend is None
    spend = listed[new.key_id].spend
    assert spend is not None and spend.spent == 5


# --- garbage bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b"null", b"1", b'"x"', b'{"account": "acme"', b"\xff\xfe", b"{}"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/usage"),
        ("POST", "/v1/check"),
        ("POST", "/v1/holds/h/settle"),
        ("PATCH", "/v1/accounts/acme"),
        ("PATCH", "/v1/keys/key_0123456789abcdef"),
    ],
)
async def test_garbage_bodies_are_a_4xx_with_a_json_error_and_change_nothing(
    client: Client, redis: RedisClient, method: str, path: str, body: bytes
) -> None:
    await make_account(client, 10)
    before = await snapshot(redis)
    token = admin() if method == "PATCH" else service()
    r = await client.request(
        method, path, data=body, headers={**token, "Content-Type": "application/json"}
    )
    text = await r.text()
    if method == "PATCH" and path.startswith("/v1/accounts") and body == b"{}":
        # an empty PATCH answers the settings and changes none (it does append a settings
        # entry to the outbox, the same settings again: harmless)
        assert r.status == 200, text
        after = await snapshot(redis)
        outbox = KeySpace().outbox(0).encode()
        assert {k: v for k, v in after.items() if k != outbox} == {
            k: v for k, v in before.items() if k != outbox
        }
        return
    assert 400 <= r.status < 500, text
    assert_names_the_problem(r.status, await r.json())
    assert await snapshot(redis) == before


# --- PATCH races reach SQL ----------------------------------------------------------------


async def test_concurrent_patches_reach_sql_and_rebuild_as_redis_has_them(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    await ledger.configure_account("a", overdraft_limit=1)
    await ledger.grant("a", "g", 100)
    for round_ in range(4):
        await asyncio.gather(
            *(
                call
                for i in range(5)
                for call in (
                    ledger.update_account("a", overdraft_limit=10 * round_ + i),
                    ledger.update_account("a", low_balance_threshold=round_ + i),
                    ledger.update_account("a", spend_limit=SpendLimit(50 + i, "week")),
                    ledger.update_account(
                        "a", rate_limit=None if i % 2 else RateLimit(5 + i, 1000, 5)
                    ),
                )
            )
        )
        assert isinstance(await ledger.deduct("a", 1, f"c{round_}"), Allowed)
        await sql_round_trip(ledger, redis, engine, clock)


# --- a usage report whose reply was lost --------------------------------------------------


async def test_a_report_whose_reply_was_lost_is_voided_debt_limit_and_all(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine
) -> None:
    """A report that ran but whose caller answered 503 (the reply lost) is voided like a
    check: its credits, the debt it made and what it counted against the limit all come back,
    the key is free again, and SQL and rebuild agree."""
    from sidecar.ledger.calls import REPORT_IDENTITY
    from sidecar.ledger.voids import Void, request_digest, send_void

    await ledger.configure_account("a", overdraft_limit=2, spend_limit=SpendLimit(100, "month"))
    await ledger.grant("a", "g", 10)
    before = await ledger.balance("a")
    k = ledger.keys
    txid = "tx_lostreport"
    keys = [
        *k.for_account("a").common(),
        k.idempotency("a", "job"),
        k.usage("a", txid),
        k.events_for("a"),
    ]
    args: list[str | int] = ["a", clock.now, txid, ledger.retention_ms, ledger.script_deadline()]
    args += [25, "job", "", "", "", "", "", "", "", "", REPORT_IDENTITY, "tok1", "report"]
    reply = await ledger.scripts.deduct(keys=keys, args=args)  # ran; the reply is lost
    assert reply[0] == b"ok" and reply[6] == 15
    v = Void("a", "job", "tok1", 25, request_digest("", "", "", "", REPORT_IDENTITY), 0)
    assert await send_void(ledger, v) == "voided"
    after = await ledger.balance("a")
    assert (after.balance, after.debt) == (before.balance, 0)
    assert after.spend is not None and after.spend.spent == 0
    await sql_round_trip(ledger, redis, engine, clock)
    u = await ledger.report_usage("a", 25, "job")  # the key is free: a new report
    assert not u.replayed and u.debt_added == 15


@pytest.mark.parametrize(
    "patch",
    [
        {"overdraft_limit": 1.0},
        {"overdraft_limit": -1},
        {"overdraft_limit": True},
        {"overdraft_limit": "5"},
        {"overdraft_limit": 2**53},
        {"spend_limit": {"credits": 1.0}},
        {"spend_limit": {"credits": "5"}},
        {"spend_limit": {"credits": 0}},
        {"spend_limit": {"credits": -5}},
        {"spend_limit": {"credits": 2**53}},
        {"spend_limit": {"credits": 5, "interval": "MONTH"}},
        {"spend_limit": {"credits": 5, "interval": "month "}},
        {"spend_limit": {"credits": 5, "interval": "life"}},
        {"spend_limit": {"credits": 5, "interval": "hour"}},
        {"spend_limit": {"credits": 5, "interval": "day", "interval_count": 0}},
        {"spend_limit": {"credits": 5, "interval": "day", "interval_count": 1001}},
        {"spend_limit": {"credits": 5, "interval_count": 2}},
        {"spend_limit": {"credits": 5, "extra": 1}},
        {"spend_limit": {}},
        {"spend_limit": []},
        {"spend_limit": ""},
        {"spend_limit": 5},
        {"rate_limit": {"requests": 0, "period_ms": 1000}},
        {"unknown_setting": 1},
    ],
)
async def test_bad_settings_in_a_patch_are_a_422_naming_the_field_and_change_nothing(
    client: Client, redis: RedisClient, patch: dict[str, Any]
) -> None:
    await make_account(client, 10, spend_limit={"credits": 50, "interval": "week"})
    before = await snapshot(redis)
    for route in ("/v1/accounts/acme",):
        for method in ("PATCH", "PUT"):
            r = await client.request(method, route, json=patch, headers=admin())
            body = await r.json()
            assert r.status == 422, body
            assert_names_the_problem(r.status, body)
            field = body["error"].get("field") or ""
            assert field.split(".")[0] == next(iter(patch)), body
    assert await snapshot(redis) == before


# --- random sequences: every transaction's amount is the balance's change ------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(16))
async def test_random_settles_reports_refunds_and_clawbacks_keep_the_books(
    ledger: Ledger, redis: RedisClient, clock: FakeClock, engine: AsyncEngine, seed: int
) -> None:
    """Holds settled above and below, lapsing, usage reports, refunds of both, clawbacks of a
    refunded purchase (both policies), clock jumps across windows: after every step the
    balance is the sum of every transaction's amount, each transaction's balance is the
    previous one plus its amount, and at the end SQL reconciles and rebuild reproduces it."""
    import random

    from sidecar.errors import SidecarError

    rng = random.Random(seed)
    # near midnight: the day windows turn during the run (jumps stay within the retention,
    # whose records a rebuild keeps by the ledger's clock but Redis expires by its own)
    clock.now = ms(datetime.datetime(2027, 1, 15, 23, 30, tzinfo=datetime.UTC))
    await ledger.configure_account(
        "a", overdraft_limit=rng.choice([0, 5, 50]), spend_limit=SpendLimit(400, "day")
    )
    await ledger.grant("a", PURCHASE, 200, source="purchase", priority=rng.choice([-1, 0, 1]))
    await ledger.grant("a", "g", 100)
    holds: list[str] = []
    refundable: list[str] = []
    version = 0
    for step in range(30):
        op = rng.choice(["hold", "settle", "settle", "release", "report", "refund", "claw", "time"])
        try:
            if op == "hold":
                h = f"h{step}"
                r = await ledger.hold("a", h, rng.randint(1, 60), rng.choice([2_000, 600_000]))
                if isinstance(r, HoldResult):
                    holds.append(h)
            elif op == "settle" and holds:
                s = await ledger.settle("a", rng.choice(holds), rng.randint(0, 120))
                if s.charged > 0:
                    refundable.append(s.transaction_id)
            elif op == "release" and holds:
                await ledger.release("a", rng.choice(holds))
            elif op == "report":
                u = await ledger.report_usage("a", rng.randint(1, 80), f"job{step}")
                refundable.append(u.transaction_id)
            elif op == "refund" and refundable:
                amount = rng.choice([None, rng.randint(1, 20)])
                await ledger.refund("a", f"rf{step}", rng.choice(refundable), amount)
            elif op == "claw":
                version += 1
                await claw(
                    ledger, rng.randint(0, 200), rng.choice(["unspent", "negative"]), version
                )
            elif op == "time":
                clock.advance(rng.choice([1_000, 3_000, 600_000]))
        except SidecarError:
            pass  # refused (closed hold, amount conflicts, fully refunded...): nothing changed
        b = await ledger.balance("a")  # (processes what is due first)
        txns = [e for e in await outbox_entries(redis) if e.get("kind") == "txn"]
        assert sum(t["amount"] for t in txns) == b.balance, (seed, step, op)
        for prev, t in itertools.pairwise(txns):
            assert t["balance"] == prev["balance"] + t["amount"], (seed, step, t)
    await sql_round_trip(ledger, redis, engine, clock, clawback_versions=False)


async def test_a_dry_run_that_is_rate_limited_names_the_same_wait_as_the_check(
    ledger: Ledger, redis: RedisClient, clock: FakeClock
) -> None:
    await ledger.configure_account("a", rate_limit=RateLimit(2, 60_000, 2))
    await ledger.grant("a", "g", 100)
    for i in range(2):
        assert isinstance(await ledger.deduct("a", 1, f"c{i}"), Allowed)
    clock.advance(7_000)
    before = await snapshot(redis)
    dry = await ledger.deduct("a", 1, "x", dry_run=True)
    assert await snapshot(redis) == before
    real = await ledger.deduct("a", 1, "y")
    assert not isinstance(real, Allowed) and dry == real


async def test_a_settle_far_above_a_hold_at_the_largest_numbers_stays_exact(
    client: Client,
) -> None:
    await make_account(client, MAXINT - 7, overdraft_limit=MAXINT)
    hold = {"account": "acme", "hold_id": "h", "amount": 5}
    assert (await post(client, "/v1/holds", hold, service()))[0] == 201
    settle = {"account": "acme", "amount": MAXINT}
    status, body = await post(client, "/v1/holds/h/settle", settle, service())
    assert status == 200, body
    # the hold's 5, the MAXINT-12 left, then the overdraft for the last 7: all covered
    assert (body["charged"], body["uncovered"], body["balance"]) == (MAXINT, 0, -7)
    b = await balance(client)
    assert (b["balance"], b["debt"]) == (-7, 7)
    status, body = await post(client, "/v1/holds/h/settle", settle, service())
    assert status == 200 and body["replayed"] is True
