"""Child processes of ``serve``: ``python -m sidecar <command>`` restarted with backoff when
they exit, killed by the kernel when their parent dies (PDEATHSIG), stopped with SIGTERM and
a grace period. `serve` runs the outbox writer this way, and with ``--workers N`` its HTTP
workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from sidecar.embedded import die_with_parent
from sidecar.persistence.writer import pause

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
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def _supervise(self) -> None:
        backoff = 0.5
        fast_exits = 0
        while not self._stop.is_set():
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sidecar",
                *self.args,
                env=self.env,
                preexec_fn=self._preexec,
            )
            if self._stop.is_set():  # stop() ran while it was being spawned
                await self._terminate(self.process, 15.0)
                return
            started = asyncio.get_running_loop().time()
            code = await self.process.wait()
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
        if self.nice:
            os.nice(self.nice)

    def signal(self, sig: int) -> None:
        """Forwards ``sig`` to the running child, if any."""
        p = self.process
        if p is not None and p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)

    async def stop(self, grace_s: float = 15.0) -> None:
        self._stop.set()
        if self.process is not None:
            await self._terminate(self.process, grace_s)
        if self._task is not None:
            await self._task  # it terminates a child spawned meanwhile itself

    async def _terminate(self, p: asyncio.subprocess.Process, grace_s: float) -> None:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.wait(), grace_s)
            except TimeoutError:
                log.error("%s did not stop; killing it", self.name)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()

    def status(self) -> dict[str, object]:
        p = self.process
        return {
            "mode": "process",
            "pid": p.pid if p is not None else None,
            "running": p is not None and p.returncode is None,
            "restarts": self.restarts,
        }
