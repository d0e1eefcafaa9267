"""Free TCP ports for the tests' servers, each pytest-xdist worker from a range of its own.

The kernel's own choice (bind to port 0) can hand two workers the same port one after the other
while the first test's server is still starting; with SO_REUSEPORT (``serve --workers``) both
would even bind it and share its connections. So a worker takes ports only from its range, below
the kernel's ephemeral range (32768 and up, where bind-to-0 and outgoing connections take theirs),
and never hands one out twice.
"""

from __future__ import annotations

import os
import random
import socket

BASE, PER_WORKER, WORKERS = 16_000, 1_600, 10
_given: set[int] = set()


def worker_index() -> int:
    """0 outside xdist, else N of its worker id ``gwN``."""
    n = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return int(n) % WORKERS if n.isascii() and n.isdigit() else 0


def free_port() -> int:
    lo = BASE + worker_index() * PER_WORKER
    for _ in range(500):
        port = random.randrange(lo, lo + PER_WORKER)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {lo}-{lo + PER_WORKER - 1}")
