"""The daemon's Prometheus endpoint, scraped while it runs a job: the series operators graph
and alert on move as the job goes (deliveries, attempts, retries, latency, queues, links)."""

from __future__ import annotations

import signal

from gateway.simulator_process import free_port
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members
from tests.test_metrics import http_get, samples

P = "plp_gateway_"


async def test_endpoint_follows_a_job(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    recipients = members(5)
    smtp.script.replies = {
        recipients[0]["email"]: ["451 4.3.0 try later"],
        recipients[1]["email"]: ["550 5.1.1 no such user"],
    }
    port = free_port()
    proc = gateway(f"[metrics]\nenabled = true\nport = {port}\n")
    proc.wait_log(f"metrics on http://127.0.0.1:{port}/metrics")

    code, headers, body = await http_get(port, "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    before = samples(body)
    assert before[(P + "link_up", (("link", "broker"),))] == 1
    assert before[(P + "build_info", (("node", "test"), ("version", "0.1.0")))] == 1

    await observer.publish_job(email_job("metrics-1", recipients))
    await observer.wait_job("metrics-1", "done")
    proc.send_signal(signal.SIGHUP)
    proc.wait_log("configuration reloaded")
    after = samples((await http_get(port, "/metrics"))[2])

    def value(name: str, **labels: str) -> float:
        return after.get((P + name, tuple(sorted(labels.items()))), 0.0)

    assert value("jobs_total", state="done") == 1
    assert value("deliveries_total", channel="email", state="delivered") == 4
    assert value("deliveries_total", channel="email", state="failed") == 1
    assert value("deliveries_total", channel="email", state="retrying") == 1
    assert value("attempts_total", channel="email", outcome="ok") == 4
    assert value("attempts_total", channel="email", outcome="temporary") == 1
    assert value("attempts_total", channel="email", outcome="permanent") == 1
    assert value("retries_total", channel="email") == 1
    assert value("send_duration_seconds_count", channel="email") == 6
    assert value("queue_depth", channel="email", priority="hot", state="ready") == 0
    assert value("inflight", channel="email") == 0
    assert value("link_up", link="email") == 1
    assert value("link_events_total", link="email", event="sent") == 4
    assert value("state", state="ready") == 1
    assert value("config_reloads_total", result="ok") == 1
    assert after[("process_resident_memory_bytes", ())] > 0
