"""SmsChannel against the SMSC simulator over TCP: submit, ids, receipts, replies, failover."""

from __future__ import annotations

import asyncio

import pytest

from gateway.channel import Channel, Receipt, Reply, settle
from gateway.domain import DeliveryState
from gateway.errors import LinkDown, PermanentError
from sms.channel import SmsChannel
from sms.config import SmsNumberPolicy
from sms.encoding import DC_GSM, DC_UCS2, ESM_UDHI
from sms.session import BindState
from tests.sms_fixtures import (
    MOBILE,
    attempt,
    channel,
    mobile,
    next_report,
    reports_of,
    simulator,
    sms_config,
    smsc,
)


async def test_submit_then_delivered_receipt_with_the_same_id() -> None:
    async with simulator() as sim, channel(sms_config(smsc(sim))) as ch:
        outcome = await ch.send(attempt(MOBILE, "Alerte: cambriolage à Namur"))
        assert outcome.state == DeliveryState.SENT
        assert len(outcome.provider_ids) == 1
        assert outcome.provider_ids[0].startswith("smsc1:")
        report = await next_report(ch)
        assert report == Receipt("sms", outcome.provider_ids[0], DeliveryState.DELIVERED, None)
        sub = sim.submitted[-1].submit
        assert sub.destination_addr == "32470123456"
        assert (sub.dest_addr_ton, sub.dest_addr_npi) == (1, 1)
        assert (sub.source_addr_ton, sub.source_addr) == (5, "PLP")
        assert sub.data_coding == DC_GSM
        assert sub.registered_delivery == 1
        assert sub.validity_period.endswith("R")
        assert sim.messages_to(MOBILE) == ["Alerte: cambriolage à Namur"]


async def test_validity_period_follows_the_expiry() -> None:
    async with simulator() as sim, channel(sms_config(smsc(sim))) as ch:
        await ch.send(attempt(MOBILE, expires_in=2 * 3600 + 61))
        vp = sim.submitted[-1].submit.validity_period
        assert vp.startswith("000000020") and vp.endswith("000R")  # 2 h 1 min (less a second)
        with pytest.raises(PermanentError) as err:
            await ch.send(attempt(MOBILE, expires_in=-5))
        assert err.value.reason == "expired"


async def test_multi_part_message_has_one_id_per_part_and_a_receipt_per_part() -> None:
    text = "Dit is een lang bericht van het BIN. " * 12  # GSM, about 450 characters
    async with simulator() as sim, channel(sms_config(smsc(sim))) as ch:
        outcome = await ch.send(attempt(MOBILE, text))
        assert len(outcome.provider_ids) == 3
        assert len(set(outcome.provider_ids)) == 3
        got = {(await next_report(ch)) for _ in range(3)}
        assert {r.provider_id for r in got if isinstance(r, Receipt)} == set(outcome.provider_ids)
        parts = [s.submit for s in sim.submitted]
        assert all(p.esm_class & ESM_UDHI for p in parts)
        assert [p.short_message[5] for p in parts] == [1, 2, 3]
        assert sim.messages_to(MOBILE) == [text]


async def test_undeliverable_receipt_fails_with_its_status() -> None:
    async with simulator(undeliver={"32470123456"}) as sim, channel(sms_config(smsc(sim))) as ch:
        outcome = await ch.send(attempt(MOBILE))
        report = await next_report(ch)
        assert isinstance(report, Receipt)
        assert report.provider_id == outcome.provider_ids[0]
        assert report.state == DeliveryState.FAILED
        assert report.reason == "UNDELIV:005"


async def test_permanent_submit_error_is_named_after_the_status() -> None:
    async with simulator(reject={"32470123456": 0x0B}) as sim, channel(sms_config(smsc(sim))) as ch:
        with pytest.raises(PermanentError) as err:
            await ch.send(attempt(MOBILE))
        assert err.value.reason == "ESME_RINVDSTADR"
        assert sim.submits_to(MOBILE) == 0


async def test_temporary_submit_error_is_temporary() -> None:
    async with simulator(reject={"32470123456": 0x14}) as sim, channel(sms_config(smsc(sim))) as ch:
        with pytest.raises(Exception) as err:
            await ch.send(attempt(MOBILE))
        assert type(err.value).__name__ == "TemporaryError"
        assert getattr(err.value, "reason", "") == "ESME_RMSGQFUL"


async def test_number_outside_the_policy_is_refused_before_submitting() -> None:
    async with simulator() as sim, channel(sms_config(smsc(sim))) as ch:
        # Intake refuses these already; the channel refuses them on any other path too.
        # (Satellite numbers are mobiles to phonenumbers: only their region gives them away.)
        for number in ("+3222221111", "+881612345678", "+8823421234", "+3290312345"):
            with pytest.raises(PermanentError) as err:
                await ch.send(attempt(number))
            assert err.value.reason == "number_not_allowed"
        assert sim.counters["submit_sm"] == 0


async def test_non_mobile_number_is_refused_before_submitting() -> None:
    policy = SmsNumberPolicy(types=("mobile", "fixed_line"))  # reject_non_mobile still holds
    async with simulator() as sim, channel(sms_config(smsc(sim), number_policy=policy)) as ch:
        with pytest.raises(PermanentError) as err:
            await ch.send(attempt("+3222221111"))  # Brussels fixed line
        assert err.value.reason == "not_mobile"
        assert sim.counters["submit_sm"] == 0


async def test_receipt_for_an_unknown_message_is_reported_and_acknowledged() -> None:
    async with simulator() as sim, channel(sms_config(smsc(sim))) as ch:
        sim.send_receipt("999999", MOBILE, "DELIVRD")
        report = await next_report(ch)
        assert report == Receipt("sms", "smsc1:999999", DeliveryState.DELIVERED, None)
        await sim.wait_until(lambda: sim.counters["deliver_sm_resp"] >= 1)
        assert sim.counters["deliver_sm_resp_errors"] == 0
        assert ch.health()["state"] == "up"


