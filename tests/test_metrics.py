"""Prometheus endpoint: scraped over real HTTP, the series operators expect are there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics, MetricsConfig, MetricsServer


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)  # server closes after one response
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


R = ("state", "ready")


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
async def served() -> AsyncIterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics(version="0.1.0", node="gw-test")
    server = MetricsServer(metrics, "127.0.0.1", 0)
    await server.start()
    yield metrics, server
    await server.stop()


async def test_scrape_finds_the_operator_series(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.set_state("ready")
    metrics.job_state("accepted")
    metrics.job_state("accepted")
    metrics.job_state("done")
    metrics.delivery_state("email", "sent")
    metrics.delivery_state("sms", "retrying")
    metrics.attempt("email", "ok", 0.042)
    metrics.attempt("sms", "temporary", 1.5)
    metrics.retry("sms")
    metrics.tts_synthesis("espeak-ng", 0.03)
    metrics.tts_cache_hit()
    metrics.reject("bad_signature")
    metrics.reload(ok=False)
    metrics.set_link("smsc", "down", up=False)
    metrics.set_link("smsc", "up", up=True)
    metrics.on_scrape(
        lambda m: m.set_queue_depths(
            {("email", "hot", "ready"): 7, ("email", "cold", "ready"): 300}
        )
    )

    status, headers, body = await http_get(server.port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    got = samples(body)
    expected = {
        ("plp_gateway_build_info", (("node", "gw-test"), ("version", "0.1.0"))): 1,
        ("plp_gateway_state", (("state", "ready"),)): 1,
        ("plp_gateway_state", (("state", "degraded"),)): 0,
        ("plp_gateway_jobs_total", (("state", "accepted"),)): 2,
        ("plp_gateway_jobs_total", (("state", "done"),)): 1,
        ("plp_gateway_deliveries_total", (("channel", "email"), ("state", "sent"))): 1,
        ("plp_gateway_deliveries_total", (("channel", "sms"), ("state", "retrying"))): 1,
        ("plp_gateway_attempts_total", (("channel", "sms"), ("outcome", "temporary"))): 1,
        ("plp_gateway_retries_total", (("channel", "sms"),)): 1,
        ("plp_gateway_send_duration_seconds_count", (("channel", "email"),)): 1,
        ("plp_gateway_send_duration_seconds_bucket", (("channel", "email"), ("le", "0.05"))): 1,
        ("plp_gateway_send_duration_seconds_bucket", (("channel", "sms"), ("le", "1.0"))): 0,
        ("plp_gateway_queue_depth", (("channel", "email"), ("priority", "hot"), R)): 7,
        ("plp_gateway_queue_depth", (("channel", "email"), ("priority", "cold"), R)): 300,
        ("plp_gateway_link_up", (("link", "smsc"),)): 1,
        ("plp_gateway_link_state", (("link", "smsc"), ("state", "up"))): 1,
        ("plp_gateway_tts_syntheses_total", (("engine", "espeak-ng"),)): 1,
        ("plp_gateway_tts_cache_hits_total", ()): 1,
        ("plp_gateway_rejected_payloads_total", (("reason", "bad_signature"),)): 1,
        ("plp_gateway_config_reloads_total", (("result", "refused"),)): 1,
    }
    for key, value in expected.items():
        assert got.get(key) == value, key
    # A link's old state is gone, not left at a stale 1.
    assert ("plp_gateway_link_state", (("link", "smsc"), ("state", "down"))) not in got
    assert any(name == "process_resident_memory_bytes" for name, _ in got)

    # Queue depths refreshed at the next scrape; a pair that vanished reads 0.
    metrics._hooks.clear()
    metrics.set_queue_depths({("email", "hot", "ready"): 1})
    _, _, body = await http_get(server.port, "/metrics")
    got = samples(body)
    assert got[("plp_gateway_queue_depth", (("channel", "email"), ("priority", "hot"), R))] == 1
    assert got[("plp_gateway_queue_depth", (("channel", "email"), ("priority", "cold"), R))] == 0


async def test_other_paths_and_methods(served: tuple[Metrics, MetricsServer]) -> None:
    _, server = served
    assert (await http_get(server.port, "/nope"))[0] == 404
    assert (await http_get(server.port, "/metrics", "POST"))[0] == 405
    status, headers, body = await http_get(server.port, "/metrics", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


async def test_a_failing_scrape_hook_does_not_break_the_endpoint(
    served: tuple[Metrics, MetricsServer],
) -> None:
    metrics, server = served

    def broken(_: Metrics) -> None:
        raise RuntimeError("store closed")

    metrics.on_scrape(broken)
    status, _, body = await http_get(server.port, "/metrics")
    assert status == 200 and b"plp_gateway_jobs" in body


async def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.job_state("done")
    assert b'plp_gateway_jobs_total{state="done"} 1.0' in a.render()
    assert b'plp_gateway_jobs_total{state="done"}' not in b.render()


async def test_stop_closes_the_port_and_a_stuck_client() -> None:
    server = MetricsServer(Metrics(), "127.0.0.1", 0)
    await server.start()
    port = server.port
    # A client that connects and never sends a request must not hold up stop().
    _, idle = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.wait_for(server.stop(), 5)
    idle.close()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)


def test_config_defaults() -> None:
    cfg = MetricsConfig()
    assert (cfg.enabled, cfg.host, cfg.port) == (False, "127.0.0.1", 9464)
