"""Helpers for the SMS tests: a simulator on a free port, a running channel, attempts."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.channel import Attempt, Report, Reports, settle
from gateway.domain import Priority
from gateway.simulator_process import SimulatorProcess
from sms.channel import SmsChannel
from sms.config import SmscConfig, SmsConfig
from sms.simulator import SimulatorConfig, SmscSimulator

ROOT = Path(__file__).resolve().parent.parent

MOBILE = "+32470123456"
_ids = itertools.count(1)


@asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[SmscSimulator]:
    sim = SmscSimulator(SimulatorConfig(**options))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def smsc(sim: SmscSimulator, name: str = "smsc1", **overrides: Any) -> SmscConfig:
    """A link to `sim` with test-sized timeouts."""
    values: dict[str, Any] = {
        "name": name,
        "host": "127.0.0.1",
        "port": sim.port,
        "system_id": sim.config.system_id,
        "password": sim.config.password,
        "response_timeout": 2.0,
        "connect_timeout": 2.0,
        "enquire_link_interval": 5.0,
        "reconnect_initial_delay": 0.05,
        "reconnect_max_delay": 0.4,
    }
    values.update(overrides)
    return SmscConfig(**values)


def sms_config(*links: SmscConfig, **overrides: Any) -> SmsConfig:
    return SmsConfig(enabled=True, smsc=links, **overrides)


@asynccontextmanager
async def channel(config: SmsConfig, *, bound: bool = True) -> AsyncIterator[SmsChannel]:
    """A started channel (waiting until every link is bound unless `bound=False`)."""
    reports: Reports = asyncio.Queue()
    ch = SmsChannel(config, reports)
    await ch.start()
    try:
        if bound:
            for s in ch.sessions:
                assert await s.wait_bound(10.0), s.health()
        yield ch
    finally:
        await ch.stop()


def reports_of(ch: SmsChannel) -> Reports:
    return ch._reports


async def next_report(ch: SmsChannel, within: float = 10.0) -> Report:
    async with asyncio.timeout(within):
        report = await reports_of(ch).get()
    settle(report, True)  # as the daemon does once the report is stored
    return report


def attempt(
    address: str = MOBILE,
    text: str = "Alerte PLP: cambriolage rue Haute.",
    *,
    expires_in: float = 3600.0,
    test: bool = False,
) -> Attempt:
    n = next(_ids)
    return Attempt(
        delivery_id=n, job_id="job-1", channel="sms", ref=f"r{n}", address=address, lang="fr",
        text=text, subject="", priority=Priority.HOT, number=1,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in), test=test,
    )  # fmt: skip


def mobile(i: int) -> str:
    """The i-th distinct Belgian mobile number."""
    return f"+32470{i:06d}"


class SmscProcess(SimulatorProcess):
    """`plp-gateway simulate smsc`, receipts after 50 ms unless the test says otherwise."""

    kind = "smsc"
    title = "SMSC simulator"

    def options(self) -> list[str]:
        return ["--receipt-delay", "0.05"]

    async def counts(self) -> dict[str, int]:
        """Accepted submit_sm per destination (E.164 without '+')."""
        submits: dict[str, int] = (await self.ctl("counts"))["submits"]
        return submits

    def config(
        self,
        window: int = 10,
        *,
        sms: dict[str, Any] | None = None,
        retry: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        """The gateway's `[sms]` TOML for a link to this simulator, with test-sized timers;
        `sms` and `retry` override keys of `[sms]` and `[sms.retry]`, `extra` of the link."""
        section = {"enabled": True, "sender": "PolicePLP", "link_wait": 5, **(sms or {})}
        policy = {"initial_delay": 0.2, "max_delay": 1.0, "max_attempts": 20, **(retry or {})}
        link = {
            "name": "sim", "host": "127.0.0.1", "port": self.port, "system_id": "plp",
            "password": "secret", "window": window, "response_timeout": 2,
            "reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.5,
            "enquire_link_interval": 5, **extra,
        }  # fmt: skip
        lines = [
            "[sms]", *(f"{k} = {json.dumps(v)}" for k, v in section.items()),
            "[sms.retry]", *(f"{k} = {json.dumps(v)}" for k, v in policy.items()),
            "[[sms.smsc]]", *(f"{k} = {json.dumps(v)}" for k, v in link.items()),
        ]  # fmt: skip
        return "\n".join(lines) + "\n"


def sms_job(job_id: str, recipients: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "priority": "hot",
        "message": {
            "fr": "Alerte PLP: cambriolages rue des Tilleuls. Fermez portes et fenêtres.",
            "nl": "BIN-alarm: inbraken in de Lindestraat. Sluit deuren en ramen.",
            "de": "KPP-Alarm: Einbrüche in der Lindenstraße. Schließen Sie Türen und Fenster.",
            "en": "PLP alert: burglaries in Linden Street. Lock doors and windows.",
        },
        "channels": ["sms"],
        "recipients": recipients,
        "ttl": 900,
    }
    job.update(extra)
    return job
