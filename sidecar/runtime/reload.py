"""SIGHUP reloads `serve`'s pricing file, and must be safe at any moment: its default action
kills the process, and `serve` (and each of its workers) can only handle it once its event loop
runs, a second or more after it was started.

So a `serve` process holds SIGHUP back from its first line (:func:`hold_reloads`, called by the
entry point before the CLI's imports), and its children from before their exec (the
supervisor's preexec): ignored, so that no thread can die of it, and blocked, so that one sent
meanwhile stays pending (Linux queues a blocked signal even while it is ignored). Once the
handler is installed, :func:`on_reload` unblocks it and a held reload is delivered to the
handler. Both states survive fork and exec, so a child started meanwhile is protected until it
installs its own handler (the writer and the embedded Redis never do: they ignore it).

This module imports nothing heavy: the entry point uses it before anything else.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


def hold_reloads() -> None:
    """Until :func:`on_reload`: a SIGHUP neither kills this process nor is lost."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


def on_reload(
    loop: asyncio.AbstractEventLoop, handler: Callable[[], None]
) -> Callable[[], None] | None:
    """Installs ``handler`` for SIGHUP on ``loop`` (the main thread's), then lets SIGHUP
    through, held ones first. Returns what undoes it: the handler removed and SIGHUP's former
    disposition back (in `serve`: ignored, so that a SIGHUP during the graceful shutdown does
    not kill it); None where signals cannot be handled (not the main thread)."""
    previous = signal.getsignal(signal.SIGHUP)
    try:
        loop.add_signal_handler(signal.SIGHUP, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        return None
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)

    return undo
