"""Hot means first all the way to the wire: a hot alert overtakes the cold work already inside
a channel (the SMS link's pacing and window; calls waiting for a free call channel), not
only the cold work still in the scheduler's queue. The same for a free SMTP connection."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.channel import Attempt
from gateway.config import EmailConfig
from gateway.domain import Priority
from gateway.mail import EmailChannel
from gateway.queues import Slots
from sms.pacing import Gate, Pacer
from tests.conftest import GatewayFactory
from tests.fixtures import Mosquitto, Observer, SmtpServer, members
from tests.sms_fixtures import SmscProcess, sms_job
from tests.voice_fixtures import AsteriskProcess, member, number, voice_job

COLD_MEMBERS = 3000  # a minute of work at 50/s: far more than the channel holds
HOT_ALERTS = 5
# A cold submit already on the wire cannot be recalled, and the alert needs a moment to
# cross the broker and the store: 0-2 cold submits (one pacing slot is 20 ms at 50/s) on a
# quiet machine, 1-4 with two more busy processes on two cores. The bounds leave room for a
# loaded CI and stay far below what they guard against: without the hot-first window and
# pacing, 100 cold submits (the channel's fill) go first, every time.
MEDIAN_COLD_AHEAD = 5
MAX_COLD_AHEAD = 15


async def _granted_in_order(
    acquire: Callable[[Priority], Any], release: Callable[[], Any], step: Callable[[], None]
) -> list[str]:
    """Four cold waiters, then a hot one; `step()` frees what they wait for."""
    order: list[str] = []

    async def one(name: str, priority: Priority) -> None:
        await acquire(priority)
        order.append(name)

    tasks = [asyncio.create_task(one(f"cold-{i}", Priority.COLD)) for i in range(4)]
    tasks.append(asyncio.create_task(one("hot", Priority.HOT)))
    await asyncio.sleep(0)  # one turn of the loop: every task is now waiting
    assert order == []
    while len(order) < len(tasks):
        step()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    release()
    return order


async def test_the_sms_pacing_slot_goes_to_a_waiting_hot_submit_first() -> None:
    now = [100.0]
    gate = Gate(Pacer(50, clock=lambda: now[0]), window=10)
    for _ in range(3):  # use up the catch-up burst: the next slot is 20 ms away
        await gate.acquire(Priority.COLD)

    def next_slot() -> None:
        now[0] += 0.02
        gate._grant()  # what the gate's timer does when the slot comes

    order = await _granted_in_order(gate.acquire, gate.release, next_slot)
    assert order[0] == "hot", order


async def test_the_sms_window_slot_goes_to_a_waiting_hot_submit_first() -> None:
    gate = Gate(Pacer(0), window=1)
    await gate.acquire(Priority.COLD)  # the window is full
    order = await _granted_in_order(gate.acquire, gate.release, gate.release)
    assert order[0] == "hot", order


async def test_a_free_call_slot_goes_to_a_waiting_hot_call_first() -> None:
    slots = Slots(1)
    await slots.acquire(Priority.COLD)  # every call channel is busy
    order = await _granted_in_order(slots.acquire, slots.release, slots.release)
    assert order[0] == "hot", order


async def _cold_ahead_of(smsc: SmscProcess, phone: str, since: int, timeout: float) -> int:
    """How many submits the SMSC accepted after the first `since` and before `phone`'s."""
    deadline = time.monotonic() + timeout
    while True:
        order = (await smsc.ctl("order", since=since))["order"]
        dests = [dest for dest, _at in order]
        if phone.removeprefix("+") in dests:
            return dests.index(phone.removeprefix("+"))
        assert time.monotonic() < deadline, f"{phone} never reached the SMSC"
        await asyncio.sleep(0.02)  # polling the simulator's record, not waiting out a delay


