"""Faults on the SMPP link, each against the simulator over TCP: the bind heals itself."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.channel import Receipt
from gateway.errors import TemporaryError
from sms import pdu as P
from sms.session import BindState
from tests.sms_fixtures import MOBILE, attempt, channel, mobile, next_report, simulator, sms_config
from tests.sms_fixtures import smsc as link


async def test_wrong_password_is_retried_with_backoff_and_shown_in_health() -> None:
    async with simulator() as sim:
        config = sms_config(link(sim, password="wrong"))
        async with channel(config, bound=False) as ch:
            started = time.monotonic()
            await sim.wait_until(lambda: sim.counters["bind_failures"] >= 3, 10.0)
            elapsed = time.monotonic() - started
            health = ch.health()
            assert health["state"] == "down"
            binds = health["binds"]
            assert isinstance(binds, list)
            bind = binds[0]
            assert bind["last_error"] == "bind rejected: ESME_RINVPASWD"
            # Backoff, not a crash loop: 0.05 s doubling to 0.4 s allows only a few tries.
            assert sim.counters["bind_failures"] <= 4 + elapsed / 0.3
            # The operator fixes the password at the SMSC: the bind recovers by itself.
            sim.config.password = "wrong"
            assert await ch.sessions[0].wait_state(BindState.BOUND, 5.0)
            await ch.send(attempt(MOBILE))


async def test_smsc_closing_mid_window_reports_possibly_sent_then_recovers() -> None:
    async with simulator(response_delay=0.5) as sim, channel(sms_config(link(sim))) as ch:
        sends = [asyncio.create_task(ch.send(attempt(mobile(i)))) for i in range(8)]
        await sim.wait_until(lambda: sim.counters["accepted"] == 8)
        sim.drop_connections()
        results = await asyncio.gather(*sends, return_exceptions=True)
        assert all(isinstance(r, TemporaryError) for r in results), results
        assert {r.reason for r in results if isinstance(r, TemporaryError)} == {"possibly_sent"}
        sim.config.response_delay = 0
        assert await ch.sessions[0].wait_state(BindState.BOUND, 5.0)
        outcome = await ch.send(attempt(MOBILE))
        assert outcome.provider_ids


async def test_silent_smsc_times_out_and_the_link_is_reset() -> None:
    async with simulator() as sim:
        config = sms_config(link(sim, response_timeout=0.3))
        async with channel(config) as ch:
            session = ch.sessions[0]
            sim.config.silent = True
            with pytest.raises(TemporaryError) as err:
                await ch.send(attempt(MOBILE))
            assert err.value.reason == "possibly_sent"
            # The timeout triggers an enquire_link, unanswered too: the link is reset.
            assert await session.wait_state(BindState.CONNECTING, 5.0)
            assert session.last_error == "enquire_link timeout"
            sim.config.silent = False
            assert await session.wait_state(BindState.BOUND, 5.0)
            assert (await ch.send(attempt(MOBILE))).provider_ids
            assert sim.counters["binds"] >= 2


@pytest.mark.parametrize(
    "garbage",
    [
        P.HEADER.pack(8, P.Cmd.DELIVER_SM, 0, 1),  # impossible command_length
        P.HEADER.pack(18, P.Cmd.DELIVER_SM, 0, 2) + b"\x00\x01",  # truncated deliver_sm
    ],
    ids=["bad-length", "truncated-body"],
)
async def test_malformed_pdu_resets_the_link_and_the_channel_lives(garbage: bytes) -> None:
    async with simulator() as sim, channel(sms_config(link(sim))) as ch:
        session = ch.sessions[0]
        assert sim.send_raw(garbage) == 1
        assert await session.wait_state(BindState.CONNECTING, 5.0)
        assert session.last_error is not None and "malformed" in session.last_error
        assert await session.wait_state(BindState.BOUND, 5.0)
        assert (await ch.send(attempt(MOBILE))).provider_ids


async def test_clean_unbind_on_stop() -> None:
    async with simulator() as sim:
        async with channel(sms_config(link(sim))) as ch:
            await ch.send(attempt(MOBILE))
        assert sim.counters["unbinds"] == 1
        assert ch.sessions[0].state == BindState.STOPPED


async def test_smsc_unbind_is_answered_and_the_bind_comes_back() -> None:
    async with simulator() as sim, channel(sms_config(link(sim))) as ch:
        session = ch.sessions[0]
        assert sim.send_raw(P.header_only(P.Cmd.UNBIND, 77)) == 1
        assert await session.wait_state(BindState.CONNECTING, 5.0)
        assert await session.wait_state(BindState.BOUND, 5.0)
        assert sim.counters["binds"] == 2


async def test_transmitter_plus_receiver_binds() -> None:
    async with simulator() as sim:
        config = sms_config(link(sim, bind_mode="transmitter_receiver"))
        async with channel(config) as ch:
            assert sim.bound("tx") == 1 and sim.bound("rx") == 1
            outcome = await ch.send(attempt(MOBILE))
            report = await next_report(ch)
            assert isinstance(report, Receipt) and report.provider_id == outcome.provider_ids[0]


async def test_drops_every_few_hundred_ms_lose_and_double_nothing_unexpected() -> None:
    """Like the scheduler: retry temporary failures; only `possibly_sent` may double."""
    count = 400
    async with simulator(drop_every=0.2) as sim:
        # 400/s: the run lasts about a second, so the link drops several times.
        config = sms_config(link(sim, window=10, rate=400, response_timeout=1.0), link_wait=5.0)
        async with channel(config) as ch:
            possibly_sent: set[str] = set()

            async def deliver(number: str) -> None:
                for _ in range(50):
                    try:
                        await ch.send(attempt(number))
                        return
                    except TemporaryError as exc:
                        if exc.reason == "possibly_sent":
                            possibly_sent.add(number)
                raise AssertionError(f"{number} never sent")

            numbers = [mobile(i) for i in range(count)]
            sem = asyncio.Semaphore(20)

            async def limited(number: str) -> None:
                async with sem:
                    await deliver(number)

            async with asyncio.timeout(60):
                await asyncio.gather(*(limited(n) for n in numbers))
            assert sim.counters["dropped_connections"] >= 2
            for n in numbers:
                got = sim.submits_to(n)
                assert got >= 1, n
                assert got == 1 or n in possibly_sent, n
