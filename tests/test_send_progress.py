"""`plp-gateway send` as a person and a script see it: a live progress line that changes in a
terminal (a real pseudo-terminal), then a table of every member; plain lines on a pipe; one
JSON object with --json; documented exit statuses; quiet when the reader closes the pipe."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import GatewayFactory
from tests.fixtures import ROOT, SmtpServer, email_job, members

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def _send(gw_config: Path, job: dict[str, Any], tmp_path: Path, *extra: str) -> list[str]:
    path = tmp_path / f"{job['id']}.json"
    path.write_text(json.dumps(job))
    return [sys.executable, "-m", "gateway", "send", str(path), "-c", str(gw_config), *extra]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=_env(), check=False
    )


def _run_in_pty(
    argv: list[str], timeout: float = 120, term: str = "xterm-256color"
) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal as its stdout; all it wrote, and its exit status."""
    master, slave = pty.openpty()
    env = _env(TERM=term, COLUMNS="160", LINES="50")
    proc = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=slave, env=env, cwd=ROOT)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal (it exited)
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    code = proc.wait(30)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_send_shows_live_progress_in_a_terminal_then_every_member(
    gateway: GatewayFactory, smtp: SmtpServer, tmp_path: Path
) -> None:
    proc = gateway()
    smtp.script.delay = 0.02  # 500 e-mails, 4 at a time: a few seconds to watch
    argv = _send(proc.config, email_job("send-tty", members(500)), tmp_path)
    code, raw = _run_in_pty(argv)
    assert code == 0, raw[-3000:]
    assert "\x1b[" in raw  # drawn with terminal controls, in place
    text = ANSI.sub("", raw)
    seen = [int(n) for n in re.findall(r"reached (\d+)/500", text)]
    assert len(set(seen)) >= 2, f"the progress did not change: {seen}"
    assert seen == sorted(seen) and seen[-1] == 500
    assert re.search(r"email\s+500\s+0\s+0\s+0\s+0", text)  # per channel: 500 delivered
    # Then the table: every member, reached by e-mail.
    table = text[text.rindex("job send-tty: done") :]
    for i in (0, 1, 250, 499):
        assert re.search(rf"m-{i:05d}\s*│\s*reached\s*│\s*email", table), i
    # Not one line per delivery event any more (it printed 1,512 for such a job).
    assert text.count("m-00250") == 1


def test_send_on_a_pipe_prints_plain_lines(
    gateway: GatewayFactory, smtp: SmtpServer, tmp_path: Path
) -> None:
    proc = gateway()
    smtp.script.replies["member3@example.be"] = ["550 5.1.1 no such user"]
    argv = _send(proc.config, email_job("send-pipe", members(20)), tmp_path)
    result = _run(argv)
    assert result.returncode == 1, result.stdout + result.stderr  # one member not reached
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("published job send-pipe")
    assert re.search(
        r"^m-00003\s+not reached\s+-\s+email failed \(smtp_550\)$", result.stdout, re.M
    )
    assert re.search(
        r"^m-00004\s+reached\s+email \d\d:\d\d:\d\d\s+email delivered$", result.stdout, re.M
    )
    assert lines[-1].startswith("job send-pipe done: reached 19/20, 1 not reached | email:")
    assert len(lines) < 20 + 15  # the table, a header, a few progress lines

    # A dumb terminal gets the same plain lines.
    code, raw = _run_in_pty(_send(proc.config, email_job("send-dumb", members(3)), tmp_path),
                            term="dumb")  # fmt: skip
    assert code == 0 and "\x1b" not in raw, raw
    assert "job send-dumb done: reached 3/3 | email: delivered 3" in raw


def test_send_json_and_quiet_for_scripts(
    gateway: GatewayFactory, smtp: SmtpServer, tmp_path: Path
) -> None:
    proc = gateway()
    argv = _send(proc.config, email_job("send-json", members(5)), tmp_path, "--json")
    result = _run(argv)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)  # one object, nothing else
    assert out["state"] == "done" and out["exit"] == 0
    assert out["members"] == {"total": 5, "reached": 5, "acknowledged": 0, "not_reached": 0,
                              "pending": 0}  # fmt: skip
    assert out["channels"]["email"]["delivered"] == 5
    assert {m["ref"] for m in out["member_outcomes"]} == {f"m-{i:05d}" for i in range(5)}

    argv = _send(proc.config, email_job("send-quiet", members(2)), tmp_path, "--quiet")
    result = _run(argv)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    bad = email_job("send-bad", [{"ref": "x", "email": "a@example.be"}], priority="lukewarm")
    argv = _send(proc.config, bad, tmp_path, "--quiet")
    result = _run(argv)
    assert result.returncode == 3  # rejected


def test_send_exits_quietly_when_the_reader_goes(
    gateway: GatewayFactory, smtp: SmtpServer, tmp_path: Path
) -> None:
    proc = gateway()
    smtp.script.delay = 0.05
    argv = _send(proc.config, email_job("send-head", members(200)), tmp_path)
    # `send ... | head -n 1`
    send = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert send.stdout is not None and send.stderr is not None
    head = subprocess.run(
        ["head", "-n", "1"], stdin=send.stdout, capture_output=True, text=True, check=True
    )
    send.stdout.close()  # only `head` holds the pipe's reading end: it has exited
    assert send.wait(120) == 4  # stopped following before the end
    stderr = send.stderr.read().decode()
    assert head.stdout.startswith("published job send-head")
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
