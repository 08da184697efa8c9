"""At the shipped log level (INFO) a delivery's usual way (queued, sending, delivered) is not
logged line by line: the job's end is one line with its counts, and what went wrong with a
member is one line of its own. At DEBUG every change is logged, masked like every line."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures import (
    GatewayProcess,
    Mosquitto,
    Observer,
    SmtpServer,
    email_job,
    gateway_config,
    members,
)


async def test_info_logs_the_jobs_end_and_the_failures_not_each_delivery(
    tmp_path: Path, broker: Mosquitto, smtp: SmtpServer, observer: Observer
) -> None:
    config = gateway_config(tmp_path, broker, smtp)
    config.write_text(config.read_text().replace('level = "DEBUG"', 'level = "INFO"'))
    proc = GatewayProcess(config, tmp_path)
    proc.start()
    try:
        proc.wait_log("connected to MQTT broker")
        recipients = [*members(3), {"ref": "broken", "email": "nobody-at-all", "lang": "nl"}]
        await observer.publish_job(email_job("logs-1", recipients))
        status = await observer.wait_job("logs-1", "done")
        assert status["totals"] == {"delivered": 3, "failed": 1}
        proc.wait_log("job logs-1 done: 4 deliveries, delivered=3 failed=1")
    finally:
        proc.stop()
    log = proc.log()
    assert "ref=broken channel=email to=- queued->failed attempt=0 reason=invalid_email" in log
    assert "->sending" not in log and "->delivered" not in log
    assert log.count("job logs-1 done:") == 1
    assert not [r for r in recipients if r["email"] in log]


async def test_debug_logs_every_change_masked(
    tmp_path: Path, broker: Mosquitto, smtp: SmtpServer, observer: Observer
) -> None:
    proc = GatewayProcess(gateway_config(tmp_path, broker, smtp), tmp_path)  # DEBUG
    proc.start()
    try:
        proc.wait_log("connected to MQTT broker")
        recipients = members(2)
        await observer.publish_job(email_job("logs-2", recipients))
        await observer.wait_job("logs-2", "done")
        proc.wait_log("job logs-2 done: 2 deliveries, delivered=2")
    finally:
        proc.stop()
    log = proc.log()
    for r in recipients:
        assert f"ref={r['ref']} channel=email to=m***@example.be sending->delivered" in log
        assert r["email"] not in log
