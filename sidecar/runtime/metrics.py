"""Prometheus metrics: what the sidecar counts, how the hot path stays cheap, and how the
processes of ``serve --workers N`` report as one.

**Hot path.** A check (``/v1/check`` and the proxy auth endpoints) costs one list slot
increment, one ``bisect`` of its latency into a bucket slot and one float add
(:class:`CheckStats`): no lock, no prometheus-client call. :func:`flush` moves those counts
into the Prometheus counter and histogram, and the auto-pipeline's batch and call counters
(sidecar/redis/autopipe.py counts them anyway) into theirs: at every scrape, and once a second in
the workers of a multi-process ``serve``. Rare events (Stripe webhooks, auto top-ups, checks
let through by ``fail_open``) call prometheus-client directly.

**Several workers.** ``serve --workers N`` gives each worker ``PROMETHEUS_MULTIPROC_DIR``, a
fresh directory of that ``serve`` (:data:`MULTIPROC_ENV`); prometheus-client then keeps each
process's values in memory-mapped files there, and a scrape, whichever worker answers it, sums
every worker's files (``MultiProcessCollector``). A worker that died still counts (counters
never go back). Without the variable (one process) the values live in this process.

**Read at scrape time.** The outbox per shard (length, unwritten entries, the writer's lag,
dead letters) is read from Redis (``outbox_status``) and cached for a second; the billing dead
letters (Stripe events and low-balance deliveries given up) from SQL, cached for ten. They are
the same whichever process answers.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from sidecar.billing.context import Billing
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.redis_calls import (
    store_call,
)
from sidecar.persistence.outbox_status import outbox_status
from sidecar.redis.autopipe import AutoPipeline

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus-client chooses its value class when it is imported: this is the same test.
MULTIPROCESS = MULTIPROC_ENV in os.environ

ENDPOINTS = ("check", "nginx", "forward", "envoy")
CHECK, NGINX, FORWARD, ENVOY = range(len(ENDPOINTS))
OUTCOMES = ("allowed", "insufficient", "rate_limited", "rejected", "error")
ALLOWED, INSUFFICIENT, RATE_LIMITED, REJECTED, ERROR = range(len(OUTCOMES))
# What a response status means for the count; anything else (400, 401, 403, 404, 422) is a
# request refused before the ledger was asked: rejected.
OUTCOME_OF_STATUS = {200: ALLOWED, 402: INSUFFICIENT, 429: RATE_LIMITED, 503: ERROR}
# Check latency in seconds: a check takes well under a millisecond when Redis is near.
BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
WEBHOOK_OUTCOMES = ("received", "duplicate", "invalid_signature", "not_configured", "error")
TOPUP_RESULTS = ("started", "succeeded", "failed")

REGISTRY = CollectorRegistry(auto_describe=True)

_checks = Counter(
    "credit_sidecar_checks",
    "Credit checks by endpoint (check = POST /v1/check; nginx, forward, envoy = the proxy "
    "auth endpoints) and outcome (rejected: refused before the ledger, e.g. a bad key; "
    "error: the store failed)",
    ["endpoint", "outcome"],
    registry=REGISTRY,
)
_duration = Histogram(
    "credit_sidecar_check_duration_seconds",
    "Time to answer a credit check, in the handler",
    ["endpoint"],
    buckets=BUCKETS,
    registry=REGISTRY,
)
_batches = Counter(
    "credit_sidecar_redis_round_trips",
    "Auto-pipelined batches sent to Redis: one round trip each (several script calls)",
    registry=REGISTRY,
)
_calls = Counter(
    "credit_sidecar_redis_script_calls",
    "Script calls sent to Redis through the auto-pipeline",
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "credit_sidecar_redis_errors",
    "Credit checks the store failed (Redis unreachable, refusing writes, or too slow)",
    ["endpoint"],
    registry=REGISTRY,
)
USAGE_REPORTED = Counter(
    "credit_sidecar_usage_reported_credits",
    "Credits of usage reported after the work (POST /v1/usage), replays not counted",
    registry=REGISTRY,
)
USAGE_DEBT = Counter(
    "credit_sidecar_usage_debt_credits",
    "Credits of reported usage the balance could not cover: they became debt",
    registry=REGISTRY,
)
SETTLE_UNCOVERED = Counter(
    "credit_sidecar_settle_uncovered_credits",
    "Credits of settles above their hold that neither the balance nor the overdraft covered: "
    "not charged",
    registry=REGISTRY,
)
FAIL_OPEN = Counter(
    "credit_sidecar_fail_open",
    "Proxy requests let through without a check because the store failed "
    "(SIDECAR_FAILURE_POLICY=fail_open)",
    registry=REGISTRY,
)
VOID_OUTCOMES = (
    "queued",  # a check answered 503 whose call may have run: a void waits to be sent
    "dropped",  # the queue was full (SIDECAR_VOID_QUEUE_MAX): that charge stays
    "voided",  # every attempt of the check was lost: its usage was refunded
    "marked",  # another attempt of it is still open (or got its 200)
    "not_run",  # the call never ran (refused past its deadline, never reached Redis)
    "absent",  # no record any more (voided already, expired, or never charged)
    "kept",  # a record that cannot be voided (another request's, or written without tokens)
    "failed",  # given up: an error other than Redis being unavailable
)
VOIDS = Counter(
    "credit_sidecar_voids",
    "Voids of checks answered 503 whose reply was lost (sidecar/ledger/voids.py), by outcome",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOKS = Counter(
    "credit_sidecar_webhook_events",
    "Stripe webhook deliveries by event type (types the sidecar does not handle: other; "
    "unverified ones: unknown) and outcome",
    ["type", "outcome"],
    registry=REGISTRY,
)
TOPUPS = Counter(
    "credit_sidecar_auto_topups",
    "Auto top-up charges started, succeeded (credits granted) and failed",
    ["result"],
    registry=REGISTRY,
)

# Every series exists from the start (a rate over a series born mid-window is wrong), and
# the hot path indexes these children instead of calling labels().
_check_children = [_checks.labels(e, o) for e in ENDPOINTS for o in OUTCOMES]
_duration_children = [_duration.labels(e) for e in ENDPOINTS]
_error_children = [REDIS_ERRORS.labels(e) for e in ENDPOINTS]
for _result in TOPUP_RESULTS:
    TOPUPS.labels(_result)
FAIL_OPEN.inc(0)
USAGE_REPORTED.inc(0)
USAGE_DEBT.inc(0)
SETTLE_UNCOVERED.inc(0)
for _outcome in VOID_OUTCOMES:
    VOIDS.labels(_outcome)
if not MULTIPROCESS:  # one process's CPU and memory; meaningless summed over workers
    ProcessCollector(registry=REGISTRY)

_NO = len(OUTCOMES)
_NB = len(BUCKETS) + 1  # + Inf


class CheckStats:
    """Counts and latency buckets of checks, kept as plain numbers until :func:`flush`."""

    __slots__ = ("buckets", "counts", "errors", "sums")

    def __init__(self) -> None:
        self.counts = [0] * (len(ENDPOINTS) * _NO)
        self.buckets = [0] * (len(ENDPOINTS) * _NB)
        self.sums = [0.0] * len(ENDPOINTS)
        self.errors = [0] * len(ENDPOINTS)

    def record(self, endpoint: int, outcome: int, seconds: float) -> None:
        """One check: ``endpoint`` and ``outcome`` are indexes (CHECK…, ALLOWED…)."""
        self.counts[endpoint * _NO + outcome] += 1
        # bisect_left: the first bound >= seconds, Prometheus's "le".
        self.buckets[endpoint * _NB + bisect_left(BUCKETS, seconds)] += 1
        self.sums[endpoint] += seconds

    def store_error(self, endpoint: int) -> None:
        self.errors[endpoint] += 1

    def flush(self) -> None:
        counts, self.counts = self.counts, [0] * len(self.counts)
        buckets, self.buckets = self.buckets, [0] * len(self.buckets)
        sums, self.sums = self.sums, [0.0] * len(self.sums)
        errors, self.errors = self.errors, [0] * len(self.errors)
        for counter, n in zip(_check_children, counts, strict=True):
            if n:
                counter.inc(n)
        for e, histogram in enumerate(_duration_children):
            # A histogram child's bucket values (non-cumulative) and sum: what observe()
            # increments, here by many observations at once.
            values: list[Any] = histogram._buckets
            for b in range(_NB):
                if n := buckets[e * _NB + b]:
                    values[b].inc(n)
            if sums[e]:
                histogram._sum.inc(sums[e])
        for counter, n in zip(_error_children, errors, strict=True):
            if n:
                counter.inc(n)


CHECKS = CheckStats()


def record_outcome(endpoint: int, status: int, seconds: float) -> None:
    CHECKS.record(endpoint, OUTCOME_OF_STATUS.get(status, REJECTED), seconds)


class PipelineCounts:
    """Moves an auto-pipeline's batch and call counts into the counters, as increments."""

    def __init__(self, pipeline: AutoPipeline | None) -> None:
        self.pipeline = pipeline
        self.batches = pipeline.batches if pipeline else 0
        self.calls = pipeline.calls if pipeline else 0

    def flush(self) -> None:
        p = self.pipeline
        if p is None:
            return
        batches, calls = p.batches, p.calls
        if batches > self.batches:
            _batches.inc(batches - self.batches)
        if calls > self.calls:
            _calls.inc(calls - self.calls)
        self.batches, self.calls = batches, calls


