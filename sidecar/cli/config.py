"""``credit-sidecar config check``: load the settings exactly as ``serve`` does (environment,
then the ``SIDECAR_CONFIG`` TOML file, then defaults), say what is wrong, or print the
effective settings with where each came from, secrets masked."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import SecretStr, ValidationError

from sidecar.cli.common import echo_json, json_option
from sidecar.cli.tables import echo_table
from sidecar.gate.pricing import PricingError, load_pricing
from sidecar.persistence.db import resolve_url
from sidecar.settings import Settings

PREFIX = "SIDECAR_"
# SIDECAR_* variables that are read elsewhere, not settings.
NOT_SETTINGS = {"CONFIG", "URL", "LOG_FORMAT", "LOG_LEVEL"}
NOT_SETTINGS_PREFIXES = ("TEST_", "BENCH_")
MASK = "********"
_URL_PASSWORD = re.compile(r"(//[^/@:]*:)[^@/]+@")


@click.group()
def config() -> None:
    """The sidecar's configuration."""


def _invalid(lines: list[str]) -> NoReturn:
    for line in lines:
        click.echo(f"config error: {line}", err=True)
    sys.exit(2)


def _file_values() -> tuple[Path | None, dict[str, Any]]:
    name = os.environ.get(f"{PREFIX}CONFIG")
    if not name:
        return None, {}
    path = Path(name)
    try:
        with path.open("rb") as f:
            return path, tomllib.load(f)
    except FileNotFoundError:
        _invalid([f"{PREFIX}CONFIG: {path} does not exist"])
    except (OSError, ValueError) as e:  # unreadable, not UTF-8 (UnicodeDecodeError), not TOML
        _invalid([f"{PREFIX}CONFIG: {path} is not readable TOML: {e}"])


def _env_names() -> dict[str, str]:
    """Upper-cased SIDECAR_* variables set in the environment -> the name as written."""
    return {k.upper(): k for k in os.environ if k.upper().startswith(PREFIX)}


def _source(name: str, env: dict[str, str], file_values: dict[str, Any]) -> str:
    if f"{PREFIX}{name.upper()}" in env:
        return "env"
    if name in file_values:
        return "file"
    return "default"


def _shown(value: Any) -> Any:
    """A JSON-able value with secrets masked (tokens, keys, passwords in URLs)."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", value)
    return value


def _load(file_values: dict[str, Any], file: Path | None, env: dict[str, str]) -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        lines = []
        for err in e.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            if not loc:  # a rule across settings; its message names them
                lines.append(err["msg"].removeprefix("Value error, "))
            elif f"{PREFIX}{loc.upper()}" not in env and loc in file_values:
                lines.append(f"{loc} in {file} ({PREFIX}{loc.upper()}): {err['msg']}")
            else:
                lines.append(f"{PREFIX}{loc.upper()}: {err['msg']}")
        _invalid(lines)


@config.command("check")
@json_option
def check(as_json: bool) -> None:
    """Validate the configuration as `serve` would load it; print the effective settings.

    Exits 2 naming each invalid setting (and an unreadable SIDECAR_CONFIG or pricing file)."""
    file, file_values = _file_values()
    env = _env_names()
    settings = _load(file_values, file, env)
    try:
        load_pricing(settings.pricing_file)
    except PricingError as e:
        _invalid([f"{PREFIX}PRICING_FILE: {e}"])
    fields = type(settings).model_fields
    warnings = [
        f"{written} is not a setting (ignored)"
        for upper, written in sorted(env.items())
        if upper.removeprefix(PREFIX).lower() not in fields
        and upper.removeprefix(PREFIX) not in NOT_SETTINGS
        and not upper.removeprefix(PREFIX).startswith(NOT_SETTINGS_PREFIXES)
    ]
    values = {name: _shown(getattr(settings, name)) for name in fields}
    sources = {name: _source(name, env, file_values) for name in fields}
    derived = {
        "sql_ledger": _shown(resolve_url(settings.database_url, settings.data_dir)),
        "redis": _shown(settings.redis_url) if settings.redis_url else "embedded server",
        "admin_token": _token_origin(settings, "admin"),
        "service_token": _token_origin(settings, "service"),
    }
    if as_json:
        body = {
            "config_file": None if file is None else str(file),
            "settings": values,
            "sources": sources,
            "derived": derived,
            "warnings": warnings,
        }
        echo_json(body)
        return
    echo_table(
        ("SETTING", "VALUE", "SOURCE"),
        [(f"{PREFIX}{n.upper()}", _text(values[n]), sources[n]) for n in fields],
    )
    click.echo("")
    for name, value in derived.items():
        click.echo(f"{name.replace('_', ' '):14} {value}")
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    origin = f" (file {file})" if file else ""
    click.echo(f"configuration OK{origin}", err=True)


def _token_origin(settings: Settings, role: str) -> str:
    if getattr(settings, f"{role}_token") is not None:
        return "set (masked above)"
    path = settings.data_dir / f"{role}_token"
    return f"file {path}" if path.exists() else f"generated into {path} on first `serve`"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
