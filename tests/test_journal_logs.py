"""Under systemd (stderr is the journal, JOURNAL_STREAM names it) each line carries its
syslog priority, so `journalctl -p err` finds errors, and no timestamp of our own."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from tests.conftest import GatewayFactory

TIMESTAMP = re.compile(r"^(<\d>)?\d{4}-\d\d-\d\d ")


def journal_stream(path: Path) -> str:
    """What systemd would put in JOURNAL_STREAM if this file were the journal's socket."""
    path.touch()
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


async def test_lines_carry_journal_priorities_without_timestamps(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    proc = gateway(env={"JOURNAL_STREAM": journal_stream(tmp_path / "gateway.log")})
    config = tmp_path / "gateway.toml"
    config.write_text(config.read_text().replace("concurrency = 4", "concurrency = 0"))
    proc.send_signal(signal.SIGHUP)  # an invalid file: refused, logged as an error
    proc.wait_log("reload refused, configuration unchanged:")

    lines = proc.log().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines[:5]
    assert not [line for line in lines if TIMESTAMP.match(line)]
    assert any(line.startswith("<6>INFO gateway.daemon: gateway test started") for line in lines)
    assert any(
        line.startswith("<3>ERROR gateway.daemon: reload refused, configuration unchanged:")
        for line in lines
    )
    assert any(line.startswith("<7>DEBUG ") for line in lines)  # the test config logs DEBUG


async def test_a_stale_journal_stream_is_ignored(gateway: GatewayFactory, tmp_path: Path) -> None:
    # JOURNAL_STREAM inherited, but stderr is some other file: plain lines, as without systemd.
    other = journal_stream(tmp_path / "elsewhere.log")
    proc = gateway(env={"JOURNAL_STREAM": other})
    lines = proc.log().splitlines()
    assert lines and all(TIMESTAMP.match(line) for line in lines), lines[:5]
    assert not [line for line in lines if line.startswith("<")]
