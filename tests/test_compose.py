"""docker-compose.yml, the Dockerfile and examples/compose/: the production-shaped deployment.

Docker cannot run here (no daemon), so these tests check what can be checked without one: the
compose file passes `docker compose config` (Docker Compose v2, installed by
scripts/compose-check.sh when missing), and its structure, read with PyYAML, keeps the
promises the README makes: nothing starts before what it needs is healthy (or, for the
one-shot migration, done), Redis keeps an fsynced AOF on a volume, PostgreSQL keeps its data
on a volume, every sidecar process points at those two services with settings the sidecar
accepts, nginx runs the tested example config, and `pip install .` in the image ships every
package and the Lua scripts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from sidecar.cli import main as cli
from sidecar.settings import Settings

pytestmark = pytest.mark.proxy

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CHECK_SCRIPT = ROOT / "scripts" / "compose-check.sh"
NO_VALIDATOR = 3  # scripts/compose-check.sh: no Compose v2 could be found or installed
# The services that run the sidecar's image, and the command each runs.
SIDECAR_COMMANDS = {
    "migrate": "migrate",
    "sidecar": "serve",
    "writer": "writer",
    "worker": "worker",
}
ONE_SHOT = {"migrate"}


def interpolate(value: str) -> str:
    """`${VAR:-default}` and `${VAR}` as compose resolves them with VAR unset."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping (KEY: value)"
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def run_check(*files: Path) -> subprocess.CompletedProcess[str]:
    """scripts/compose-check.sh on the files; skips the test if no validator can be had."""
    result = subprocess.run(
        ["bash", str(CHECK_SCRIPT), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if result.returncode == NO_VALIDATOR:
        pytest.skip(f"Docker Compose v2 cannot be installed here: {result.stderr.strip()}")
    return result


def test_compose_file_passes_docker_compose_config() -> None:
    """`docker compose config -q` (Compose v2) accepts docker-compose.yml: schema, variable
    interpolation, and references between services and volumes."""
    result = run_check(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    assert "Docker Compose version v2" in result.stderr


def test_the_validator_rejects_an_invalid_compose_file(tmp_path: Path) -> None:
    """The check is not a no-op: a misspelt key (`healthchek`) makes it fail with the reason."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("healthcheck:", "healthchek:", 1))
    result = run_check(broken)
    assert result.returncode == 1, result.stderr
    assert "healthchek" in result.stderr


def test_every_dependency_waits_for_health_or_for_completion(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every depends_on names an existing service with a condition: service_healthy on a
    service that has a healthcheck, or service_completed_successfully on a one-shot."""
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions (long syntax)"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "test" in services[dep].get("healthcheck", {}), f"{dep} has no healthcheck"
            else:
                assert condition == "service_completed_successfully", f"{name} → {dep}"
                assert dep in ONE_SHOT and services[dep]["restart"] == "no", dep


def test_every_service_others_depend_on_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    """Redis, PostgreSQL, the sidecar and the demo API are depended on and have a
    healthcheck; the only exception is the one-shot migration, waited for until it exits 0."""
    depended_on = {dep for s in services.values() for dep in s.get("depends_on", {})}
    assert depended_on >= {"redis", "postgres", "migrate", "sidecar", "api"}
    for name in depended_on - ONE_SHOT:
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"{name} is depended on but has no healthcheck"
        assert not check.get("disable", False), name


def test_redis_keeps_an_aof_fsynced_every_second_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Redis runs with appendonly yes, appendfsync everysec and noeviction (a ledger must
    refuse writes, not drop keys, when memory is full), /data on a named volume, and a
    `redis-cli ping` healthcheck."""
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    command = redis["command"]
    args = command.split() if isinstance(command, str) else [str(a) for a in command]
    options = dict(zip(args[1::2], args[2::2], strict=False))
    assert args[0] == "redis-server"
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    volume = next(v for v in redis["volumes"] if v.endswith(":/data"))
    assert volume.split(":")[0] in compose["volumes"], "Redis's /data must be a named volume"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_postgres_keeps_its_data_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """PostgreSQL's data directory is a named volume; its healthcheck is pg_isready over TCP
    (the image's first-start init server is on the unix socket only)."""
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    volume = next(v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data"))
    assert volume.split(":")[0] in compose["volumes"]
    test = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready" in test and "-h 127.0.0.1" in test


def test_sidecar_processes_point_at_the_redis_and_postgres_services(
    services: dict[str, dict[str, Any]],
) -> None:
    """migrate, sidecar, writer and worker use the redis service and the postgres service's
    database, user and password (asyncpg), and agree on SIDECAR_SHARDS."""
    pg_env = env_of(services["postgres"])
    shards = set()
    for name in SIDECAR_COMMANDS:
        env = env_of(services[name])
        redis_url = urlsplit(env["SIDECAR_REDIS_URL"])
        assert redis_url.scheme == "redis" and redis_url.hostname == "redis", name
        assert redis_url.port == 6379, name
        db_url = urlsplit(env["SIDECAR_DATABASE_URL"])
        assert db_url.scheme == "postgresql+asyncpg", name
        assert db_url.hostname == "postgres" and db_url.port == 5432, name
        assert db_url.path == "/" + pg_env["POSTGRES_DB"], name
        assert db_url.username == pg_env["POSTGRES_USER"], name
        assert db_url.password == pg_env["POSTGRES_PASSWORD"], name
        shards.add(env["SIDECAR_SHARDS"])
    assert len(shards) == 1, "every process of a deployment must see the same SIDECAR_SHARDS"


def test_sidecar_environments_are_settings_the_sidecar_accepts(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every SIDECAR_* variable of the sidecar's services is a known setting with a valid
    value (with the demo defaults): a typo would otherwise stop the process at start."""
    for name in SIDECAR_COMMANDS:
        env = env_of(services[name])
        fields = {k.removeprefix("SIDECAR_").lower(): v for k, v in env.items()}
        assert all(k.startswith("SIDECAR_") for k in env), name
        assert set(fields) <= set(Settings.model_fields), name
        Settings.model_validate(fields)  # raises on an invalid value


def test_serve_leaves_the_writer_and_billing_worker_to_their_own_services(
    services: dict[str, dict[str, Any]],
) -> None:
    """The sidecar service runs `serve` with SIDECAR_WRITER=off and SIDECAR_BILLING_WORKER=off;
    `writer`, `worker` and `migrate` each run in a service of their own; each command exists in
    the CLI, and all four run the image built from the Dockerfile."""
    for name, command in SIDECAR_COMMANDS.items():
        service = services[name]
        assert service["command"] == ["credit-sidecar", command], name
        found = cli.get_command(click.Context(cli), command)
        assert found is not None, f"credit-sidecar has no command {command}"
        assert service["build"] == "." and service["image"] == services["sidecar"]["image"]
    env = env_of(services["sidecar"])
    assert env["SIDECAR_WRITER"] == "off"
    assert env["SIDECAR_BILLING_WORKER"] == "off"


def test_sidecar_healthcheck_probes_readyz_on_its_listen_port(
    services: dict[str, dict[str, Any]],
) -> None:
    """The sidecar listens on all interfaces of its container, and its healthcheck asks
    /readyz on that port (Redis, scripts and SQL up) (with Python: the slim image has no curl)."""
    sidecar = services["sidecar"]
    listen = env_of(sidecar)["SIDECAR_LISTEN"]
    assert listen == "0.0.0.0:8080"
    test = " ".join(sidecar["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/readyz" in test
    assert "python" in test


def nginx_upstreams(conf: str) -> dict[str, str]:
    return dict(re.findall(r"upstream (\w+) \{\s*server ([^;\s]+);", conf))


def test_nginx_runs_the_tested_example_config_against_the_compose_services(
    services: dict[str, dict[str, Any]],
) -> None:
    """examples/compose/nginx.conf is examples/nginx/credit-sidecar.conf (which the e2e tests
    run through a real nginx) with only its upstreams set to sidecar:8080 and api:9000, and
    compose mounts it, and the demo API's config, where the nginx image reads them."""
    example = (ROOT / "examples/nginx/credit-sidecar.conf").read_text()
    ours = (ROOT / "examples/compose/nginx.conf").read_text()
    start = "upstream credit_sidecar"
    expected = example[example.index(start) :]
    expected = expected.replace("127.0.0.1:8080", "sidecar:8080")
    expected = expected.replace("127.0.0.1:9000", "api:9000")
    assert ours[ours.index(start) :] == expected
    assert nginx_upstreams(ours) == {"credit_sidecar": "sidecar:8080", "api_backend": "api:9000"}
    assert "listen 9000;" in (ROOT / "examples/compose/api.conf").read_text()

    mounts = {
        "nginx": [
            "./examples/compose/nginx.conf:/etc/nginx/conf.d/default.conf:ro",
            "./examples/compose/admin.conf:/etc/nginx/conf.d/admin.conf:ro",
        ],
        "api": ["./examples/compose/api.conf:/etc/nginx/conf.d/default.conf:ro"],
    }
    for name, wanted in mounts.items():
        assert services[name]["volumes"] == wanted, name
        for mount in wanted:
            assert (ROOT / mount.split(":")[0]).is_file(), mount
    assert "listen 8000;" in ours
    assert "listen 8080;" in (ROOT / "examples/compose/admin.conf").read_text()


def test_only_nginx_publishes_ports_so_the_sidecar_scales(
    services: dict[str, dict[str, Any]],
) -> None:
    """nginx publishes the public port 8000 and the sidecar's own API on the host's loopback
    only; no other service publishes a port or pins a container name, so `--scale sidecar=N`
    (and writer, worker) works and Redis and PostgreSQL stay off the host's network."""
    assert services["nginx"]["ports"] == ["8000:8000", "127.0.0.1:8080:8080"]
    for name, service in services.items():
        assert "container_name" not in service, name
        if name != "nginx":
            assert "ports" not in service, f"{name} publishes a port"


def test_nginx_accepts_the_compose_nginx_configs(tmp_path: Path) -> None:
    """`nginx -t` passes on examples/compose/nginx.conf, admin.conf and api.conf, included in
    `http {}` as the official image does (the service names mapped to loopback: nothing
    resolves them outside compose)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not nginx:
        pytest.fail("nginx is not installed: `make test` installs it (apt-get install nginx)")
    proxy = (ROOT / "examples/compose/nginx.conf").read_text()
    proxy = proxy.replace("sidecar:8080", "127.0.0.1:8080").replace("api:9000", "127.0.0.1:9000")
    (tmp_path / "proxy.conf").write_text(proxy)
    for name in ("admin.conf", "api.conf"):
        shutil.copy(ROOT / "examples/compose" / name, tmp_path / name)
    temps = "\n".join(
        f"  {kind}_temp_path {tmp_path}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n{temps}\n"
        # conf.d/*.conf in the nginx image's order: admin.conf, then default.conf (proxy).
        f"  include {tmp_path}/admin.conf;\n  include {tmp_path}/proxy.conf;\n"
        f"  include {tmp_path}/api.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_dockerfile_installs_the_package_as_a_non_root_user() -> None:
    """The image: python:3.11-slim, `pip install .` of exactly what the package is built from
    (pyproject.toml, its readme, lua/, sidecar/persistence/ and sidecar/), a non-root user, the
    sidecar's port exposed, `serve` by default."""
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in lines]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    copied = {src for op, args in instructions if op == "COPY" for src in args.split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "sidecar/"}
    assert any(op == "RUN" and "pip install ." in args for op, args in instructions)
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "8080") in instructions
    assert instructions[-1] == ("CMD", '["credit-sidecar", "serve"]')


def test_pip_install_ships_every_package_and_the_lua_scripts(tmp_path: Path) -> None:
    """The wheel `pip install .` builds (as the image does) holds every package under sidecar/
    (found by setuptools, nothing listed by hand), the Lua scripts, the migrations and their
    template, and the console's files: what an editable dev install would hide."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("credit_sidecar-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    source = {
        str(f.relative_to(ROOT))
        for f in (ROOT / "sidecar").rglob("*")
        if f.is_file() and "__pycache__" not in f.parts
    }
    assert source - shipped == set(), "files of the package missing from the wheel"
    assert "sidecar/lua/deduct.lua" in shipped
    assert "sidecar/persistence/migrations/script.py.mako" in shipped
    assert not [name for name in shipped if name.startswith("tests/")]
