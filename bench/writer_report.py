"""The writer scenario's report: ``writer.md`` (for people) from the result that is also
written as ``writer.json``, and the "What is measured" lines both carry."""

from __future__ import annotations

from typing import Any

from bench.checkrate import GRANT
from bench.harness import cpu_cell, md_table, n, noise_note

GOAL = 2.0  # from the issue: sustained writer throughput >= 2x the peak check rate


def method(config: dict[str, Any], cpu_count: int, http: dict[str, str], batch: int) -> list[str]:
    c = config
    when = "always" if c["profile"] == "always" else "when a backend misses the goal"
    return [
        "Same machine, same run; Redis, PostgreSQL, SQLite and the bench share its "
        f"{cpu_count} CPUs. The event loop is uvloop, as in `credit-sidecar serve`.",
        f"Check rate: closed loop, {c['concurrency']} concurrent callers, each deducting 1 "
        f"credit from a random account of {c['accounts']:,} (never refused: every account "
        f"has {GRANT:,} credits); {c['warmup_s']:g} s warm-up excluded, then "
        f"{c['measure_s']:g} s measured. Every check is a real `deduct.lua` call that "
        "appends to the outbox.",
        f"HTTP check rate: {http['server']}; {http['client']}. "
        "It is therefore a lower bound of what the server alone can do.",
        "Writer: the filled outbox is saved with DUMP and, before each drain, RESTOREd "
        "(no consumer group) next to an empty, migrated database (SQLite: new file, WAL, "
        "synchronous=FULL; PostgreSQL: truncated tables). `OutboxWriter.run` with a Redis "
        "client of its own (4 connections, decoded replies, as `serve` gives it) (lease, "
        "XREADGROUP, one SQL transaction of idempotent upserts per batch, XACK, trim once "
        "a second) drains it; txns/s are counted from the end of the warm-up (the "
        "account setup entries plus max(2 batches, 5% of the usage transactions)) to the "
        "last batch, so the measured entries are all usage transactions.",
        "Shards: the outbox is split by account into `SIDECAR_SHARDS` streams, each "
        "written by its own task of the one writer (one SQL transaction in flight per "
        "shard); a shard count is a deployment setting, and each is filled and drained "
        "separately. The bench process tunes its garbage collector before the drains as "
        "`credit-sidecar writer` does (`tune_gc`).",
        "Writer and check load are measured separately above (the writer has the machine "
        "to itself); the section on the writer under check load runs them together.",
        "Profiles: none (`--profile never`)."
        if c["profile"] == "never"
        else f"Profiles ({when}): one extra drain of half the usage transactions at batch "
        f"{batch} under py-spy (sampling, all threads, `--nonblocking`); its throughput is not "
        "used anywhere else.",
        "Verification after every drain: SQL transaction count = outbox transaction count; "
        "per account SQL sum(amount) and count = Redis balance and seq (= the credits the "
        "fill deducted); `reconcile()` finds no difference; 0 unwritten, 0 dead letters. "
        "A failure aborts the bench.",
    ]


def render(result: dict[str, Any]) -> str:
    m, c, cfg = result["machine"], result["check"], result["config"]
    peak = c["peak_per_s"]
    pg = m["postgresql"]
    uncommitted = m["code"]["uncommitted"]
    cpus = [c["direct"]["cpu"], c["http"]["cpu"]]
    cpus += [d["cpu"] for d in result["writer"]] + [x["cpu"] for x in result["mixed"]]
    out = [
        "# Outbox writer throughput vs check rate",
        "",
        f"Run {result['started']} on one machine: {m['cpu_count']} CPUs ({m['cpu_model']}), "
        f"{m['memory_gb']} GB, {m['python']}, {m['event_loop']}, Redis {m['redis']}, "
        f"SQLite {m['sqlite']}, PostgreSQL {pg['server_version']} (fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']}).",
        "",
        f"Goal: sustained writer throughput >= {GOAL:g}x the peak check rate.",
        "",
    ]
    if cfg.get("quick"):
        out += ["**Quick run** (`--quick`, a smoke test): too small to quote its numbers.", ""]
    out += [
        f"Code: commit {m['code']['commit']}"
        + (
            f" with uncommitted changes in {len(uncommitted)} files (see writer.json)"
            if uncommitted
            else ""
        )
        + "; "
        + ", ".join(f"`{f}` {h}" for f, h in m["code"]["sha256"].items())
        + " (sha256 prefixes).",
        "",
        noise_note(m["busy_before_start_pct"], cpus),
        "",
        "## Check rate (what the writer must keep up with)",
        "",
        md_table(
            [
                [
                    "`Ledger.deduct` direct",
                    n(c["direct"]["per_s"]),
                    f"{c['concurrency']} asyncio tasks, one process",
                    cpu_cell(c["direct"]["cpu"]),
                ],
                [
                    "`POST /v1/check` HTTP",
                    n(c["http"]["per_s"]),
                    f"{c['concurrency']} concurrent requests, server in a child process",
                    cpu_cell(c["http"]["cpu"]),
                ],
            ],
            ["path", "checks/s", "load", "CPU (% of one core)"],
        ),
        "",
        f"Peak check rate: **{n(peak)}/s** ({c['peak_from']}); goal for the writer: "
        f"**{n(GOAL * peak)} txns/s**.",
        "",
        *_writer(result),
        *_mixed(result["mixed"]),
        "## What is measured",
        "",
        *[f"- {line}" for line in result["method"]],
    ]
    if result["profiles"]:
        out += ["", "## Where the writer's time goes", ""]
        for p in result["profiles"]:
            out += _profile(p)
    return "\n".join(out).rstrip() + "\n"


