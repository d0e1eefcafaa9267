"""The HTTP bench's report: the Markdown table with the ratios, and the PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import md_table, n


def _find(runs: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    return next((r for r in runs if r["target"].startswith(prefix)), None)


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    runs = result["runs"]
    bare = _find(runs, "bare")
    check = _find(runs, "sidecar POST /v1/check, 1 worker")
    check2 = _find(runs, "sidecar POST /v1/check, 2 workers")
    seeds = {b: _find(runs, f"seed design, {b}") for b in ("sqlite", "postgresql")}
    rb = result["redis_benchmark"]

    def div(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
        return round(a["per_s"] / b["per_s"], 2) if a and b and b["per_s"] else None

    pinned = result.get("pinned") or {}
    return {
        "check_1_worker / bare": div(check, bare),
        "check / bare, capacity per core at the same rate (each alone on a core)": pinned.get(
            "capacity_ratio_same_rate"
        ),
        "check / bare saturated, capacity per core": pinned.get("capacity_ratio_saturated_bare"),
        "check_2_workers / check_1_worker": div(check2, check),
        "check / seed sqlite": div(check, seeds["sqlite"]),
        "check / seed postgresql": div(check, seeds["postgresql"]),
        "evalsha deduct / set": round(rb["evalsha_deduct_per_s"] / rb["set_per_s"], 2),
    }


def render(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    rows = [
        [
            r["target"],
            n(r["per_s"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['p999_ms']:.2f}",
            f"{r['cpu_us_per_req']:.0f}" if r["cpu_us_per_req"] else "",
            "" if r["redis_cmds_per_req"] is None else f"{r['redis_cmds_per_req']:.2f}",
            "; ".join(r["checks"]),
        ]
        for r in result["runs"]
    ]
    header = ["target", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "CPU µs/req", "Redis cmds/req"]
    header.append("verified")
    rb = result["redis_benchmark"]
    su = result["sustained"]
    pinned_text = pinned_paragraph(result.get("pinned") or {})
    ratio_rows = [[k, "" if v is None else f"{v:.2f}x"] for k, v in ratios(result).items()]
    return "\n".join(
        [
            "# The HTTP hot path: sidecar vs bare handler vs seed design vs Redis",
            "",
            f"Run {result['started']} on one machine: {m['cpu_count']} CPUs ({m['cpu_model']}), "
            f"{m['python']}, {m['event_loop']}; busy before start: "
            f"{m['busy_before_start_pct']}% of one core. Load: wrk, 1 thread, "
            f"{cfg['connections']} connections, {cfg['seconds']:g} s per target after a "
            f"{cfg['warmup']:g} s warm-up; {cfg['accounts']:,} accounts. Client, servers, Redis "
            "and PostgreSQL share the same cores: every number is relative to this machine.",
            "",
            md_table(rows, header),
            "",
            "| ratio | |",
            "| --- | --- |",
            *[f"| {a} | {b} |" for a, b in ratio_rows],
            "",
            f"redis-benchmark ({rb['clients']} clients, pipeline {rb['pipeline']}, "
            f"{rb['calls']:,} calls each): SET {n(rb['set_per_s'])}/s, EVALSHA deduct.lua "
            f"{n(rb['evalsha_deduct_per_s'])}/s ({rb['spent']:,} credits spent, one per call).",
            "",
            sustained_paragraph(su),
            "",
            sustained_paragraph(result["sustained_paced"]) if "sustained_paced" in result else "",
            "",
            pinned_text,
            "",
            "CPU µs/req: CPU time of the server's processes (all workers, the outbox writer) "
            "and of Redis, divided by the requests served. Redis cmds/req: Redis's own "
            "command count (INFO commandstats: the commands a script runs count too) divided by "
            "the requests: a check is one round trip, one EVALSHA, inside which deduct.lua runs "
            "about a dozen commands; the writer's reads and acknowledgements add the rest. "
            "Every sidecar "
            "run is verified: the credits Redis spent equal the checks answered 2xx (warm-up "
            "included, give or take those in flight when wrk stopped), no balance below zero; "
            "the hot account allows exactly its credits; the seed's SQL holds one usage row per "
            "allowed check.",
            "",
        ]
    )


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if r["cpu_us_per_req"]]
    names = [r["target"].replace("sidecar ", "").replace(", ", "\n") for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6))
    ax1.barh(names, [r["per_s"] for r in runs], color="tab:blue")
    ax1.set_xlabel("requests/s")
    ax1.set_title("throughput")
    ax1.invert_yaxis()
    width = 0.27
    ys = range(len(runs))
    for i, (key, label) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))):
        ax2.barh(
            [y + (i - 1) * width for y in ys], [r[key] for r in runs], height=width, label=label
        )
    ax2.set_yticks(list(ys))
    ax2.set_yticklabels(names)
    ax2.set_xscale("log")
    ax2.set_xlabel("latency, ms (log)")
    ax2.set_title("latency percentiles")
    ax2.invert_yaxis()
    ax2.legend()
    fig.suptitle(f"credit-sidecar HTTP bench, {result['started']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pinned_paragraph(pn: dict[str, Any]) -> str:
    if "check" not in pn:
        return f"Capacity per core: {pn.get('skipped', 'not measured')}."
    c, b, bs = pn["check"], pn["bare"], pn["bare_same_rate"]
    return (
        "Each alone on core 0 (wrk, Redis and the writer on the other core; bench/pinned.py): "
        f"the sidecar worker served {n(c['per_s'])} checks/s using {c['cpu_pct']:.0f}% of its "
        f"core, {c['cpu_us_per_req']:.1f} µs CPU per check ({c['verified']}); it cannot be "
        "driven harder here, the other core being full. The bare handler paced to the same "
        f"rate ({n(bs['per_s'])} req/s) used {bs['cpu_us_per_req']:.1f} µs per request, and "
        f"saturated ({n(b['per_s'])} req/s, {b['cpu_pct']:.0f}% of its core) "
        f"{b['cpu_us_per_req']:.1f} µs. Capacity per core, check / bare: "
        f"{pn['capacity_ratio_same_rate']:.2f}x at the same rate, "
        f"{pn['capacity_ratio_saturated_bare']:.2f}x against the saturated bare handler."
    )


def keeping_up(su: dict[str, Any]) -> str:
    g = su.get("backlog_growth_per_s")
    if g is None:
        return ""
    # Below 2% of the input rate: noise of batch-sized steps, not a trend.
    if g <= 0.02 * su["checks_per_s"]:
        return (
            f"Over the second half the backlog did not grow ({g:+,.0f} entries/s): "
            "the writer kept up."
        )
    return (
        f"Over the second half the backlog grew by {g:,.0f} entries/s: the writer, sharing the "
        "cores with wrk, Redis and the worker, did NOT keep up at this rate, and the lag grows "
        "for as long as the load lasts."
    )


def sustained_paragraph(su: dict[str, Any]) -> str:
    load = (
        f"paced below the peak (wrk's connections wait between requests, aiming at three "
        f"quarters of the peak, {n(su['offered_per_s'])}/s)"
        if su.get("offered_per_s")
        else "flat out"
    )
    return (
        f"Sustained, {load}: {su['seconds']:g} s against the sidecar as deployed (1 worker, the "
        f"writer in its own process, SQLite): {n(su['checks_per_s'])} checks/s; the outbox "
        f"backlog peaked at {su['max_unwritten']:,} entries and its lag at "
        f"{su['max_lag_s']:.1f} s, and after the load the writer drained it in "
        f"{su['drained_in_s']:g} s with all {su['sql_usage_rows']:,} checks in SQL. "
        + keeping_up(su)
    )
