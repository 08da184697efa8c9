"""Links are probed before an alert needs them: an idle gateway knows whether its SMTP
server, SMSC and Asterisk are usable, says so in its health and in `plp_gateway_link_up`
within a few probe intervals, is `degraded` while one is down, and sees it come back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.simulator_process import SimulatorProcess, free_port
from tests.fixtures import (
    GatewayProcess,
    Mosquitto,
    Observer,
    SmtpServer,
    email_job,
    gateway_config,
    members,
)
from tests.sms_fixtures import SmscProcess
from tests.test_metrics import http_get, samples
from tests.voice_fixtures import AsteriskProcess

LINK_UP = "plp_gateway_link_up"


def start_gateway(
    tmp_path: Path, broker: Mosquitto, smtp: SmtpServer, extra: str = ""
) -> tuple[GatewayProcess, int]:
    """The daemon with e-mail probed every 0.3 s, the metrics endpoint on; its port."""
    port = free_port()
    config = gateway_config(tmp_path, broker, smtp, f"[metrics]\nenabled = true\nport = {port}\n")
    text = config.read_text().replace(
        "concurrency = 4\n", "concurrency = 4\nprobe_interval = 0.3\n"
    )
    config.write_text(text + extra)
    proc = GatewayProcess(config, tmp_path)
    proc.start()
    proc.wait_log(f"metrics on http://127.0.0.1:{port}/metrics")
    return proc, port


def health(observer: Observer) -> dict[str, Any] | None:
    msgs = observer.on("/gateway/test/health")
    return msgs[-1].json() if msgs else None


async def wait_link(observer: Observer, link: str, state: str, gateway: str) -> dict[str, Any]:
    """The first health report with `link` in `state` and the gateway `gateway`."""

    def check() -> dict[str, Any] | None:
        h = health(observer)
        if h is None or h["links"].get(link, {}).get("state") != state:
            return None
        return h if h["state"] == gateway else None

    found: dict[str, Any] = await observer.wait(check, timeout=30)
    return found


async def link_up(port: int, link: str) -> float:
    _code, _headers, body = await http_get(port, "/metrics")
    return samples(body)[(LINK_UP, (("link", link),))]


@contextlib.contextmanager
def paused(sim: SimulatorProcess) -> Iterator[None]:
    """The simulator hangs (SIGSTOP): connections open, nothing answers; as a peer that froze."""
    assert sim.proc is not None
    os.kill(sim.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(sim.proc.pid, signal.SIGCONT)


async def test_idle_gateway_probes_its_smtp_server(
    tmp_path: Path, broker: Mosquitto, observer: Observer, smtp: SmtpServer
) -> None:
    proc, port = start_gateway(tmp_path, broker, smtp)
    try:
        # No job ever: the probe alone finds the server usable.
        h = await wait_link(observer, "email", "up", "ready")
        assert h["links"]["email"]["sent"] == 0 and smtp.mailbox == []
        assert await link_up(port, "email") == 1

        await asyncio.to_thread(smtp.stop)
        h = await wait_link(observer, "email", "down", "degraded")
        assert h["links"]["email"]["last_error"].startswith("smtp_unreachable")
        assert await link_up(port, "email") == 0
        assert "SMTP link down" in proc.log()

        await asyncio.to_thread(smtp.start)
        await wait_link(observer, "email", "up", "ready")
        assert await link_up(port, "email") == 1
        assert smtp.mailbox == [], "a probe sends no mail"
    finally:
        proc.stop()


async def test_idle_gateway_sees_a_hung_smsc_and_its_recovery(
    tmp_path: Path, broker: Mosquitto, observer: Observer, smtp: SmtpServer, smsc: SmscProcess
) -> None:
    sms = smsc.config().replace("enquire_link_interval = 5", "enquire_link_interval = 0.3")
    proc, port = start_gateway(tmp_path, broker, smtp, sms)
    try:
        await wait_link(observer, "sms", "up", "ready")
        assert await link_up(port, "sms") == 1
        with paused(smsc):
            h = await wait_link(observer, "sms", "down", "degraded")
            [bind] = h["links"]["sms"]["binds"]
            # No answer to enquire_link, then none to the bind of each reconnect.
            assert bind["last_error"].startswith(("enquire_link timeout", "connect failed")), bind
            assert await link_up(port, "sms") == 0
        await wait_link(observer, "sms", "up", "ready")
        assert await link_up(port, "sms") == 1
    finally:
        proc.stop()


async def test_idle_gateway_sees_a_hung_asterisk_and_its_recovery(
    tmp_path: Path,
    broker: Mosquitto,
    observer: Observer,
    smtp: SmtpServer,
    asterisk: AsteriskProcess,
) -> None:
    voice = asterisk.config(tmp_path / "sounds").replace(
        "connect_timeout = 3", "connect_timeout = 1\nping_interval = 0.3\naction_timeout = 1"
    )
    proc, port = start_gateway(tmp_path, broker, smtp, voice)
    try:
        await wait_link(observer, "voice", "up", "ready")
        assert await link_up(port, "voice") == 1
        with paused(asterisk):
            h = await wait_link(observer, "voice", "down", "degraded")
            assert await link_up(port, "voice") == 0
            first = len(observer.on("/gateway/test/health"))
            failures = h["links"]["voice"]["failures"]

            # Several reconnects (each a login nobody answers) while it hangs...
            def retried() -> bool:
                now = health(observer)
                return now is not None and now["links"]["voice"]["failures"] >= failures + 2

            await observer.wait(retried, timeout=30)
            # ...and the health said down all along: never a usable link in between.
            reports = [m.json() for m in observer.on("/gateway/test/health")[first:]]
            assert {r["links"]["voice"]["state"] for r in reports} == {"down"}, reports
            assert {r["state"] for r in reports} == {"degraded"}
        await wait_link(observer, "voice", "up", "ready")
        assert await link_up(port, "voice") == 1
    finally:
        proc.stop()


async def test_a_wrong_smtp_password_shows_before_any_alert(
    tmp_path: Path, broker: Mosquitto, observer: Observer
) -> None:
    smtp = SmtpServer(logins={"gw": "right-one"})
    smtp.start()
    credentials = 'username = "gw"\npassword = "wrong-one"\n'
    config = gateway_config(tmp_path, broker, smtp)
    text = config.read_text().replace("concurrency = 4\n", credentials)
    config.write_text(text.replace("max_attempts = 4\n", "max_attempts = 100\n", 1))
    proc = GatewayProcess(config, tmp_path)
    proc.start()
    try:
        h = await wait_link(observer, "email", "auth_failed", "degraded")
        assert h["links"]["email"]["last_error"].startswith("smtp_535")
        # An alert sent meanwhile is retried, not failed: the password is ours, not the
        # member's.
        await observer.publish_job(email_job("auth-1", members(2)))

        def retried() -> bool:
            events = observer.events("auth-1")
            return len([e for e in events if e["reason"] == "smtp_auth_failed"]) >= 2

        await observer.wait(retried, timeout=30)
        assert not [e for e in observer.events("auth-1") if e["state"] == "failed"]
        # The operator fixes the password and reloads: probed at once, not an interval later
        # (the default interval, 30 s, is longer than this wait).
        config.write_text(config.read_text().replace("wrong-one", "right-one"))
        proc.send_signal(signal.SIGHUP)
        await wait_link(observer, "email", "up", "ready")
        status = await observer.wait_job("auth-1", "done", timeout=30)
        assert status["totals"] == {"delivered": 2}
    finally:
        proc.stop()
        smtp.stop()
