"""Benchmark: hostile payloads against the whole gateway (issue 12, part A).

`memory` (default): three 16 MB hostile jobs, then one hot single-recipient job; prints the
gateway's peak RSS (VmHWM from /proc) and how long after the three the hot job's e-mail was
delivered. Shapes: `recipients` (2 M invalid recipients, the kind of payload the issue measured), `bounded` (100,000
invalid recipients with long fields: the most validation work under every bound) and `values`
(as many objects as the value bound lets through: the most memory json builds).
`soak`: the fuzz test's generator with other seeds, bounded in count and time.

Run: .venv/bin/python -m bench.bench_hostile [memory] [--shape recipients|bounded|values]
     .venv/bin/python -m bench.bench_hostile soak [--count 100000] [--max-seconds 600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from bench.procstat import kib, peak_rss_mb  # noqa: E402
from gateway.job_id import valid_job_id  # noqa: E402
from tests.fixtures import (  # noqa: E402
    GatewayProcess,
    Mosquitto,
    Observer,
    SmtpServer,
    email_job,
    gateway_config,
    members,
)
from tests.fuzz_payloads import hostile_payloads  # noqa: E402
from tests.test_signed_jobs import SECURITY  # noqa: E402

LIMIT = 16 * 1024 * 1024  # the default [jobs] max_payload_bytes


def hostile(shape: str, n: int) -> bytes:
    """A job payload of `shape` just under LIMIT bytes."""
    head = json.dumps(email_job(f"hostile-{n}", [])).encode()[:-1]  # without the final "}"
    head = head.replace(b'"recipients": []', b'"recipients": [')
    head, tail = head.split(b'"recipients": [')
    head += b'"recipients": ['
    if shape == "recipients":
        item = b'{"x":1}'
        count = (LIMIT - len(head) - len(tail) - 100) // (len(item) + 1)
    elif shape == "values":
        # As many objects as the value bound lets through (3 values each), in one member's
        # field, and the rest of the 16 MB in one long string: the most objects json builds.
        count = (16 * 100_000 + 4 * 2000 + 1000) // 3 - 100
        objects = b",".join([b'{"a":1}'] * count)
        pad = b"x" * (LIMIT - len(head) - len(tail) - len(objects) - 100)
        payload = head + b'{"ref":[' + objects + b'],"phone":"' + pad + b'"}]' + tail + b"}"
        assert len(payload) <= LIMIT, len(payload)
        return payload
    else:
        count = 100_000
        size = (LIMIT - len(head) - len(tail) - 100) // count - len(b'{"colour":""},')
        item = b'{"colour":"' + b"x" * size + b'"}'
    payload = head + b",".join([item] * count) + b"]" + tail + b"}"
    assert len(payload) <= LIMIT, len(payload)
    return payload


@contextlib.asynccontextmanager
async def stack(extra: str = "") -> AsyncIterator[tuple[Mosquitto, GatewayProcess, Observer]]:
    """mosquitto, an SMTP sink and the gateway (log level BENCH_LOG, default WARNING)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("BENCH_DIR", tmp))
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker")
        broker.start()
        smtp = SmtpServer()
        smtp.start()
        config = gateway_config(work, broker, smtp, extra)
        level = os.environ.get("BENCH_LOG", "WARNING")
        config.write_text(config.read_text().replace('level = "DEBUG"', f'level = "{level}"'))
        gw = GatewayProcess(config, work)
        gw.start()
        try:
            async with Observer(broker) as obs:
                await obs.wait(lambda: obs.on("/gateway/test/availability"), 30)
                yield broker, gw, obs
        finally:
            gw.stop()
            smtp.stop()
            broker.stop()


