"""A real local Redis Cluster for tests: 3 masters and 3 replicas, each a redis-server process
on a free port in a temp dir, joined with ``redis-cli --cluster create``.

Kill a master (``kill``) and its replica is promoted after the node timeout; ``wait_ok``
waits until every live node agrees the cluster is whole again.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from sidecar.redis.embedded import RedisServer
from tests.ports import free_port

NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica takes over


class LocalCluster:
    def __init__(self, root: Path, masters: int = 3, replicas: int = 1) -> None:
        self.root = root
        self.masters_n = masters
        self.replicas = replicas
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """The sidecar's URL of the cluster: any node, discovered from there."""
        live = next(n for n in self.nodes if n.process and n.process.poll() is None)
        return f"redis+cluster://127.0.0.1:{live.port}"

    def start(self) -> None:
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if cli is None:
            raise RuntimeError("redis-cli is missing (apt-get install redis-tools)")
        for i in range(self.masters_n * (1 + self.replicas)):
            node = RedisServer(
                self.root / f"node-{i}",
                port=free_port(),
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # The bus port, explicitly: port + 10000 (the default) may not exist.
                    "--cluster-port", str(free_port()),
                    # A replica may be promoted however long it was cut off (tests kill masters).
                    "--cluster-replica-validity-factor", "0",
                ),
            )  # fmt: skip
            node.start()
            self.nodes.append(node)
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        replicas = ["--cluster-replicas", str(self.replicas)]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-yes", *replicas],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        self.wait_synced()

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Until every live replica's link to its master is up (its initial sync done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = 0
            for node in self.live():
                with self._client(node) as c:
                    info = c.info("replication")
                    if info.get("role") == "slave" and info.get("master_link_status") != "up":
                        pending += 1
            if not pending:
                return
            time.sleep(0.1)
        raise RuntimeError("the replicas did not finish their initial sync")

    def _client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1)

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node reports cluster_state:ok and all 16384 slots served by live
        masters."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(self._ok(n) for n in self.live()):
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become ok")

    def _ok(self, node: RedisServer) -> bool:
        with self._client(node) as c:
            info = c.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
            live_ports = {n.port for n in self.live()}
            served = 0
            for line in c.execute_command("CLUSTER", "NODES").decode().splitlines():
                fields = line.split()
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                if "master" in fields[2] and "fail" not in fields[2] and port in live_ports:
                    for r in fields[8:]:
                        lo, _, hi = r.partition("-")
                        served += int(hi or lo) - int(lo) + 1
            return served == 16384

    def master_of(self, key: str) -> RedisServer:
        """The live node serving ``key``'s slot."""
        with self._client(self.live()[0]) as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for line in c.execute_command("CLUSTER", "NODES").decode().splitlines():
                fields = line.split()
                if "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for r in fields[8:]:
                    lo, _, hi = r.partition("-")
                    if int(lo) <= slot <= int(hi or lo):
                        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                        return next(n for n in self.nodes if n.port == port)
        raise LookupError(key)

    def masters(self) -> list[RedisServer]:
        with self._client(self.live()[0]) as c:
            ports = {
                int(line.split()[1].split("@")[0].rsplit(":", 1)[1])
                for line in c.execute_command("CLUSTER", "NODES").decode().splitlines()
                if "master" in line.split()[2] and "fail" not in line.split()[2]
            }
        return [n for n in self.nodes if n.port in ports]

    def flush(self) -> None:
        for node in self.masters():
            with self._client(node) as c:
                c.flushall()
                c.script_flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
