"""3,000 seeded hostile payloads against the real daemon and broker: it stays up, logs no
traceback, answers every one on plp/jobs/rejected (never `internal_error`), publishes nothing
outside plp/jobs/<a valid id>/... and its own topics, and the next hot job is delivered.
Every kind of payload comes up some 300 times at this seed; PLP_TEST_FUZZ_N=10000 runs the
former count, and a longer soak with other seeds is `python -m bench.bench_hostile soak`."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import aiomqtt

from gateway.job_id import valid_job_id
from tests.conftest import GatewayFactory
from tests.fixtures import Mosquitto, Observer, SmtpServer
from tests.fuzz_payloads import hostile_payloads
from tests.test_hostile_payloads import assert_alive, every_topic, hot_job_goes_out
from tests.test_signed_jobs import SECURITY

SEED = 20261212
COUNT = int(os.environ.get("PLP_TEST_FUZZ_N", "3000"))
OWN_TOPICS = {"plp/jobs", "plp/jobs/rejected", "plp/gateway/test/availability",
              "plp/gateway/test/health"}  # fmt: skip


async def publish_all(broker: Mosquitto, payloads: list[tuple[str, bytes]]) -> None:
    """As dispatch would, but 50 in flight at a time: order does not matter here."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        client.pending_calls_threshold = 100  # (50 in flight is the plan, not a warning)
        for start in range(0, len(payloads), 50):
            chunk = payloads[start : start + 50]
            await asyncio.gather(*(client.publish(t, p, qos=1, timeout=120) for t, p in chunk))


async def test_fuzzed_payloads_never_stop_the_gateway(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer, broker: Mosquitto
) -> None:
    proc = gateway(SECURITY.format(require="false"))
    payloads = list(hostile_payloads(SEED, COUNT))
    ours = {topic for topic, _ in payloads}
    async with every_topic(broker) as topics:
        await publish_all(broker, payloads)
        # (Counted, not parsed, on every wake-up: thousands of messages.)
        await observer.wait(lambda: len(observer.on("/jobs/rejected")) >= COUNT, timeout=120)
        await hot_job_goes_out(observer, smtp, "after-fuzz")

    rejections = observer.rejections()
    assert len(rejections) == COUNT
    found = Counter(e["code"] for r in rejections for e in r["errors"])
    assert "internal_error" not in found, found
    assert all(r["errors"] and r["errors_total"] >= len(r["errors"]) for r in rejections)
    for topic in set(topics) - OWN_TOPICS - ours:
        _, _, job_id, *rest = topic.split("/")
        assert valid_job_id(job_id) and rest in (["status"], ["deliveries"]), repr(topic)
    assert_alive(proc)
