"""Auto-pipelining of script calls: concurrent calls share round trips, every caller gets its
own reply (or its own error), a flushed script cache is ridden out, a caller that gives up
does not disturb the others."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import DataError, ResponseError

from sidecar.redis.autopipe import AutoPipeline

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
    from sidecar.ledger.redis_calls import store_call

    with pytest.raises(StoreUnavailable):
        await store_call(asyncio.sleep(10), deadline_s=0.05)


async def test_a_call_that_cannot_be_packed_fails_alone_and_the_batch_goes_on(
    redis: Redis,
) -> None:
    """Each call is packed as it joins: a lone surrogate (a non-UTF-8 byte decoded with
    surrogateescape) or an argument of a type Redis cannot take fails its own call with
    DataError, and the concurrent calls in the same batch are answered."""
    script = redis.register_script(ECHO)
    pipe = AutoPipeline(redis)
    bad: list[Any] = ["x\udcffy", None, True, object()]
    results = await asyncio.gather(
        *(pipe.run(script, [f"k{i}"], [str(i)]) for i in range(10)),
        *(pipe.run(script, ["bad"], [arg]) for arg in bad),
        pipe.run(script, ["bad-key-\udcff"], ["ok"]),
        *(pipe.run(script, [f"k{i}"], [str(i)]) for i in range(10, 20)),
        return_exceptions=True,
    )
    good = results[:10] + results[15:]
    assert good == [str(i).encode() for i in range(20)]
    assert all(isinstance(r, DataError) for r in results[10:15]), results[10:15]
    assert "surrogates not allowed" in str(results[10])


async def test_a_redis_call_with_text_redis_cannot_take_is_the_callers_invalid_input(
    redis: Redis,
) -> None:
    """Outside the auto-pipeline too (redis-py's own connections): a lone surrogate is the
    caller's invalid input (422), not a 500, and the connection serves the next call."""
    from sidecar.errors import InvalidInput
    from sidecar.ledger.redis_calls import store_call

    with pytest.raises(InvalidInput, match="surrogates not allowed"):
        await store_call(redis.set("k\udcff", "v"))
    assert await store_call(redis.set("k", "v"))
