"""Micro-benchmark: packing one auto-pipelined batch of script calls (sidecar/redis/autopipe.py).

``before``: the batch packed in one go when it is sent, as it was until each call was packed
alone (one bad call failed the whole batch). ``after``: each call packed as it joins the batch
(``AutoPipeline.run``), the batch joined from the packed calls when it is sent. Both include
building the command tuples; the calls carry a deduct's keys and arguments.

    .venv/bin/python -m bench.packing [--batch 32] [--repeat 21]
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from typing import Any

import hiredis

from sidecar.redis.autopipe import _Call, _payload

SHA = "0123456789abcdef0123456789abcdef01234567"


def calls(n: int) -> list[tuple[list[str], list[Any]]]:
    out = []
    for i in range(n):
        a = f"acct-{i}"
        keys = [f"cs:{{0}}:{k}:{a}" for k in "aodh"] + ["cs:{0}:due", "cs:{0}:outbox"]
        keys += [f"cs:{{0}}:i:{a}/req-{i}", f"cs:{{0}}:u:{a}/tx_{i:032x}", "cs:{0}:events"]
        args: list[Any] = [a, 1_800_000_000_000, f"tx_{i:032x}", 86_400_000, 1, f"req-{i}"]
        args += ["GET /v1/things", "", "key_0123456789abcdef", "default", "", "", ""]
        out.append((keys, args))
    return out


def before(batch: list[tuple[list[str], list[Any]]]) -> bytes:
    pending = []
    for keys, args in batch:  # as AutoPipeline.run did, once per call
        pending.append(_Call(None, keys, args, None, b""))  # type: ignore[arg-type]
    # as the batch was sent
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", SHA, len(c.keys), *c.keys, *c.args) for c in pending
    ]
    return b"".join([hiredis.pack_command(c) for c in commands])


def after(batch: list[tuple[list[str], list[Any]]]) -> bytes:
    pending = []
    for keys, args in batch:  # as AutoPipeline.run does, once per call
        command: Any = ("EVALSHA", SHA, len(keys), *keys, *args)
        pending.append(_Call(None, keys, args, None, hiredis.pack_command(command)))  # type: ignore[arg-type]
    return _payload(pending)  # as the batch is sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=21)
    opts = parser.parse_args()
    batch = calls(opts.batch)
    assert before(batch) == after(batch)
    number = 5_000
    per: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(opts.repeat):  # interleaved: a busy moment of the machine hits both
        for name, fn in (("before", before), ("after", after)):
            t = timeit.timeit(lambda fn=fn: fn(batch), number=number)  # type: ignore[misc]
            per[name].append(t / number * 1e6)
    for name, us in per.items():
        print(
            f"{name:6}  {opts.batch} calls: min {min(us):6.2f} µs per batch "
            f"({min(us) / opts.batch * 1000:.0f} ns per call), median {statistics.median(us):.2f}"
        )


if __name__ == "__main__":
    main()
