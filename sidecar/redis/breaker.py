"""Fails fast while Redis refuses connections: one circuit breaker per Redis address, shared
by every connection of the process to it (the hot path's own connections and redis-py's).

A connect that fails at once (nothing listens: a stopped server answers ECONNREFUSED; a unix
socket file that is gone; a reset; an unreachable network) says Redis is down, not slow, and
opens the breaker for ``COOLDOWN_S``: meanwhile connects to that address fail without being
tried, so thousands of calls do not each try to connect. Once the cooldown is over one connect
goes ahead as a probe (the others still fail at once); if it connects, the breaker closes.

A restart refuses connections for a moment too (about 100 ms, then the server loads its
data). So for ``GRACE_S`` from the first refusal, refused calls are sent again (their
connects waiting for the next probe): a restart is ridden out. Once Redis has refused for
longer, calls fail at once, so that every answer (a 503, or a ``fail_open`` 200) reaches the
proxy long before its timeout instead of after the call's deadline.

A server that takes the connection but answers slowly (paused, busy, loading its AOF) is not
refusing: its calls wait, and are retried, up to their deadline. A connect that times out is
such a case too (the connection timeout bounds it).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

# Short: a new probe every COOLDOWN_S while Redis refuses; a restart's refusals last about
# 100 ms, well within GRACE_S, and GRACE_S stays well under the proxies' auth timeouts.
COOLDOWN_S = 0.1
GRACE_S = 0.5


class ConnectFailed(ConnectionRefusedError):
    """Connecting to Redis failed at once, or was not tried because it just did.

    An OSError, so redis-py turns it into its ConnectionError like any failed connect (with
    this as ``__cause__``, which its retry policy checks: see :func:`give_up`)."""

    def __init__(self, code: int, message: str, breaker: Breaker) -> None:
        super().__init__(code, message)
        self.breaker = breaker


def give_up(error: BaseException) -> bool:
    """Whether a call that failed with ``error`` should fail now rather than be retried: its
    connect was refused (or not tried), and Redis has refused for longer than a restart."""
    failed = error if isinstance(error, ConnectFailed) else error.__cause__
    return isinstance(failed, ConnectFailed) and not failed.breaker.restarting()


class Breaker:
    def __init__(self, cooldown_s: float | None = None, grace_s: float | None = None) -> None:
        # (the module's values, read now: a test may change them for the breakers it makes)
        self.cooldown_s = COOLDOWN_S if cooldown_s is None else cooldown_s
        self.grace_s = GRACE_S if grace_s is None else grace_s
        self._open_until = 0.0  # monotonic; 0 = closed
        self._down_since = 0.0  # the first refusal since the last connect; 0 = none
        self._probing = False
        self._last = ""  # why it opened
        self.connects = 0  # statistics: connects let through

    @property
    def is_open(self) -> bool:
        return self._open_until != 0.0

    def restarting(self) -> bool:
        """Whether a refused call may still wait for Redis: refusing for under ``grace_s``
        (or connected again since)."""
        return not self._down_since or time.monotonic() - self._down_since < self.grace_s

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """Wraps one connect: refuses it while open, records how it went."""
        probe = False
        if self._open_until:
            if self._probing or time.monotonic() < self._open_until:
                raise ConnectFailed(errno.ECONNREFUSED, f"{self._last} (not retried yet)", self)
            self._probing = probe = True
        self.connects += 1
        try:
            yield
        except ConnectFailed:
            raise
        except OSError as e:
            if isinstance(e, TimeoutError):  # slow, not refusing: the caller may retry
                raise
            now = time.monotonic()
            self._last = e.strerror or str(e) or type(e).__name__
            self._open_until = now + self.cooldown_s
            self._down_since = self._down_since or now
            raise ConnectFailed(e.errno or errno.ECONNREFUSED, self._last, self) from e
        else:
            self._open_until = self._down_since = 0.0
        finally:
            if probe:
                self._probing = False


_breakers: dict[Hashable, Breaker] = {}


def breaker_for(address: Hashable) -> Breaker:
    """The breaker of one Redis address (``(host, port)`` or a socket path)."""
    breaker = _breakers.get(address)
    if breaker is None:
        breaker = _breakers[address] = Breaker()
    return breaker
