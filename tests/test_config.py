"""Configuration: precise errors, secrets from env/files, the shipped examples are valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from tests.fixtures import ROOT


def test_shipped_configs_are_valid() -> None:
    for name in ("gateway.example.toml", "gateway.toml"):
        load_config(ROOT / "configs" / name)


def test_errors_name_file_key_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[mqtt]\nport = "x"\ntopic_prefix = "a/#"\n[email]\nportt = 25\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = {key for _, key, _ in info.value.problems}
    assert keys == {"mqtt.port", "mqtt.topic_prefix", "email.portt"}
    assert all(file == str(path) for file, _, _ in info.value.problems)


def test_check_config_exits_non_zero_with_the_same_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[store]\nretention_days = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}: store.retention_days:" in result.stderr


def test_secrets_come_from_environment_or_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("PLP_MQTT_PASSWORD", "from-env")
    path = tmp_path / "gw.toml"
    path.write_text(
        '[mqtt]\npassword = "env:PLP_MQTT_PASSWORD"\n'
        f'[email]\nusername = "gw"\npassword = "file:{secret}"\n'
    )
    config = load_config(path)
    assert config.mqtt.password == "from-env"
    assert config.email.password == "s3cret"
    monkeypatch.delenv("PLP_MQTT_PASSWORD")
    with pytest.raises(ConfigError, match="PLP_MQTT_PASSWORD is not set"):
        load_config(path)
