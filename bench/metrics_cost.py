"""What the metrics and the request id add to each check, in microseconds of CPU.

Times, in a child process per mode (prometheus-client picks its value class at import:
one process, or ``PROMETHEUS_MULTIPROC_DIR`` as ``serve --workers N`` sets it):

- ``record``: what a check handler adds: two ``perf_counter`` calls (timed alone too) and
  ``metrics.CHECKS.record`` (a list slot, a bisect into the latency buckets, a float add);
- ``flush``: moving 10,000 checks' counts into prometheus-client (every scrape; every second
  in a worker of ``serve --workers N``), per check at 10,000 checks/s;
- ``prometheus direct``: what calling prometheus-client on every check would cost instead
  (``Counter.inc`` and ``Histogram.observe`` on pre-bound children);
- ``request id middleware``: the middleware through which every request passes (reads
  ``X-Request-Id`` or generates one, sets the context variable, echoes the header), called
  directly and through a partial as aiohttp chains middlewares, against the bare handler;
- ``check wrapper``: what the ``/v1/check`` handler does for the metrics (``perf_counter``,
  ``try``, the outcome of the response's status, ``record``) around an empty handler.

Each figure is the best of several repeats of N calls, minus an empty loop of the same shape.
Writes ``bench/results/metrics.md`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPEATS = 7
CPU_PER_CHECK_US = 48.5  # bench/results/http.md: a worker alone on a core, per POST /v1/check


def best(fn: Callable[[int], float], n: int) -> float:
    """Microseconds per iteration: the best of REPEATS runs of ``fn(n)`` (seconds)."""
    return min(fn(n) for _ in range(REPEATS)) / n * 1e6


def measure() -> dict[str, float]:
    from functools import partial, update_wrapper
    from time import perf_counter

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from sidecar.runtime import metrics
    from sidecar.runtime.logs import request_id_middleware

    checks = metrics.CHECKS
    n = 200_000

    def empty(n: int) -> float:
        t0 = perf_counter()
        for _ in range(n):
            t = perf_counter()
            _ = perf_counter() - t
        return perf_counter() - t0

    def record(n: int) -> float:
        t0 = perf_counter()
        for i in range(n):
            t = perf_counter()
            checks.record(i & 3, i % 5, perf_counter() - t)
        return perf_counter() - t0

    def nothing(n: int) -> float:
        t0 = perf_counter()
        for i in range(n):
            _ = (i & 3, i % 5)
        return perf_counter() - t0

    registry = CollectorRegistry()
    counter = Counter("bench_checks", "x", ["endpoint", "outcome"], registry=registry).labels(
        "check", "allowed"
    )
    hist = Histogram("bench_duration", "x", ["endpoint"], buckets=metrics.BUCKETS).labels("check")

    def direct(n: int) -> float:
        t0 = perf_counter()
        for _ in range(n):
            t = perf_counter()
            counter.inc()
            hist.observe(perf_counter() - t)
        return perf_counter() - t0

    loop_us = best(nothing, n)
    empty_us = best(empty, n)
    out = {
        "record": best(record, n) - loop_us,
        "perf_counter pair (in record)": empty_us,
        "prometheus direct": best(direct, n) - loop_us,
    }
    checks.flush()

    def flush_10k(_: int) -> float:
        for i in range(10_000):
            checks.record(i & 3, i % 5, 0.0004 * (i % 7))
        t0 = perf_counter()
        checks.flush()
        return perf_counter() - t0

    flush_us = min(flush_10k(0) for _ in range(REPEATS)) * 1e6
    out["flush of 10k checks (total)"] = flush_us
    out["flush, per check"] = flush_us / 10_000

    middleware = request_id_middleware("X-Request-Id")
    with_id = make_mocked_request("POST", "/v1/check", headers={"X-Request-Id": "req-7f3a"})
    without_id = make_mocked_request("POST", "/v1/check")

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    ok = web.Response(status=200)

    def respond() -> web.Response:
        return ok

    async def inner(request: web.Request) -> web.Response:
        return respond()

    async def wrapper(request: web.Request) -> web.Response:  # the shape of routes.check
        started = perf_counter()
        try:
            pass  # authorize, body, deduct
        except Exception:
            checks.record(metrics.CHECK, metrics.ERROR, perf_counter() - started)
            raise
        response = respond()
        metrics.record_outcome(metrics.CHECK, response.status, perf_counter() - started)
        return response

    def timed(call: Callable[[], Awaitable[Any]]) -> Callable[[int], float]:
        def run(n: int) -> float:
            async def go() -> float:
                t0 = perf_counter()
                for _ in range(n):
                    await call()
                return perf_counter() - t0

            return asyncio.run(go())

        return run

    bare = best(timed(lambda: handler(with_id)), n // 4)
    out["request id middleware (id given)"] = (
        best(timed(lambda: middleware(with_id, handler)), n // 4) - bare
    )
    out["request id middleware (id generated)"] = (
        best(timed(lambda: middleware(without_id, handler)), n // 4) - bare
    )
    # As aiohttp calls it: through the cached chain of partials it builds per handler.
    chained = update_wrapper(partial(middleware, handler=handler), handler)
    out["request id middleware (as aiohttp chains it)"] = (
        best(timed(lambda: chained(with_id)), n // 4) - bare
    )
    out["check wrapper"] = best(timed(lambda: wrapper(with_id)), n // 4) - best(
        timed(lambda: inner(with_id)), n // 4
    )
    return out


def child(mode: str) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with tempfile.TemporaryDirectory() as d:
        if mode == "multiprocess":
            env["PROMETHEUS_MULTIPROC_DIR"] = d
        out = subprocess.run(
            [sys.executable, "-m", "bench.metrics_cost", "--child"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def report(results: dict[str, dict[str, float]]) -> str:
    modes = list(results)
    lines = [
        "# Metrics: cost on the hot path",
        "",
        (__doc__ or "").strip(),
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}. `python -m bench.metrics_cost`.",
        "",
        "| µs per call | " + " | ".join(modes) + " |",
        "| --- | " + " | ".join("---" for _ in modes) + " |",
    ]
    for key in results[modes[0]]:
        lines.append(f"| {key} | " + " | ".join(f"{results[m][key]:.3f}" for m in modes) + " |")
    lines += ["", "Added to each check:", ""]
    for m in modes:
        r = results[m]
        middleware = r["request id middleware (as aiohttp chains it)"] + r["flush, per check"]
        check = r["check wrapper"] + middleware
        proxy = r["record"] + middleware
        lines.append(
            f"- {m}: `POST /v1/check` **{check:.2f} µs** (wrapper with record, middleware, "
            f"flush), the proxy auth endpoints **{proxy:.2f} µs** (record, middleware, flush): "
            f"{check / CPU_PER_CHECK_US * 100:.1f}% and {proxy / CPU_PER_CHECK_US * 100:.1f}% "
            f"of the {CPU_PER_CHECK_US} µs of CPU a check takes (bench/results/http.md). "
            f"Calling prometheus-client on every check would have cost "
            f"{r['prometheus direct']:.2f} µs for the counting alone, instead of "
            f"{r['record']:.2f}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    results = {mode: child(mode) for mode in ("one process", "multiprocess")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (args.out / "metrics.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
