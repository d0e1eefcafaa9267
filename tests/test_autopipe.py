"""Auto-pipelining of script calls: concurrent calls share round trips, every caller gets its
own reply (or its own error), a flushed script cache is ridden out, a caller that gives up
does not disturb the others."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from sidecar.autopipe import AutoPipeline

ECHO = "if ARGV[1] == 'fail' then return redis.error_reply('nope ' .. KEYS[1]) end return ARGV[1]"


async def test_concurrent_calls_share_pipelines_and_get_their_own_replies(redis: Redis) -> None:
    script = redis.register_script(ECHO)
    pipe = AutoPipeline(redis, max_batch=32)
    replies = await asyncio.gather(*(pipe.run(script, [f"k{i}"], [str(i)]) for i in range(200)))
    assert replies == [str(i).encode() for i in range(200)]
    assert pipe.calls == 200 and pipe.batches <= 200 // 32 + 2


async def test_an_error_reply_fails_only_its_own_call(redis: Redis) -> None:
    script = redis.register_script(ECHO)
    pipe = AutoPipeline(redis)
    results = await asyncio.gather(
        pipe.run(script, ["a"], ["ok"]),
        pipe.run(script, ["b"], ["fail"]),
        pipe.run(script, ["c"], ["ok2"]),
        return_exceptions=True,
    )
    assert results[0] == b"ok" and results[2] == b"ok2"
    assert isinstance(results[1], ResponseError) and "nope b" in str(results[1])


async def test_a_flushed_script_cache_is_ridden_out_with_eval(redis: Redis) -> None:
    script = redis.register_script(ECHO)
    pipe = AutoPipeline(redis)
    assert await pipe.run(script, ["a"], ["x"]) == b"x"
    await redis.script_flush()
    replies = await asyncio.gather(*(pipe.run(script, ["a"], [str(i)]) for i in range(10)))
    assert replies == [str(i).encode() for i in range(10)]


async def test_a_caller_that_gives_up_does_not_disturb_the_others(redis: Redis) -> None:
    script = redis.register_script(ECHO)
    pipe = AutoPipeline(redis)
    doomed = asyncio.ensure_future(pipe.run(script, ["a"], ["gone"]))
    kept = asyncio.ensure_future(pipe.run(script, ["b"], ["kept"]))
    doomed.cancel()
    assert await kept == b"kept"
    with pytest.raises(asyncio.CancelledError):
        await doomed


async def test_a_store_call_past_its_deadline_is_store_unavailable() -> None:
    """A hung Redis call ends as StoreUnavailable (503, or the failure policy at the proxy
    endpoints), never as a bare timeout."""
    from sidecar.errors import StoreUnavailable
    from sidecar.ledger import store_call

    with pytest.raises(StoreUnavailable):
        await store_call(asyncio.sleep(10), deadline_s=0.05)