async def test_hot_sms_overtakes_the_cold_messages_inside_the_sms_channel(
    gateway: GatewayFactory, broker: Mosquitto, smsc: SmscProcess
) -> None:
    # rate = 50 (a usual operator limit) and a window of 50: before the fix the channel held
    # 2 x 50 cold attempts, each holding its pacing slot, and a hot alert waited ~2 s.
    gateway(smsc.config(window=50, rate=50))
    async with Observer(broker, topics=("jobs/+/status",)) as obs:
        await obs.publish_job(sms_job("cold-1", members(COLD_MEMBERS), priority="cold"))
        await smsc.wait(lambda s: s["counters"].get("accepted", 0) >= 100, 60)
        ahead = []
        for i in range(HOT_ALERTS):
            phone = f"+3249900000{i}"
            since = int((await smsc.ctl("stats"))["counters"]["accepted"])
            hot = [{"ref": f"hot-{i}", "phone": phone, "lang": "fr"}]
            await obs.publish_job(sms_job(f"hot-{i}", hot, priority="hot"))
            ahead.append(await _cold_ahead_of(smsc, phone, since, 30))
            await obs.wait_job(f"hot-{i}", "done", timeout=30)
        assert sorted(ahead)[HOT_ALERTS // 2] <= MEDIAN_COLD_AHEAD, f"cold submits ahead: {ahead}"
        assert max(ahead) <= MAX_COLD_AHEAD, f"cold submits ahead of each hot alert: {ahead}"
        await obs.publish("plp/jobs/cold-1/cancel", json.dumps({"reason": "test over"}))
        await obs.wait_job("cold-1", "cancelled", timeout=30)


async def test_hot_call_takes_the_next_free_call_channel(
    gateway: GatewayFactory, broker: Mosquitto, asterisk: AsteriskProcess, tmp_path: Path
) -> None:
    # Two call channels, cold calls that ring for 3 s (60 s at the simulator's 20x speed).
    gateway(asterisk.config(tmp_path / "sounds", max_channels=2, ring_timeout=60))
    cold = [member(i, 3) for i in range(6)]  # 3: nobody answers, the call rings out
    hot_phone = number(1, 99)
    async with Observer(broker, topics=("jobs/+/status",)) as obs:
        await obs.publish_job(voice_job("cold-calls", cold, priority="cold"))
        await wait_for_record(asterisk, lambda rec: len(rec) >= 2)
        busy = await asterisk.record()
        assert len(busy) == 2, "both call channels are busy with cold calls, others wait"
        hot = [{"ref": "hot", "phone": hot_phone, "lang": "fr"}]
        await obs.publish_job(voice_job("hot-call", hot, priority="hot"))
        digits = hot_phone.removeprefix("+")
        record = await wait_for_record(
            asterisk, lambda rec: any(e["number"] == digits for e in rec)
        )
        placed = [str(e["number"]) for e in sorted(record, key=lambda e: float(e["start"]))]
        assert placed.index(digits) == 2, f"the hot call took the next free channel: {placed}"
        await obs.publish("plp/jobs/cold-calls/cancel", json.dumps({"reason": "test over"}))
        await obs.wait_job("cold-calls", "cancelled", timeout=30)


async def wait_for_record(
    sim: AsteriskProcess, cond: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
) -> list[dict[str, Any]]:
    """The simulator's call record once `cond` holds (polled: it has no event to await)."""
    deadline = time.monotonic() + timeout
    while not cond(record := await sim.record()):
        assert time.monotonic() < deadline, f"never reached: {record}"
        await asyncio.sleep(0.05)
    return record


async def test_a_free_smtp_connection_goes_to_a_waiting_hot_e_mail_first(smtp: SmtpServer) -> None:
    smtp.script.delay = 0.05
    cfg = EmailConfig(
        enabled=True, host="127.0.0.1", port=smtp.port, sender="alerte@police.example.be",
        concurrency=1, timeout=5,
    )  # fmt: skip
    channel = EmailChannel(cfg)
    await channel.start()
    try:
        sends = [asyncio.create_task(channel.send(mail(n, Priority.COLD))) for n in range(4)]
        await asyncio.sleep(0)  # one turn: the first holds the connection, three wait
        sends.append(asyncio.create_task(channel.send(mail(9, Priority.HOT))))
        async with asyncio.timeout(30):
            await asyncio.gather(*sends)
    finally:
        await channel.stop()
    order = [m.rcpts[0].split("@")[0] for m in smtp.mailbox]
    assert order[:2] == ["cold-0", "hot-9"], order


def mail(n: int, priority: Priority) -> Attempt:
    label = priority.label
    return Attempt(
        delivery_id=n, job_id=f"{label}-job", channel="email", ref=f"{label}-{n}",
        address=f"{label}-{n}@example.be", lang="fr", text="Alerte PLP", subject="Alerte",
        priority=priority, number=1, expires_at=datetime.now(UTC) + timedelta(minutes=5),
        test=False,
    )  # fmt: skip
