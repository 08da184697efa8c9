"""`plp-gateway tts` writes exactly what a member would hear, as a playable file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from voice.tts_cli import main

from .tts_fixtures import read_wav


def _probe(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    stream: dict[str, object] = json.loads(out)["streams"][0]
    return stream


def test_cli_writes_a_playable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "listen" / "out.wav"
    argv = ["Inbraak in de Kerkstr. 5 om 20u30.", "--lang", "nl", "-o", str(out)]
    rc = main([*argv, "--ack", "--test", "--plp-name", "BIN Zonnebeke", "--show-text"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Goedendag, hier BIN Zonnebeke" in printed and "Kerkstraat" in printed
    assert "Druk op de toets 1" in printed and "wrote" in printed
    stream = _probe(out)
    assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (
        "pcm_s16le",
        "8000",
        1,
    )
    wav = read_wav(out)
    assert wav.duration > 10 and wav.rms_dbfs(0.3) > -30
    assert [p.name for p in out.parent.iterdir()] == ["out.wav"]


def test_cli_uses_the_config_file_and_reports_failure(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[voice.tts]\nformat = "alaw"\n[voice.tts.espeak]\nbinary = "/nonexistent/espeak"\n'
    )
    out = tmp_path / "out.alaw"
    assert main(["Alarm", "--lang", "de", "-o", str(out), "--config", str(config)]) == 1
    assert not out.exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('[voice.tts]\nengines = ["festival"]\n')
    assert main(["Alarm", "--lang", "de", "-o", str(out), "--config", str(bad)]) == 2


def test_cli_through_plp_gateway(tmp_path: Path) -> None:
    out = tmp_path / "fr.sln"
    args = ["Alerte", "--lang", "fr", "-o", str(out), "--format", "sln", "--engine", "espeak"]
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "tts", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 16000  # more than a second of 8 kHz 16-bit audio