async def test_a_receipt_not_stored_is_answered_retry_later_and_comes_again() -> None:
    """deliver_sm_resp follows the store: ROK once stored, "retry later" when the store
    could not take it (the SMSC then sends the receipt again)."""
    async with simulator() as sim, channel(sms_config(smsc(sim))) as ch:
        sim.send_receipt("424242", MOBILE, "DELIVRD")
        first = await asyncio.wait_for(reports_of(ch).get(), 10)
        assert sim.counters["deliver_sm_resp"] == 0  # not answered before it is settled
        settle(first, False)  # as the daemon does when the store failed
        again = await next_report(ch)  # settled as stored
        assert again == first
        await sim.wait_until(lambda: sim.counters["deliver_sm_resp"] >= 2)
        assert sim.counters["deliver_sm_resp_errors"] == 1


@pytest.mark.parametrize(
    ("id_format", "receipt_id_format"), [("hex", "dec"), ("dec", "hex"), ("hex", "hex")]
)
async def test_decimal_and_hex_ids_meet(id_format: str, receipt_id_format: str) -> None:
    async with simulator(id_format=id_format, receipt_id_format=receipt_id_format) as sim:
        # Make the ids differ between decimal and hex spellings.
        sim._ids = iter(range(4096, 10**6))  # type: ignore[assignment]
        link = smsc(sim, submit_id_format=id_format, receipt_id_format=receipt_id_format)
        async with channel(sms_config(link)) as ch:
            outcome = await ch.send(attempt(MOBILE))
            report = await next_report(ch)
            assert outcome.provider_ids == ("smsc1:4096",)
            assert isinstance(report, Receipt) and report.provider_id == "smsc1:4096"


async def test_replies_are_reported_with_keyword_matching() -> None:
    async with simulator() as sim, channel(sms_config(smsc(sim))) as ch:
        sim.inject_mo("+32470111222", "Bien reçu !")
        sim.inject_mo("+32470111333", "Wie is dit?")
        first, second = await next_report(ch), await next_report(ch)
        assert isinstance(first, Reply) and isinstance(second, Reply)
        assert (first.sender, first.text, first.acknowledges) == (
            "+32470111222", "Bien reçu !", True,
        )  # fmt: skip
        assert (second.sender, second.acknowledges) == ("+32470111333", False)


async def test_dutch_2000_characters_with_accents_over_the_wire() -> None:
    base = "Opgelet: verdachte personen gezien in de Kerkstraat, België; één ideeën café. "
    text = (base * 30)[:2000]
    async with simulator() as sim, channel(sms_config(smsc(sim), max_parts=40)) as ch:
        outcome = await ch.send(attempt(MOBILE, text))
        parts = [s.submit for s in sim.submitted]
        assert len(parts) == len(outcome.provider_ids) == 30  # 2000 / 67 UCS-2 characters
        assert all(p.data_coding == DC_UCS2 for p in parts)
        assert all(len(p.short_message) <= 140 for p in parts)
        assert sim.messages_to(MOBILE) == [text]


async def test_long_text_is_truncated_to_max_parts() -> None:
    text = "Opgelet: één verdachte wagen in de Stationsstraat. " * 40
    async with simulator() as sim, channel(sms_config(smsc(sim), max_parts=3)) as ch:
        outcome = await ch.send(attempt(MOBILE, text))
        assert len(outcome.provider_ids) == 3
        (received,) = sim.messages_to(MOBILE)
        assert received.endswith("...") and text.startswith(received[:-3])  # é is GSM


async def test_emoji_goes_as_ucs2_surrogate_pair() -> None:
    text = "Alerte 🚨 rue Haute 👮"
    async with simulator() as sim, channel(sms_config(smsc(sim))) as ch:
        await ch.send(attempt(MOBILE, text))
        sub = sim.submitted[-1].submit
        assert sub.data_coding == DC_UCS2
        assert sub.short_message == text.encode("utf-16-be")
        assert sim.messages_to(MOBILE) == [text]


async def test_traffic_fails_over_when_one_smsc_is_down() -> None:
    async with simulator() as a, simulator() as b:
        config = sms_config(smsc(a, "a"), smsc(b, "b"))
        async with channel(config) as ch:
            first = [await ch.send(attempt(mobile(i))) for i in range(10)]
            assert {o.provider_ids[0].split(":")[0] for o in first} == {"a", "b"}
            await a.stop()
            assert await ch.sessions[0].wait_state(BindState.DOWN, 5.0)
            rest = [await ch.send(attempt(mobile(100 + i))) for i in range(10)]
            assert {o.provider_ids[0].split(":")[0] for o in rest} == {"b"}
            health = ch.health()
            assert health["state"] == "degraded"


async def test_no_smsc_bound_raises_link_down() -> None:
    async with simulator() as sim:
        port = sim.port
    # nothing listens on `port` any more
    link = smsc(sim, port=port)
    async with channel(sms_config(link, link_wait=0.2), bound=False) as ch:
        with pytest.raises(LinkDown):
            await ch.send(attempt(MOBILE))
        assert ch.health()["state"] == "down"


async def test_channel_implements_the_protocol() -> None:
    async with simulator() as sim:
        ch: Channel = SmsChannel(sms_config(smsc(sim)), asyncio.Queue())
        assert isinstance(ch, Channel)
        limits = ch.limits()
        assert limits.concurrency >= 10 and limits.rate == 0
        assert await ch.prepare(None) == {}  # type: ignore[arg-type]
