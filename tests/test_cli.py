"""The `plp-gateway` command line as an operator meets it: --version, help on every option,
the default configuration path, `tts -o x.mp3`, the simulators' help, `init DIR`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gateway
from gateway.cli import DEFAULT_CONFIG, parser
from gateway.cli import main as cli_main
from gateway.shipped import SHIPPED
from sms.simulator import _parser as smsc_parser
from voice.simulator import _parser as asterisk_parser
from voice.tts_cli import _parser as tts_parser
from voice.tts_cli import main as tts_main

ROOT = Path(__file__).resolve().parent.parent


def plp_gateway(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """Run `plp-gateway ARGS` as a user would (`python -m gateway`), in a narrow terminal."""
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every argparse parser behind `plp-gateway`, by the command that shows it."""
    main = parser()
    found = {"plp-gateway": main}
    for action in main._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"plp-gateway {name}"] = sub
    found["plp-gateway tts"] = tts_parser()
    found["plp-gateway simulate smsc"] = smsc_parser()
    found["plp-gateway simulate asterisk"] = asterisk_parser()
    return found


def test_version() -> None:
    proc = plp_gateway("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"plp-gateway {gateway.__version__}"


def test_every_option_has_help_text() -> None:
    missing = [
        f"{name}: {'/'.join(action.option_strings) or action.dest}"
        for name, p in _parsers().items()
        for action in p._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert not missing, f"options without help text: {missing}"


@pytest.mark.parametrize("command", ["run", "send", "status", "purge"])
def test_help_shows_the_default_config_path(command: str) -> None:
    # 40 columns: the path must not be cut at its hyphen.
    proc = plp_gateway(command, "--help", columns=40)
    assert proc.returncode == 0, proc.stderr
    assert DEFAULT_CONFIG == "/etc/plp-gateway/gateway.toml"
    assert DEFAULT_CONFIG in proc.stdout


def _probe(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    data: dict[str, object] = json.loads(out)
    return data


def test_tts_writes_mp3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "listen.mp3"
    rc = tts_main(["Vague de cambriolages rue des Tilleuls.", "--lang", "fr", "-o", str(out)])
    assert rc == 0
    assert "MP3" in capsys.readouterr().out
    info = _probe(out)
    fmt = info["format"]
    streams = info["streams"]
    assert isinstance(fmt, dict) and isinstance(streams, list)
    assert fmt["format_name"] == "mp3"
    assert (streams[0]["codec_name"], streams[0]["channels"]) == ("mp3", 1)
    assert float(fmt["duration"]) > 2
    assert [p.name for p in tmp_path.iterdir()] == ["listen.mp3"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-o", "out.ogg"], "cannot write .ogg files"),
        (["-o", "out.mp3", "--format", "sln"], "--format sln does not match -o out.mp3"),
        (["-o", "out.wav", "--format", "alaw"], "--format alaw does not match -o out.wav"),
    ],
)
def test_tts_refuses_what_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    argv = [a if not a.startswith("out.") else str(tmp_path / a) for a in argv]
    assert tts_main(["Alerte", "--lang", "fr", *argv]) == 2
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_tts_help_through_plp_gateway() -> None:
    proc = plp_gateway("tts", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--lang" in proc.stdout and ".mp3" in proc.stdout


def test_smsc_simulator_help_speaks_to_users() -> None:
    proc = plp_gateway("simulate", "smsc", "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "pretend SMS operator" in text and "nothing reaches a" in text
    assert "[[sms.smsc]]" in text and 'system_id = "plp"' in text  # how to point the gateway
    assert "examples:" in text and "Ctrl+C" in text
    for developer_words in ("in-process", "start()", "ESME\n"):
        assert developer_words not in text


def test_asterisk_simulator_help_speaks_to_users() -> None:
    proc = plp_gateway("simulate", "asterisk", "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "pretend telephone exchange" in text and "Nobody is" in text
    for outcome in ("acknowledged", "busy", "no_answer", "hung_up_early", "invalid_number"):
        assert outcome in text  # what each last digit does
    assert "[voice.ami]" in text and "examples:" in text
    assert "in-process" not in text and "AsteriskSimulator" not in text


def test_init_writes_the_shipped_files_and_the_config_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "etc"
    assert cli_main(["init", str(dest)]) == 0
    for name, original in SHIPPED.items():
        assert (dest / name).read_bytes() == (ROOT / original).read_bytes(), name
    assert (dest / "gateway.toml").stat().st_mode & 0o777 == 0o640  # it will hold secrets
    assert cli_main(["check-config", str(dest / "gateway.toml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_init_refuses_to_overwrite_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "etc"
    assert cli_main(["init", str(dest)]) == 0
    config = dest / "gateway.toml"
    config.write_text("# mine\n")
    (dest / "mosquitto" / "acl").unlink()
    assert cli_main(["init", str(dest)]) == 1
    assert "not overwriting" in capsys.readouterr().err
    assert config.read_text() == "# mine\n"
    assert not (dest / "mosquitto" / "acl").exists()  # nothing written when refused
    assert cli_main(["init", str(dest), "--force"]) == 0
    assert config.read_bytes() == (ROOT / SHIPPED["gateway.toml"]).read_bytes()
    assert (dest / "mosquitto" / "acl").exists()


def test_send_to_an_unreachable_broker_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "gateway.toml"
    config.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n', encoding="utf-8")
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "id": "cli-unreachable",
                "priority": "hot",
                "message": {"fr": "test"},
                "channels": ["sms"],
                "recipients": [{"ref": "a", "phone": "+32470123412"}],
            }
        ),
        encoding="utf-8",
    )
    done = plp_gateway("send", "--config", str(config), str(job))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "MQTT broker unreachable" in done.stderr
