"""The README's five-minute tour, run as a new user would: its shell blocks, as written, against
`credit-sidecar serve` on embedded defaults (what `make run` starts) and the shipped nginx
config. Only the ports and the temp dir are substituted, so tests can run side by side."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

pytestmark = pytest.mark.proxy

ROOT = Path(__file__).resolve().parents[2]


def tour_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def run(script: str, cwd: Path, env: dict[str, str]) -> str:
    """Runs a tour block with bash; returns stdout and stderr. Background jobs it starts are
    in its own session, killed afterwards."""
    output = cwd / "block.out"
    with output.open("wb") as out:  # a file, not a pipe: background jobs keep it open
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    text = output.read_text()
    assert proc.returncode == 0, text
    return text


@pytest.fixture
def user_dir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], dict[str, int]]]:
    """A directory like a fresh checkout's: the venv, the nginx config (ports substituted),
    and `serve` started there on embedded defaults."""
    ports = {"sidecar": free_port(), "nginx": free_port(), "api": free_port()}
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    conf = (ROOT / "examples/nginx/credit-sidecar.conf").read_text()
    conf = conf.replace("127.0.0.1:8080", f"127.0.0.1:{ports['sidecar']}")
    conf = conf.replace("127.0.0.1:9000", f"127.0.0.1:{ports['api']}")
    conf = conf.replace("listen 8000;", f"listen 127.0.0.1:{ports['nginx']};")
    (tmp_path / "examples/nginx").mkdir(parents=True)
    (tmp_path / "examples/nginx/credit-sidecar.conf").write_text(conf)
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
        "SIDECAR_LISTEN": f"127.0.0.1:{ports['sidecar']}",
    }
    for name in list(env):
        if name.startswith("SIDECAR_") and name != "SIDECAR_LISTEN":
            del env[name]  # the user's defaults, not the test run's
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / ".data/service_token").exists() or not ready(ports["sidecar"]):
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield tmp_path, env, ports
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        log.close()


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def localize(block: str, tmp: Path, ports: dict[str, int]) -> str:
    return (
        block.replace("localhost:8080", f"localhost:{ports['sidecar']}")
        .replace("localhost:8000", f"localhost:{ports['nginx']}")
        .replace("http.server 9000", f"http.server {ports['api']}")
        .replace("/tmp/", f"{tmp}/")  # noqa: S108 (the README's path, replaced)
    )


def test_the_readme_tour_works_as_written_through_curl_and_nginx(
    user_dir: tuple[Path, dict[str, str], dict[str, int]],
) -> None:
    tmp, env, ports = user_dir
    api, through_nginx = tour_blocks()
    out = run(localize(api, tmp, ports), tmp, env)
    assert '"allowed":true' in out and '"balance":1090' in out, out
    assert '"balance":1100' in out  # the grants
    assert re.search(r'"url":"http://localhost:\d+/portal/s/[a-z0-9]{16}\.', out), out
    nginx = localize(through_nginx, tmp, ports)
    # the API stand-in and nginx start in the background: wait for them before the curls
    start, curls = nginx.split("KEY=", 1)
    wait = (
        f"for _ in $(seq 100); do curl -s -o /dev/null localhost:{ports['api']} && "
        f"curl -s -o /dev/null localhost:{ports['nginx']} && break; sleep 0.1; done\n"
    )
    stop = f"nginx -c {tmp}/nginx-tour.conf -p {tmp}/ -g 'pid {tmp}/nginx-tour.pid;' -s stop\n"
    try:
        out = run(start + wait + "KEY=" + curls, tmp, env)
    finally:
        subprocess.run(["bash", "-c", stop], check=False, capture_output=True)
    assert "HTTP/1.1 200 OK" in out and "X-Credits-Balance: 1089" in out, out
    assert "HTTP/1.1 401 Unauthorized" in out and '"invalid_api_key"' in out, out
