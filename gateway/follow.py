"""`plp-gateway send`: publish a job, then follow its status and delivery events live."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiomqtt

from .config import Config
from .job_id import valid_job_id
from .mqtt import tls_parameters
from .status import Topics

FINAL = {"done", "cancelled", "expired", "rejected"}


def _client(config: Config) -> aiomqtt.Client:
    cfg = config.mqtt
    return aiomqtt.Client(
        cfg.host,
        cfg.port,
        username=cfg.username,
        password=cfg.password,
        tls_params=tls_parameters(cfg),
        tls_insecure=cfg.tls.insecure if cfg.tls is not None else None,
        timeout=10,
    )


def _line(event: dict[str, Any]) -> str:
    reason = f" ({event['reason']})" if event.get("reason") else ""
    return (
        f"  {event.get('ref', '?'):<14} {event.get('channel', '?'):<6} "
        f"{event.get('address', '?'):<26} {event.get('state', '?'):<13} "
        f"attempt {event.get('attempt', 0)}{reason}"
    )


async def follow_job(
    config: Config, job: dict[str, Any], *, follow: bool = True, timeout: float = 3600
) -> int:
    topics = Topics(config.mqtt.topic_prefix, config.node)
    job_id = str(job.get("id"))
    if not valid_job_id(job_id):
        print("the job id breaks the id rule (docs/security.md)", file=sys.stderr)
        return 2
    async with _client(config) as client:
        if follow:
            await client.subscribe(topics.job_status(job_id), qos=1)
            await client.subscribe(topics.job_deliveries(job_id), qos=1)
            await client.subscribe(topics.rejected, qos=1)
        await client.publish(topics.jobs, json.dumps(job).encode(), qos=1)
        print(f"published job {job_id} on {topics.jobs}")
        if not follow:
            return 0
        try:
            async with asyncio.timeout(timeout):
                async for msg in client.messages:
                    body = json.loads(msg.payload) if isinstance(msg.payload, bytes) else {}
                    topic = str(msg.topic)
                    if topic == topics.rejected:
                        if body.get("job_id") == job_id:
                            print(f"REJECTED: {json.dumps(body['errors'], ensure_ascii=False)}")
                            return 3
                    elif topic.endswith("/deliveries"):
                        print(_line(body))
                    elif body.get("state") in FINAL:
                        totals = ", ".join(f"{k}={v}" for k, v in sorted(body["totals"].items()))
                        print(f"job {job_id}: {body['state']} ({totals})")
                        failed = body["totals"].get("failed", 0) + body["totals"].get("expired", 0)
                        return 0 if body["state"] == "done" and not failed else 1
                    else:
                        print(f"job {job_id}: {body.get('state')}")
        except TimeoutError:
            print(f"job {job_id}: still running after {timeout:.0f}s", file=sys.stderr)
            return 4
    return 1