async def memory(shape: str) -> dict[str, Any]:
    payloads = [hostile(shape, n) for n in range(3)]
    async with stack() as (broker, gw, obs):
        assert gw.proc is not None
        pid = gw.proc.pid
        idle = kib(pid, "status", "VmHWM")
        hot = email_job("hot-after", members(1))
        async with aiomqtt.Client(broker.host, broker.port) as dispatch:
            t_start = time.monotonic()
            for payload in payloads:
                await dispatch.publish("plp/jobs", payload, qos=1, timeout=120)
            t_sent = time.monotonic()
            await dispatch.publish("plp/jobs", json.dumps(hot), qos=1, timeout=30)

        def delivered() -> bool:
            return any(e["state"] == "delivered" for e in obs.events("hot-after"))

        await obs.wait(delivered, 120)
        t_hot = time.monotonic()
        await obs.wait(lambda: len(obs.on("/jobs/rejected")) >= 3, 60)
        rejected = obs.on("/jobs/rejected")
        first = rejected[0].json()
        alive = gw.proc.poll() is None
        peak = kib(pid, "status", "VmHWM")
        tracebacks = gw.log().count("Traceback")
    return {
        "shape": shape,
        "payload_mb": len(payloads[0]) / 1e6,
        "publish_s": t_sent - t_start,
        "hot_delay_s": t_hot - t_sent,
        "idle_rss_mb": idle / 1024,
        "peak_rss_mb": peak / 1024,
        "rejection_bytes": max(len(m.payload) for m in rejected),
        "codes": sorted({e["code"] for e in first["errors"]}),
        "errors_total": first["errors_total"],
        "alive": alive,
        "tracebacks": tracebacks,
    }


async def soak(seed: int, count: int, max_seconds: float, batch: int = 1000) -> None:
    payloads = list(hostile_payloads(seed, count))
    ours = {topic for topic, _ in payloads}
    own = {"plp/jobs", "plp/jobs/rejected", "plp/gateway/test/availability",
           "plp/gateway/test/health"}  # fmt: skip
    sent = 0
    t0 = time.monotonic()
    async with stack(SECURITY.format(require="false")) as (broker, gw, obs):
        async with aiomqtt.Client(broker.host, broker.port) as client:
            client.pending_calls_threshold = 2 * batch
            while sent < count and time.monotonic() - t0 < max_seconds:
                chunk = payloads[sent : sent + batch]
                await asyncio.gather(*(client.publish(t, p, qos=1, timeout=120) for t, p in chunk))
                sent += len(chunk)
                done = sent
                await obs.wait(lambda: len(obs.on("/jobs/rejected")) >= done, 300)  # noqa: B023
        elapsed = time.monotonic() - t0
        hot = email_job("hot-after-soak", members(1))
        await obs.publish_job(hot)
        await obs.wait_job("hot-after-soak", "done", 60)
        rejections = [m.json() for m in obs.on("/jobs/rejected")]
        found = Counter(e["code"] for r in rejections for e in r["errors"])
        outside = [
            t
            for t in set(obs.by_topic) - own - ours
            if not (
                valid_job_id(t.split("/")[2]) and t.split("/")[3:] in (["status"], ["deliveries"])
            )
        ]
        assert gw.proc is not None
        print(f"seed                  {seed}")
        print(f"payloads              {sent} of {count} ({elapsed:.1f} s, {sent / elapsed:.0f}/s)")
        print(f"rejections            {len(rejections)}")
        print(f"internal_error        {found.get('internal_error', 0)}")
        print(f"outside own topics    {len(outside)} {outside[:3]}")
        print(f"tracebacks in log     {gw.log().count('Traceback')}")
        print(f"alive, hot job done   {gw.proc.poll() is None}")
        print(f"peak RSS              {peak_rss_mb(gw.proc.pid):.0f} MB")
        print("codes                 " + ", ".join(f"{c} {n}" for c, n in found.most_common()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", choices=["memory", "soak"], default="memory")
    parser.add_argument("--shape", choices=["recipients", "bounded", "values"], action="append")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    if args.mode == "soak":
        asyncio.run(soak(args.seed, args.count, args.max_seconds))
        return
    for shape in args.shape or ["recipients", "bounded", "values"]:
        r = asyncio.run(memory(shape))
        print(f"shape                 {r['shape']} (3 x {r['payload_mb']:.2f} MB)")
        print(f"published in          {r['publish_s']:.2f} s")
        print(f"hot job delivered     {r['hot_delay_s']:.2f} s after the third")
        print(
            f"gateway RSS           idle {r['idle_rss_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB"
        )
        print(f"rejection             {r['rejection_bytes']} bytes, codes {r['codes']}, "
              f"errors_total {r['errors_total']}")  # fmt: skip
        print(f"alive, tracebacks     {r['alive']}, {r['tracebacks']}")
        print()


if __name__ == "__main__":
    main()
