"""Fails fast while Redis refuses connections: one circuit breaker per Redis address, shared
by every connection of the process to it (the hot path's own connections and redis-py's).

A connect that fails at once (nothing listens: a stopped server answers ECONNREFUSED; a unix
socket file that is gone; a reset; an unreachable network) says Redis is down, not slow:
waiting and retrying until the call's deadline would only make every answer (a 503, or a
``fail_open`` 200) arrive after the proxy has given up. So such a failure fails its call
at once, and opens the breaker for ``COOLDOWN_S``: meanwhile connects to that address fail
without being tried, so thousands of calls do not each try to connect. Once the cooldown is
over one connect goes ahead as a probe (the others still fail at once); if it connects, the
breaker closes.

A server that takes the connection but answers slowly (paused, busy, loading its AOF after a
restart) is not refusing: its calls wait, and are retried, up to their deadline. A connect
that times out is such a case too (the connection timeout bounds it).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

# Short: a restarting Redis refuses for about 100 ms, then loads its AOF (LOADING replies,
# which are retried); a longer cooldown would refuse calls it could already take.
COOLDOWN_S = 0.1


class ConnectFailed(ConnectionRefusedError):
    """Connecting to Redis failed at once, or was not tried because it just did.

    An OSError, so redis-py turns it into its ConnectionError like any failed connect (with
    this as ``__cause__``, which its retry policy checks: see :func:`refused`)."""


def refused(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from) is a connect that failed at once."""
    return isinstance(error, ConnectFailed) or isinstance(error.__cause__, ConnectFailed)


class Breaker:
    def __init__(self, cooldown_s: float = COOLDOWN_S) -> None:
        self.cooldown_s = cooldown_s
        self._open_until = 0.0  # monotonic; 0 = closed
        self._probing = False
        self._last = ""  # why it opened
        self.connects = 0  # statistics: connects let through

    @property
    def is_open(self) -> bool:
        return self._open_until != 0.0

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """Wraps one connect: refuses it while open, records how it went."""
        probe = False
        if self._open_until:
            if self._probing or time.monotonic() < self._open_until:
                raise ConnectFailed(errno.ECONNREFUSED, f"{self._last} (not retried yet)")
            self._probing = probe = True
        self.connects += 1
        try:
            yield
        except ConnectFailed:
            raise
        except OSError as e:
            if isinstance(e, TimeoutError):  # slow, not refusing: the caller may retry
                raise
            self._last = e.strerror or str(e) or type(e).__name__
            self._open_until = time.monotonic() + self.cooldown_s
            raise ConnectFailed(e.errno or errno.ECONNREFUSED, self._last) from e
        else:
            self._open_until = 0.0
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
