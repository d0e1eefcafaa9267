"""Micro-benchmark: decoding a deduct script's reply into its result, on every check.

``before``: the positional reads as ledger.py did them inline until the decoders existed
(status decoded to text first). ``after``: :func:`sidecar.ledger.replies.deduct`. Both on the reply
as hiredis hands it over (bytes, ints), for the three answers a check gets most.

    .venv/bin/python -m bench.replies [--number 200000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from typing import Any

from sidecar.ledger import replies
from sidecar.ledger.results import Allowed, DeductResult, Insufficient, RateLimited, Revoked
from sidecar.redis.client import text as _text

REPLIES: dict[str, list[Any]] = {
    "allowed": [b"ok", b"tx_0123456789abcdef0123456789abcdef", 9_000, 10, 0, 0],
    "insufficient": [b"insufficient", 5, 10],
    "rate_limited": [b"rate_limited", 250],
}


def before(reply: Any) -> DeductResult:
    status = _text(reply[0])
    if status == "ok":
        return Allowed(
            _text(reply[1]), int(reply[2]), int(reply[3]), bool(reply[4]), bool(reply[5])
        )
    if status == "insufficient":
        return Insufficient(int(reply[1]), int(reply[2]))
    if status == "revoked":
        return Revoked()
    return RateLimited(int(reply[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--number", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=15)
    a = p.parse_args()
    print(f"{'reply':<14}{'before ns':>11}{'after ns':>11}{'after/before':>14}")
    for name, reply in REPLIES.items():
        assert before(reply) == replies.deduct(reply, 1)
        runs: dict[str, list[float]] = {"before": [], "after": []}
        # Interleaved, so that a busy neighbour slows both alike.
        for _ in range(a.repeat):
            for label, fn in (("before", before), ("after", replies.deduct)):
                t = timeit.timeit(lambda fn=fn, r=reply: fn(r), number=a.number)
                runs[label].append(t / a.number * 1e9)
        b, n = statistics.median(runs["before"]), statistics.median(runs["after"])
        print(f"{name:<14}{b:>11.0f}{n:>11.0f}{n / b:>14.2f}")


if __name__ == "__main__":
    main()
