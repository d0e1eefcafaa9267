"""The A/B report of bench/compare.py: the summary table (medians and ratios), the paired
per-round ratios with their bootstrap intervals, every round, the machine's load and the
verification."""

from __future__ import annotations

import json
from typing import Any

from bench.harness import md_table


def render(r: dict[str, Any]) -> str:
    b, h = r["sides"]["base"], r["sides"]["head"]
    c, m = r["config"], r["machine"]
    bs, hs = b["summary"], h["summary"]

    def spread(s: dict[str, float]) -> str:
        return f"{(s['max_per_s'] - s['min_per_s']) / s['median_per_s'] * 100:.1f}%"

    def row(name: str, key: str, fmt: str, ratio: str | None = None) -> list[str]:
        x, y = bs[key], hs[key]
        return [name, format(x, fmt), format(y, fmt), ratio or (f"{y / x:.3f}" if x else "-")]

    def pair_line(what: str, p: dict[str, Any]) -> str:
        lo, hi = p["ci95"]
        return (
            f"head/base {what} round by round: {', '.join(f'{x:.3f}' for x in p['by_round'])}; "
            f"geometric mean **{p['geomean']:.3f}** (95% bootstrap interval {lo:.3f}-{hi:.3f})."
        )

    head_name = f"`{h['commit']}`" + (" + uncommitted" if h["uncommitted"] else "")
    summary_rows = [
        row("req/s (median of rounds)", "median_per_s", ",.0f", f"**{r['ratio_per_s']:.3f}**"),
        ["req/s spread (max-min)/median", spread(bs), spread(hs), ""],
        row("p50 ms (median)", "median_p50_ms", ".2f"),
        row("p99 ms (median)", "median_p99_ms", ".2f"),
        row("sidecar CPU µs/check", "median_server_cpu_us", ".1f"),
        row(
            "Redis CPU µs/check (used_cpu)",
            "median_redis_cpu_us",
            ".1f",
            f"**{r['ratio_redis_cpu']:.3f}**",
        ),
        row("Redis µs/check inside scripts (wall)", "median_redis_cmd_us", ".1f"),
        row("Redis commands/check (scripts' included)", "redis_cmds_per_check", ".2f"),
        row("AOF bytes/check", "aof_bytes_per_check", ",.0f"),
    ]
    rounds = [
        [
            str(x["round"]),
            x["side"],
            f"{x['per_s']:,.0f}",
            f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f}",
            f"{x['server_cpu_us']:.1f}",
            f"{x['redis_cpu_us']:.1f}",
            f"{x['redis_cmd_us']:.1f}",
            f"{x['other_pct']:.0f}%",
            f"{x['idle_side_pct']:.1f}%",
            f"{x['loadavg']:.2f}",
        ]
        for pair in zip(b["rounds"], h["rounds"], strict=True)
        for x in (pair if pair[0]["round"] % 2 else pair[::-1])
    ]
    return "\n".join(
        [
            f"# `/v1/check` A/B: `{b['ref']}` (`{b['commit']}`) vs {head_name}",
            "",
            f"{r['started']}, {m['cpu_count']} cores ({m['cpu_model']}), {m['python']}. "
            f"`wrk` 1 thread, {c['connections']} connections, {c['accounts']} accounts; "
            f"{c['rounds']} rounds of {c['seconds']:g} s per side after a {c['warmup']:g} s "
            "warm-up, in ABBA order; each side its own redis-server and `sidecar serve` "
            "(1 worker, writer off), started from its own tree on the same venv."
            + (
                f" Head's accounts are created with `{json.dumps(c['head_account'])}`."
                if c.get("head_account")
                else ""
            )
            + (f" Head's plans: `{json.dumps(c['head_plans'])}`." if c.get("head_plans") else "")
            + (
                f" Head's checks carry a named token with scopes `{c['head_token']}`."
                if c.get("head_token")
                else ""
            ),
            "",
            md_table(summary_rows, ["", f"base `{b['commit']}`", f"head {head_name}", "head/base"]),
            "",
            pair_line("req/s", r["paired_per_s"]),
            "",
            pair_line("sidecar + Redis CPU µs/check", r["paired_cpu_us"]),
            "",
            pair_line("Redis CPU µs/check", r["paired_redis_cpu_us"]),
            "",
            md_table(
                rounds,
                [
                    "round",
                    "side",
                    "req/s",
                    "p50 / p99 ms",
                    "sidecar CPU µs/check",
                    "Redis CPU µs/check",
                    "Redis µs in scripts",
                    "others' CPU (% of a core)",
                    "idle side's CPU",
                    "load avg",
                ],
            ),
            "",
            f"Machine load: busy {m['busy_before_start_pct']:g}% of one core before the start; "
            f"load average {' '.join(map(str, m['loadavg_before']))} before, "
            f"{' '.join(map(str, m['loadavg_after']))} after (shared machine: other processes "
            "run meanwhile; the interleaving spreads them over both sides).",
            "",
            f"Verified: base {b['verified']}; head {h['verified']}.",
            "",
        ]
    )
