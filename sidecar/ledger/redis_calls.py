"""A Redis call of the ledger within its deadline, and its failures as domain errors: a
script's own error (``CS <CODE> ...``) as the error it names, anything else that keeps Redis
from answering as StoreUnavailable (answered 503)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from redis.exceptions import DataError, RedisError, ResponseError

from sidecar.errors import InvalidInput, StoreUnavailable, from_script_error
from sidecar.redis.autopipe import NotSent

CALL_DEADLINE_S = 5.0  # default of SIDECAR_REDIS_DEADLINE_S: a call's time, retries included
log = logging.getLogger("sidecar.ledger.calls")


def may_have_run(e: StoreUnavailable) -> bool:
    """Whether a call that failed with ``e`` may have run in Redis: not when Redis answered
    (LATE: refused past its deadline, raised without a cause; any other error reply) or the
    auto-pipeline never wrote it (NotSent), yes when its reply never came (the deadline, a
    lost connection, a refused reconnect after an earlier send)."""
    return e.__cause__ is not None and not isinstance(e.__cause__, (ResponseError, NotSent))


async def store_call(awaitable: Awaitable[Any], deadline_s: float = CALL_DEADLINE_S) -> Any:
    """Awaits a Redis call within ``deadline_s`` (retries included); errors as store_errors,
    and a missed deadline is StoreUnavailable too."""
    try:
        async with asyncio.timeout(deadline_s):
            return await store_errors(awaitable)
    except TimeoutError as e:
        log.warning("redis call missed its %.1fs deadline", deadline_s)
        raise StoreUnavailable("the credit store is unavailable") from e


async def store_errors(awaitable: Awaitable[Any]) -> Any:
    """Turns script errors into domain errors and every other Redis failure (unreachable,
    read-only replica, out of memory, busy, the deadline) into StoreUnavailable, logged here
    and answered with a generic message. An argument that cannot be sent (a str that is not
    valid UTF-8) is the caller's input: InvalidInput."""
    try:
        return await awaitable
    except DataError as e:
        raise InvalidInput(str(e)) from None
    except ResponseError as e:
        err = from_script_error(str(e))
        if isinstance(err, StoreUnavailable):  # LATE: it ran after its deadline, did nothing
            log.warning("a call reached redis too late and changed nothing: %s", err.message)
            raise StoreUnavailable("the credit store is unavailable") from None
        if err is not None:
            raise err from None
        log.warning("redis refused a call: %s", e)
        raise StoreUnavailable("the credit store refused the call") from e
    except (RedisError, OSError, TimeoutError) as e:
        log.warning("redis unavailable: %r", e)
        raise StoreUnavailable("the credit store is unavailable") from e
