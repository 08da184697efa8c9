"""Members' choices through the daemon (real broker, SMSC simulator, SMTP server): a cold
message waits for the end of quiet hours, the daily cap holds, a hot alert ignores both; STOP
unsubscribes from cold messages and START subscribes again, each confirmed by SMS; a free reply
goes to the PLP's coordinators, masked."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.directory import Coordinator, Member, Plp
from gateway.replies import CONFIRM
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer
from tests.sms_fixtures import SmscProcess, sms_job
from tests.test_directory_jobs import seed


def cold_job(job_id: str, priority: str = "cold") -> dict[str, Any]:
    job = sms_job(job_id, [], priority=priority)
    del job["recipients"]
    job["audience"] = {"plps": ["tilleuls"]}
    return job


def states(observer: Observer, job_id: str) -> list[tuple[str, str | None]]:
    return [(e["state"], e.get("reason")) for e in observer.events(job_id)]


ANNE = Member("tilleuls", "anne", "nl", phone="+32470000011", phone_kind="BE/mobile")


async def test_quiet_hours_hold_cold_the_cap_holds_and_hot_ignores_both(
    gateway: GatewayFactory, observer: Observer, smsc: SmscProcess, tmp_path: Path
) -> None:
    seed(tmp_path, Plp("tilleuls"), [ANNE])
    # Quiet hours that began a minute ago and end a few seconds from now (Brussels time).
    now = datetime.now(ZoneInfo("Europe/Brussels"))
    window = f"{now - timedelta(minutes=1):%H:%M:%S}-{now + timedelta(seconds=6):%H:%M:%S}"
    gateway(smsc.config() + f'[directory]\nquiet_hours = "{window}"\ncold_daily_cap = 2\n')

    await observer.publish_job(cold_job("cold-1"))
    await observer.wait(lambda: states(observer, "cold-1"))
    assert states(observer, "cold-1")[0] == ("held", "quiet_hours")
    held = observer.events("cold-1")[0]
    assert "next_attempt_at" in held
    await observer.publish_job(cold_job("hot-1", "hot"))
    await observer.wait_job("hot-1", "done")
    assert "held" not in [s for s, _ in states(observer, "hot-1")]  # hot is never held
    # When the quiet hours end, the held message is sent.
    await observer.wait_job("cold-1", "done")
    assert states(observer, "cold-1")[-1][0] == "delivered"

    await observer.publish_job(cold_job("cold-2"))  # the 2nd cold message today: sent
    await observer.wait_job("cold-2", "done")
    await observer.publish_job(cold_job("cold-3"))  # the 3rd: over the cap
    await observer.wait_job("cold-3", "done")
    assert states(observer, "cold-2")[-1][0] == "delivered"
    assert states(observer, "cold-3") == [("capped", "daily_cap")]
    await observer.publish_job(cold_job("hot-2", "hot"))  # hot is never capped
    await observer.wait_job("hot-2", "done")
    assert states(observer, "hot-2")[-1][0] == "delivered"
    texts = (await smsc.ctl("messages", number=ANNE.phone))["messages"]
    assert len(texts) == 4  # hot-1, cold-1, cold-2, hot-2


async def test_stop_then_start_and_a_free_reply_forwarded_to_the_coordinator(
    gateway: GatewayFactory,
    observer: Observer,
    smsc: SmscProcess,
    smtp: SmtpServer,
    tmp_path: Path,
) -> None:
    coordinator = Coordinator(email="coord@police.example.be")
    seed(tmp_path, Plp("tilleuls", names={"nl": "BIN Linde"}, coordinators=(coordinator,)), [ANNE])
    gateway(smsc.config() + '[directory]\nquiet_hours = ""\n')
    assert ANNE.phone is not None

    async def sms_to_anne(n: int) -> list[str]:
        """Anne's SMS at the simulator, once there are `n` (polled: the simulator does not
        push)."""
        async with asyncio.timeout(30):
            while True:
                texts: list[str] = (await smsc.ctl("messages", number=ANNE.phone))["messages"]
                if len(texts) >= n:
                    return texts
                await asyncio.sleep(0.05)

    await smsc.ctl("mo", source=ANNE.phone, text="STOP")
    texts = await sms_to_anne(1)
    assert texts[0] == CONFIRM["stop"]["nl"]  # confirmed in her language
    await observer.publish_job(cold_job("cold-1"))
    await observer.wait_job("cold-1", "done")
    assert states(observer, "cold-1") == [("unsubscribed", "unsubscribed")]
    await observer.publish_job(cold_job("hot-1", "hot"))  # default: hot still sent
    await observer.wait_job("hot-1", "done")
    assert states(observer, "hot-1")[-1][0] == "delivered"

    await smsc.ctl("mo", source=ANNE.phone, text="start")
    texts = await sms_to_anne(3)
    assert texts[2] == CONFIRM["start"]["nl"]
    await observer.publish_job(cold_job("cold-2"))
    await observer.wait_job("cold-2", "done")
    assert states(observer, "cold-2")[-1][0] == "delivered"

    await smsc.ctl("mo", source=ANNE.phone, text="Ik zie een verdachte wagen")
    [mail] = await smtp.await_for(lambda box: len(box) >= 1)
    assert mail.rcpts == ["coord@police.example.be"]
    assert "anne" in mail.body and "+32470****11" in mail.body
    assert "Ik zie een verdachte wagen" in mail.body and ANNE.phone not in mail.body
    inbound = await observer.wait(
        lambda: [m.json() for m in observer.on("/inbound/sms")
                 if m.json()["text"] == "Ik zie een verdachte wagen"]
    )  # fmt: skip
    assert ANNE.phone not in str(inbound)
    everything = b"".join(m.topic.encode() + m.payload for m in observer.seen)
    assert ANNE.phone.encode() not in everything and ANNE.phone[1:].encode() not in everything
