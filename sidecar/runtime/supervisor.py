"""Child processes of ``serve``: ``python -m sidecar <command>`` restarted with backoff when
they exit, killed by the kernel when their parent dies (PDEATHSIG), stopped with SIGTERM and
a grace period. `serve` runs the outbox writer this way, and with ``--workers N`` its HTTP
workers. The embedded Redis is kept running the same way (:class:`SupervisedServer`). Every
child starts with SIGHUP held (sidecar/runtime/reload.py): a reload sent during its start-up
does not kill it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from sidecar.persistence.writer import pause
from sidecar.redis.embedded import RedisServer, die_with_parent
from sidecar.runtime.reload import hold_reloads

log = logging.getLogger(__name__)


# A child that exits this soon after starting, this many times in a row, cannot run (its port
# is taken, its config is wrong): restarting it forever would hide that.
FAST_EXIT_S = 5.0
FAST_EXITS = 5


class Supervised:
    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        on_give_up: Callable[[], None] | None = None,
        nice: int = 0,
    ) -> None:
        self.name = name
        self.nice = nice
        self.args = args
        self.env = env
        self.on_give_up = on_give_up
        self.gave_up = False
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def _supervise(self) -> None:
        backoff = 0.5
        fast_exits = 0
        while not self._stop.is_set():
            # subprocess, not the event loop's subprocess_exec: uvloop (libuv) resets every
            # signal to its default action in the child, which would undo hold_reloads().
            self.process = subprocess.Popen(  # noqa: ASYNC220 (a fork: quick)
                [sys.executable, "-m", "sidecar", *self.args],
                env=self.env,
                preexec_fn=self._preexec,
            )
            started = asyncio.get_running_loop().time()
            code = await _exit_of(self.process)
            if self._stop.is_set():
                return
            self.restarts += 1
            uptime = asyncio.get_running_loop().time() - started
            fast_exits = fast_exits + 1 if uptime < FAST_EXIT_S else 0
            if self.on_give_up is not None and fast_exits >= FAST_EXITS:
                log.error(
                    "%s exited %d times right after starting; giving up", self.name, fast_exits
                )
                self.gave_up = True
                self.on_give_up()
                return
            if uptime > 60:
                backoff = 0.5  # it had been healthy: a fresh failure, not a crash loop
            log.error("%s exited (%s); restarting in %.1fs", self.name, code, backoff)
            await pause(self._stop, backoff)
            backoff = min(backoff * 2, 10.0)

    def _preexec(self) -> None:
        die_with_parent()
        hold_reloads()  # a worker handles SIGHUP once it has started; the writer never does
        if self.nice:
            os.nice(self.nice)

    def signal(self, sig: int) -> None:
        """Forwards ``sig`` to the running child, if any."""
        p = self.process
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)

    async def stop(self, grace_s: float = 15.0) -> None:
        self._stop.set()
        if self.process is not None:
            await self._terminate(self.process, grace_s)
        if self._task is not None:
            await self._task  # it terminates a child spawned meanwhile itself

    async def _terminate(self, p: subprocess.Popen[bytes], grace_s: float) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(_exit_of(p), grace_s)
            except TimeoutError:
                log.error("%s did not stop; killing it", self.name)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await _exit_of(p)

    def status(self) -> dict[str, object]:
        p = self.process
        return {
            "mode": "process",
            "pid": p.pid if p is not None else None,
            "alive": p is not None and p.poll() is None,
            "restarts": self.restarts,
        }


async def _exit_of(p: subprocess.Popen[bytes]) -> int:
    """Waits for ``p`` to exit (polled: a child of ours that the event loop does not know);
    its exit code."""
    while (code := p.poll()) is None:  # noqa: ASYNC110 (no event to wait on)
        await asyncio.sleep(0.05)
    return code


# The first restart waits this long: a Ctrl-C reaches the embedded Redis with `serve`, which
# must have stopped before the server would come back for nothing.
SERVER_RESTART_S = 0.25


class SupervisedServer:
    """Keeps the embedded Redis running: when it exits (killed, crashed, out of memory), it
    is started again in place (same directory, socket and AOF; the data dir lock stays held
    by this process) with backoff, from the event loop's thread (see ``RedisServer.restart``).
    The clients reconnect by themselves; checks answer 503 meanwhile."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.restarts = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="embedded-redis")

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = SERVER_RESTART_S
        started = loop.time()
        while not self._stop.is_set():
            await pause(self._stop, 0.1)
            p = self.server.process
            if p is None or p.poll() is None:
                continue
            if loop.time() - started > 60:
                backoff = SERVER_RESTART_S  # it had been healthy: not a crash loop
            log.error(
                "embedded %s exited (%s); restarting it from its AOF in %.2fs",
                self.server.binary,
                p.returncode,
                backoff,
            )
            await pause(self._stop, backoff)
            backoff = min(backoff * 2, 10.0)
            if self._stop.is_set():
                return
            try:
                await self.server.restart()
            except Exception as e:  # it exited again, or never answered: try again
                log.error("embedded Redis did not start again: %s", e)
                continue
            self.restarts += 1
            started = loop.time()
            log.warning("embedded %s restarted on %s", self.server.binary, self.server.url)

    async def stop(self) -> None:
        """Stops watching, at once (a restart under way is abandoned: the owner stops the
        server itself, after its clients). Call it as shutdown begins: a Ctrl-C reaches the
        server too, which must not come back for the shutdown's drain."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