def _writer(result: dict[str, Any]) -> list[str]:
    fill, census, peak = result["fill"], result["census"], result["check"]["peak_per_s"]
    http = result["check"]["http"]["per_s"]
    rows = [
        [
            d["backend"],
            str(d["batch_size"]),
            str(d["shards"]),
            n(d["txns_per_s"]),
            n(peak),
            f"{d['ratio']:.2f}x",
            "yes" if d["goal_met"] else "**no**",
            f"{d['txns_per_s'] / http:.2f}x",
            f"{d['total_seconds']:.1f}",
            cpu_cell(d["cpu"]),
            "ok" if d["verified"] else "FAILED",
        ]
        for d in result["writer"]
    ]
    header = ["backend", "batch", "shards", "writer txns/s", "peak checks/s", "writer/check"]
    header += [f">= {GOAL:g}x", "writer/HTTP check", "drain s", "CPU (% of one core)", "verified"]
    goals = ", ".join(
        f"{b}: {'yes' if g['met'] else 'no'} (best {g['best_ratio']:.2f}x at batch "
        f"{g['best_batch']}, {g['best_shards']} shard(s)"
        + (
            f"; with 1 shard {g['best_ratio_one_shard']:.2f}x)"
            if g.get("best_ratio_one_shard") is not None and g["best_shards"] != 1
            else ")"
        )
        for b, g in result["goal"].items()
    )
    return [
        "## Writer throughput",
        "",
        f"{fill['usage_txns']:,} usage transactions over {result['config']['accounts']:,} "
        f"accounts (outbox: {census['entries']:,} entries incl. {census['setup_entries']:,} "
        f"setup entries; the fill itself ran at {n(fill['per_s'])} deductions/s), drained by "
        "`OutboxWriter.run` into an empty database; throughput after warm-up. writer/check is "
        "against the peak check rate; writer/HTTP check against the HTTP rate, for reference.",
        "",
        md_table(rows, header),
        "",
        f"Goal met: {goals}.",
        "",
    ]


def _mixed(mixed: list[dict[str, Any]]) -> list[str]:
    if not mixed:
        return []
    first = mixed[0]
    rows = [
        [
            x["backend"],
            x["wiring"],
            n(x["checks_per_s"]),
            n(x["writer_txns_per_s"]),
            f"{x['backlog_at_end']:,}",
            f"{x['backlog_growth_per_s']:+,.0f}",
            "yes" if x["kept_up"] else "**no**",
            cpu_cell(x["cpu"]),
        ]
        for x in mixed
    ]
    header = ["backend", "writer runs", "checks/s", "writer txns/s", "backlog at end"]
    header += ["backlog growth/s", "kept up", "CPU (% of one core)"]
    return [
        "## Writer under peak check load",
        "",
        f"The writer (batch {first['batch_size']}) runs while {first['concurrency']} tasks call "
        "`Ledger.deduct` back to back, from an empty outbox: either inside the real app "
        "(`create_app` with `SIDECAR_WRITER=inline`, no HTTP listener), where the load drives "
        "the app's own ledger, so the writer shares the request handlers' event loop (one "
        "core); or in its own process (`credit-sidecar writer`, as `serve` runs it with "
        "`SIDECAR_WRITER=process`) while the load runs in the bench; both rates are measured "
        f"over the same {first['window_s']:.0f} s window (after {first['warmup_s']:g} s of "
        "warm-up), then the backlog is drained and verified like every run. Kept up = the "
        "backlog at the end of the window is at most two batches plus the in-flight checks.",
        "",
        md_table(rows, header),
        "",
    ]


def _profile(p: dict[str, Any]) -> list[str]:
    return [
        f"### {p['backend']}, batch {p['batch_size']} ({p['tool']}; "
        f"{n(p['txns_per_s'])} txns/s under the profiler)",
        "",
        "Threads busy (% of wall time): " + ", ".join(f"{k} {v}%" for k, v in p["threads"].items()),
        "",
        md_table(
            [[k, f"{v}%"] for k, v in p["main_by_phase"].items()],
            ["main thread, by writer phase (inclusive)", "share"],
        ),
        "",
        md_table(
            [[k, f"{v}%"] for k, v in p["main_by_owner"].items()],
            ["main thread, by code owner (self time)", "share"],
        ),
        "",
        md_table(
            [[f"`{k}`", f"{v}%"] for k, v in p["top_self"]],
            ["hottest leaf functions (main thread)", "share"],
        ),
        "",
        f"Raw samples: `{p['raw_file']}`.",
        "",
    ]