class Cached:
    """A value read at most once per ``ttl_s`` (concurrent readers share one read)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.value: Any = None
        self.ok = False
        self.at = -1e18
        self._lock = asyncio.Lock()

    async def get(self, read: Any) -> Any:
        """The cached value, refreshed by awaiting ``read()`` when stale; raises what
        ``read`` raised (and keeps no stale value as current)."""
        async with self._lock:
            if time.monotonic() - self.at >= self.ttl_s:
                self.at = time.monotonic()
                try:
                    self.value, self.ok = await read(), True
                except BaseException:
                    self.value, self.ok = None, False
                    raise
            if not self.ok:
                raise LookupError("the last read failed")
            return self.value


class Scrape:
    """Per app: what the scrape reads from Redis and SQL, cached, and the flushes."""

    def __init__(
        self, ledger: Ledger, billing: Billing | None, outbox_alert_entries: int = 100_000
    ) -> None:
        self.ledger = ledger
        self.billing = billing
        self.outbox_alert_entries = outbox_alert_entries
        self.pipeline = PipelineCounts(ledger.pipeline)
        self.outbox = Cached(1.0)
        self.dead_letters = Cached(10.0)

    def flush(self) -> None:
        CHECKS.flush()
        self.pipeline.flush()

    async def outbox_status(self) -> list[dict[str, Any]]:
        """Per shard, as GET /v1/admin/outbox shows it; StoreUnavailable if Redis fails."""
        ledger = self.ledger

        async def read() -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = await store_call(
                outbox_status(ledger.redis, ledger.keys, ledger.clock()), 2.0
            )
            return result

        value: list[dict[str, Any]] = await self.outbox.get(read)
        return value

    async def billing_dead_letters(self) -> dict[str, int]:
        b = self.billing
        assert b is not None

        async def read() -> dict[str, int]:
            """Stripe events and notification deliveries given up (status ``dead``)."""
            async with asyncio.timeout(2.0):
                return {
                    "stripe_event": await b.events.count("dead"),
                    "notification": await b.notifications.count("dead"),
                }

        value: dict[str, int] = await self.dead_letters.get(read)
        return value

    async def families(self) -> list[Metric]:
        """The values read at scrape time, as metric families."""
        up = GaugeMetricFamily(
            "credit_sidecar_redis_up", "1 if Redis answered this scrape's outbox read"
        )
        out: list[Metric] = [up]
        try:
            shards = await self.outbox_status()
        except Exception:
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for name, field, doc in (
                ("credit_sidecar_outbox_length", "length", "Entries in the shard's outbox"),
                (
                    "credit_sidecar_outbox_unwritten",
                    "unwritten",
                    "Outbox entries not yet written to SQL",
                ),
                (
                    "credit_sidecar_writer_lag_seconds",
                    "lag_s",
                    "Age of the oldest outbox entry not yet written to SQL",
                ),
                (
                    "credit_sidecar_outbox_dead_letters",
                    "dead_letters",
                    "Outbox entries SQL refused, set aside (GET /v1/admin/outbox/dead-letters)",
                ),
            ):
                g = GaugeMetricFamily(name, doc, labels=["shard"])
                for s in shards:
                    g.add_metric([str(s["shard"])], float(s[field]))
                out.append(g)
            limit = self.outbox_alert_entries
            unwritten = sum(int(s["unwritten"]) for s in shards)
            out.append(
                GaugeMetricFamily(
                    "credit_sidecar_outbox_alert",
                    "1 while the outbox holds SIDECAR_OUTBOX_ALERT_ENTRIES entries not yet in "
                    "SQL or more (all shards)",
                    value=1.0 if unwritten >= limit else 0.0,
                )
            )
            out.append(
                GaugeMetricFamily(
                    "credit_sidecar_outbox_alert_entries",
                    "SIDECAR_OUTBOX_ALERT_ENTRIES: the unwritten entries that raise the alert",
                    value=float(limit),
                )
            )
        if self.billing is not None:
            sql = GaugeMetricFamily(
                "credit_sidecar_sql_up", "1 if SQL answered the billing dead-letter count"
            )
            out.append(sql)
            try:
                dead = await self.billing_dead_letters()
            except Exception:
                sql.add_metric([], 0)
            else:
                sql.add_metric([], 1)
                g = GaugeMetricFamily(
                    "credit_sidecar_billing_dead_letters",
                    "Stripe events and low-balance deliveries given up on (dead)",
                    labels=["kind"],
                )
                for kind, n in dead.items():
                    g.add_metric([kind], n)
                out.append(g)
        return out

    async def exposition(self) -> bytes:
        """The Prometheus text exposition of everything: this process's (or every worker's)
        counters, then the values read now."""
        self.flush()
        families = await self.families()
        return generate_latest(_Collectors([_counted(), _Fixed(families)]))


def _counted() -> Collector:
    if not MULTIPROCESS:
        return REGISTRY
    registry = CollectorRegistry(auto_describe=True)
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _Collectors(Collector):
    def __init__(self, parts: list[Collector]) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part.collect()
