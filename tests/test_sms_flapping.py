"""A link that flaps must not fail members (issue 12, finding 20), through the daemon.

The SMSC simulator runs as its own process and ends every session after N submit_sm, as
some SMSCs do; the gateway must keep its reconnect delay short (each bind carried traffic)
and must not use up a member's attempts while no link could take them.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import pytest

from gateway.errors import NotSent, TemporaryError
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, members
from tests.sms_fixtures import SmscProcess, attempt, channel, mobile, simulator, sms_config, sms_job
from tests.sms_fixtures import smsc as link
from tests.voice_fixtures import AsteriskProcess

# "smsc NAME: binding again in 0.05s (400 submit_sm answered on the last bind)"
_REBIND = re.compile(r"smsc \w+: binding again in ([0-9.]+)s \((\d+) submit_sm answered")


def delays_after_traffic(log: str) -> list[float]:
    """The delays before a new bind that followed a bind which answered submits."""
    return [float(delay) for delay, answered in _REBIND.findall(log) if int(answered)]


async def test_a_session_ended_every_n_submits_delivers_everyone_once(
    gateway: GatewayFactory, observer: Observer, smsc: SmscProcess
) -> None:
    every, count, initial = 20, 300, 0.05
    await smsc.ctl("fault", close_every=every)
    # A long reconnect_max_delay: had the delay doubled at each of the ~15 session ends
    # (0.05, 0.1, ... 800 s), the job could not end within the wait below.
    proc = gateway(
        smsc.config(
            window=10, reconnect_initial_delay=initial, reconnect_max_delay=600,
            retry={"max_attempts": 6},
        )
    )  # fmt: skip
    recipients = members(count)
    await observer.publish_job(sms_job("flap-1", recipients))

    status = await observer.wait_job("flap-1", "done", timeout=90)
    assert status["totals"] == {"delivered": count}
    events = observer.events("flap-1")
    assert not [e for e in events if e["state"] == "failed"]
    # Nothing lost, nothing doubled: what was written after the Nth submit was neither
    # accepted nor answered (possibly_sent, sent again once).
    counts = Counter(await smsc.counts())
    assert len(counts) == count and set(counts.values()) == {1}
    # Every bind carried traffic: the delay before the next bind stayed at its start value.
    stats = await smsc.ctl("stats")
    ended = stats["counters"]["sessions_ended"]
    assert ended >= count // every
    assert stats["counters"]["binds"] <= ended + 2  # about one per session, none wasted
    delays = delays_after_traffic(proc.log())
    assert len(delays) >= ended - 1
    assert max(delays) <= initial * 1.2 + 0.005, delays


async def test_attempts_that_never_reached_the_smsc_do_not_fail_the_member(
    gateway: GatewayFactory, observer: Observer, smsc: SmscProcess
) -> None:
    # The SMSC refuses every bind for a while: no attempt can leave the gateway.
    await smsc.ctl("fault", password="changed")
    gateway(smsc.config(sms={"link_wait": 0.2}, retry={"max_attempts": 2}))
    recipients = members(5)
    await observer.publish_job(sms_job("flap-2", recipients))

    def waited_or_failed() -> bool:
        events = observer.events("flap-2")
        if any(e["state"] == "failed" for e in events):
            return True
        waits = Counter(
            e["ref"] for e in events if e["state"] == "retrying" and e["reason"] == "link_down"
        )
        return len(waits) == len(recipients) and min(waits.values()) > 2

    await observer.wait(waited_or_failed, timeout=60)
    assert not [e for e in observer.events("flap-2") if e["state"] == "failed"]
    waiting = [e for e in observer.events("flap-2") if e["state"] == "retrying"]
    assert {e["attempt"] for e in waiting} == {0}, "a wait for the link is not an attempt"

    await smsc.ctl("fault", password="secret")
    status = await observer.wait_job("flap-2", "done", timeout=60)
    assert status["totals"] == {"delivered": len(recipients)}
    assert set(Counter(await smsc.counts()).values()) == {1}


async def test_an_smsc_unbinding_every_n_submits_is_rebound_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Channel level, the other way an SMSC ends a session: `unbind` after the Nth submit."""
    caplog.set_level(logging.INFO, logger="sms.session")
    async with simulator(close_every=5, close_with="unbind") as sim:
        config = sms_config(link(sim, reconnect_max_delay=600), link_wait=5.0)
        async with channel(config) as ch:
            for i in range(30):
                for _ in range(10):
                    try:
                        await ch.send(attempt(mobile(i)))
                        break
                    except NotSent:
                        continue  # nothing left the gateway: send again
                    except TemporaryError as exc:
                        assert exc.reason == "possibly_sent", exc
                else:
                    raise AssertionError(f"{mobile(i)} never sent")
    ended = sim.counters["sessions_ended"]
    assert ended == 6
    assert ended <= sim.counters["binds"] <= ended + 2  # about one per session, none wasted
    assert sim.counters["accepted"] == 30 and sim.stats()["duplicates"] == 0
    delays = delays_after_traffic(caplog.text)
    assert len(delays) >= ended - 1 and max(delays) <= 0.05 * 1.2 + 0.005, delays


async def test_a_member_with_a_fallback_does_not_wait_for_an_smsc_that_never_binds(
    gateway: GatewayFactory,
    observer: Observer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    """No SMSC binds at all: SMS members wait for a link without using attempts, but one whose
    job gives SMS a fallback is called after `[jobs] link_down_fallback_after`, not at expiry."""
    await smsc.ctl("fault", password="changed")
    gateway(
        "[jobs]\nlink_down_fallback_after = 0.5\n"
        + smsc.config(sms={"link_wait": 0.2}, retry={"max_attempts": 2})
        + asterisk.config(tmp_path / "sounds")
    )
    # Numbers ending in 6: the simulated callee answers.
    job = sms_job(
        "flap-fb",
        [{"ref": "fb", "phone": "+32470123456"}],
        fallback={"sms": "voice"},
        voice={"ack": False},
    )
    await observer.publish_job(sms_job("flap-wait", [{"ref": "wait", "phone": "+32470123466"}]))
    await observer.publish_job(job)

    def called() -> bool:
        return any(
            e["ref"] == "fb" and e["channel"] == "voice" and e["state"] == "delivered"
            for e in observer.events("flap-fb")
        )

    await observer.wait(called, timeout=60)
    final = {(e["ref"], e["channel"]): e for e in observer.events("flap-fb")}
    assert (final[("fb", "sms")]["state"], final[("fb", "sms")]["reason"]) == (
        "failed",
        "link_down",
    )
    # The member of the job without a fallback still waits for a link, using no attempt.
    waiting = observer.events("flap-wait")
    assert waiting and {(e["state"], e["attempt"]) for e in waiting[1:]} <= {
        ("retrying", 0),
        ("sending", 1),
    }
    assert await asterisk.calls() == {"32470123456": 1}
