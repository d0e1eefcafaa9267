"""Settings come from SIDECAR_* env vars and an optional TOML file (env wins); tokens are
generated once into the data dir when not configured."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sidecar.settings import Settings


def test_defaults_are_the_embedded_single_machine_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SIDECAR_REDIS_URL", "SIDECAR_LISTEN", "SIDECAR_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.listen == "127.0.0.1:8080" and s.redis_url is None
    assert s.host_port == ("127.0.0.1", 8080)


def test_env_overrides_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sidecar.toml"
    cfg.write_text('listen = "0.0.0.0:9000"\nshards = 4\nretention_s = 60\n')
    monkeypatch.setenv("SIDECAR_CONFIG", str(cfg))
    monkeypatch.setenv("SIDECAR_SHARDS", "8")
    s = Settings()
    assert (s.listen, s.shards, s.retention_s) == ("0.0.0.0:9000", 8, 60)


def test_unknown_or_invalid_settings_are_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "sidecar.toml"
    cfg.write_text("shardz = 4\n")
    monkeypatch.setenv("SIDECAR_CONFIG", str(cfg))
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("SIDECAR_CONFIG")
    monkeypatch.setenv("SIDECAR_SHARDS", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_generated_token_is_stable_and_private(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    token = s.token("admin")
    assert len(token) >= 32 and s.token("admin") == token
    assert (tmp_path / "admin_token").stat().st_mode & 0o777 == 0o600
    assert s.token("service") != token


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SIDECAR_LISTEN", "localhost"),
        ("SIDECAR_LISTEN", "127.0.0.1:99999"),
        ("SIDECAR_ADMIN_TOKEN", "short"),
        ("SIDECAR_RETENTION_S", str(20 * 366 * 86400)),
    ],
)
def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as e:
        Settings()
    assert var.removeprefix("SIDECAR_").lower() in str(e.value)


def test_admin_and_service_tokens_must_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_ADMIN_TOKEN", "x" * 20)
    monkeypatch.setenv("SIDECAR_SERVICE_TOKEN", "x" * 20)
    with pytest.raises(ValidationError):
        Settings()
