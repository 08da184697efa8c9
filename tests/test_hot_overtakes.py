"""Hot means first all the way to the wire: a hot alert overtakes the cold work already inside
a channel (the SMS link's pacing and window; calls waiting for a free call channel), not
only the cold work still in the scheduler's queue."""

from __future__ import annotations

import asyncio
import json
import time

from tests.conftest import GatewayFactory
from tests.fixtures import Mosquitto, Observer, members
from tests.sms_fixtures import SmscProcess, sms_job

COLD_MEMBERS = 3000  # a minute of work at 50/s: far more than the channel holds
HOT_ALERTS = 4
# A cold submit already on the wire cannot be recalled, and the alert needs a moment to
# cross the broker and the store: one pacing slot (20 ms at 50/s), or two on a busy machine.
# Without the hot-first window and pacing, ~100 cold submits (the channel's fill) go first.
MAX_COLD_AHEAD = 2


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
        assert max(ahead) <= MAX_COLD_AHEAD, f"cold submits ahead of each hot alert: {ahead}"
        await obs.publish("plp/jobs/cold-1/cancel", json.dumps({"reason": "test over"}))
        await obs.wait_job("cold-1", "cancelled", timeout=30)
