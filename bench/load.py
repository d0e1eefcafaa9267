"""Driving load: a server process under test (up when /healthz answers) and one ``wrk`` run
against it, whose scripts (bench/wrk/) print their counts and latency percentiles as JSON."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.harness import BenchFailure

WRK_DIR = Path(__file__).parent / "wrk"


class Server:
    """A server process (and its children) on a free port, up when /healthz answers."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], port: int, cwd: Path | None = None
    ) -> None:
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.cwd = cwd  # `python -m` puts the working directory first on sys.path
        self.proc: subprocess.Popen[bytes] | None = None
        self.probe_ok = 0  # 2xx of unmeasured probe runs (they spend credits too)
        # Requests that may have been served after wrk stopped counting: its connections,
        # summed over every wrk run against this server.
        self.in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [] if self.proc is None else self.tree_of(self.proc.pid)

    @staticmethod
    def tree_of(pid: int) -> list[int]:
        """``pid`` and its descendants."""
        found, todo = [pid], [pid]
        while todo:
            out = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True)
            kids = [int(p) for p in out.stdout.split()]
            found += kids
            todo += kids
        return found

    async def __aenter__(self) -> Server:
        # A long-lived child, polled below; Popen itself returns at once.
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            self.argv, env=self.env, stdout=subprocess.DEVNULL, cwd=self.cwd
        )
        for _ in range(600):
            if self.proc.poll() is not None:
                raise BenchFailure(f"{self.name} exited with {self.proc.returncode}")
            if _healthy(self.url):
                return self
            await asyncio.sleep(0.05)
        raise BenchFailure(f"{self.name} did not come up")

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


def wrk(
    url: str,
    script: str,
    args: list[str],
    connections: int,
    seconds: float,
    taskset: str | None = None,
) -> dict[str, Any]:
    cmd = ["taskset", "-c", taskset] if taskset else []
    cmd += ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    # A fresh tag per wrk run: idempotency keys never repeat across runs (a repeat is a replay).
    tag = f"r{time.time_ns():x}"
    cmd += ["-s", str(WRK_DIR / script), url, "--", tag, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"^JSON (\{.*\})$", out, re.M)
    if not m:
        raise BenchFailure(f"wrk printed no result:\n{out}")
    result: dict[str, Any] = json.loads(m.group(1))
    return result
