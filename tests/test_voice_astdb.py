"""AstDB: the dialplan records each answered call's result (`plp/<PLP_CALL>`), so a call that
ended while no gateway followed it (killed, stopped, AMI link down) is settled from what
Asterisk recorded instead of being dialled again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from panoramisk.actions import Action
from panoramisk.message import Message

from gateway.domain import DeliveryState
from gateway.errors import LinkDown, TemporaryError
from tests.voice_fixtures import (
    FakeAudio,
    attempt,
    call_config,
    kill,
    number,
    sim_config,
    wait_for,
)
from tests.voice_fixtures import started_channel as start
from voice.ami import DB_NOT_FOUND, AmiActionError, AmiNotConnected, db_get_value
from voice.calls import CallOutcome, recorded_result
from voice.simulator import AsteriskSimulator

# What Asterisk 22 writes for DBGet (main/db.c manager_dbget, main/manager.c list helpers).
FOUND = (
    "Response: Success\r\nActionID: q1\r\nEventList: start\r\nMessage: Result will follow\r\n\r\n"
    "Event: DBGetResponse\r\nFamily: plp\r\nKey: plp-7-1\r\nVal: failed,playback_failed\r\n"
    "ActionID: q1\r\n\r\n"
    "Event: DBGetComplete\r\nActionID: q1\r\nEventList: Complete\r\nListItems: 1\r\n\r\n"
)
NOT_FOUND = "Response: Error\r\nActionID: q1\r\nMessage: Database entry not found\r\n\r\n"


def _through_panoramisk(wire: str) -> object:
    """What panoramisk's send_action() resolves to for these bytes."""
    action = Action({"Action": "DBGet", "ActionID": "q1", "Family": "plp", "Key": "plp-7-1"})
    for chunk in wire.split("\r\n\r\n"):
        if chunk.strip():
            action.add_message(Message.from_line(chunk.strip()))
    assert action.future.done()
    return action.future.result()


async def test_dbget_reply_found_gives_the_value() -> None:
    reply = _through_panoramisk(FOUND)
    assert isinstance(reply, list) and len(reply) == 3  # ack, DBGetResponse, DBGetComplete
    assert db_get_value(reply) == "failed,playback_failed"
    result = recorded_result("plp-7-1", "failed,playback_failed")
    assert result is not None
    assert (result.outcome, result.cause, result.played) == (
        CallOutcome.FAILED,
        "playback_failed",
        False,
    )


async def test_dbget_reply_not_found_is_an_error_with_asterisks_message() -> None:
    reply = _through_panoramisk(NOT_FOUND)
    assert isinstance(reply, Message) and reply.get("Response") == "Error"
    assert reply.get("Message") == DB_NOT_FOUND
    assert db_get_value(reply) is None


@pytest.mark.parametrize(
    ("value", "outcome", "digit"),
    [
        ("acknowledged", CallOutcome.ACKNOWLEDGED, "1"),
        ("answered", CallOutcome.ANSWERED, None),
        ("hung_up_early", CallOutcome.HUNG_UP_EARLY, None),
        ("ringing", None, None),  # not something the shipped dialplan writes: call again
    ],
)
def test_recorded_values_map_to_call_outcomes(
    value: str, outcome: CallOutcome | None, digit: str | None
) -> None:
    result = recorded_result("plp-1-1", value)
    assert (result.outcome if result else None) == outcome
    if result is not None:
        assert result.answered and result.recorded and result.digit == digit


async def test_simulator_answers_db_actions_like_asterisk() -> None:
    sim = AsteriskSimulator(sim_config())
    await sim.start()
    reader, writer = await asyncio.open_connection(sim.host, sim.port)

    async def exchange(text: str, until: bytes) -> str:
        writer.write(text.encode())
        await writer.drain()
        async with asyncio.timeout(5):
            return (await reader.readuntil(until)).decode()

    try:
        await reader.readline()  # banner
        login = "Action: Login\r\nUsername: plp-test\r\nSecret: s3cret\r\nEvents: off\r\n\r\n"
        await exchange(login, b"\r\n\r\n")
        miss = "Action: DBGet\r\nActionID: q1\r\nFamily: plp\r\nKey: plp-7-1\r\n\r\n"
        assert await exchange(miss, b"\r\n\r\n") == NOT_FOUND
        put = "Action: DBPut\r\nActionID: p\r\nFamily: plp\r\nKey: plp-7-1\r\nVal: failed,playback_failed\r\n\r\n"
        assert await exchange(put, b"\r\n\r\n") == (
            "Response: Success\r\nActionID: p\r\nMessage: Updated database successfully\r\n\r\n"
        )
        assert await exchange(miss, b"ListItems: 1\r\n\r\n") == FOUND
        delete = "Action: DBDel\r\nActionID: d\r\nFamily: plp\r\nKey: plp-7-1\r\n\r\n"
        assert await exchange(delete, b"\r\n\r\n") == (
            "Response: Success\r\nActionID: d\r\nMessage: Key deleted successfully\r\n\r\n"
        )
        assert "Database entry not found" in await exchange(delete, b"\r\n\r\n")
    finally:
        writer.close()
        await sim.stop()


async def test_calls_that_ended_while_the_gateway_was_down_are_read_back_not_redialled(
    tmp_path: Path,
) -> None:
    sim = AsteriskSimulator(sim_config(speed=5.0))
    await sim.start()
    audio = FakeAudio(tmp_path, seconds=3.0)
    cfg = call_config(sim, ring_timeout=5.0)
    old = await start(cfg, audio)
    # Press 1; hang up early; listen without ack; never answer (ringing at the kill).
    cases = {7: (1, True), 8: (5, True), 9: (6, False), 10: (3, True)}
    sends = [
        asyncio.create_task(old.send(attempt(number(d, i), delivery_id=i, ack=ack)))
        for i, (d, ack) in cases.items()
    ]
    await wait_for(lambda: sum(c.answered for c in sim.live_calls()) == 3)
    await kill(old, sends)
    await wait_for(lambda: not sim.live_calls(), within=15)  # all ended while "down"
    assert set(sim.astdb.family("plp")) == {"plp-7-1", "plp-8-1", "plp-9-1"}  # not the ringing one

    new = await start(cfg, audio)
    try:

        async def retry(i: int) -> object:
            d, ack = cases[i]
            again = attempt(number(d, i), delivery_id=i, number_=2, ack=ack, interrupted=True)
            try:
                return await asyncio.wait_for(new.send(again), 30)
            except TemporaryError as exc:
                return exc

        results = dict(zip(cases, await asyncio.gather(*(retry(i) for i in cases)), strict=True))
        acked, early, heard, ringing = (results[i] for i in cases)
        assert getattr(acked, "state", None) is DeliveryState.ACKNOWLEDGED
        assert getattr(acked, "provider_ids", None) == ("plp-7-1",)
        assert isinstance(early, TemporaryError) and early.reason == "hung_up_early"
        assert getattr(heard, "state", None) is DeliveryState.DELIVERED
        assert isinstance(ringing, TemporaryError) and ringing.reason == "no_answer"
        calls = sim.stats.calls_per_number
        assert [calls[number(d, i)[1:]] for i, (d, _) in cases.items()] == [1, 1, 1, 2]
        await wait_for(lambda: not sim.astdb.family("plp"))  # read records are deleted
    finally:
        await new.stop()
        await sim.stop()


async def test_a_call_that_ends_while_the_ami_link_is_down_is_read_back(tmp_path: Path) -> None:
    sim = AsteriskSimulator(sim_config(speed=5.0))
    await sim.start()
    ch = await start(call_config(sim), FakeAudio(tmp_path, seconds=3.0))
    try:
        assert await ch._ami.wait_up(10)
        send = asyncio.create_task(ch.send(attempt(number(1), delivery_id=3)))
        await wait_for(lambda: bool(sim.live_calls()) and sim.live_calls()[0].answered)
        sim.config.secret = "changed"
        sim.drop_connections()
        await wait_for(lambda: not sim.live_calls(), within=15)
        assert ch._ami.state in ("auth_failed", "connecting", "down")
        sim.config.secret = "s3cret"
        out = await asyncio.wait_for(send, 30)
        assert out.state is DeliveryState.ACKNOWLEDGED  # not call_lost, and not redialled
        assert sim.stats.originates == 1
        await wait_for(lambda: not sim.astdb.family("plp"))
    finally:
        await ch.stop()
        await sim.stop()


async def test_gateway_deletes_the_record_of_a_call_it_followed_to_the_end(tmp_path: Path) -> None:
    sim = AsteriskSimulator(sim_config())
    await sim.start()
    ch = await start(call_config(sim), FakeAudio(tmp_path, seconds=1.0))
    try:
        assert await ch._ami.wait_up(10)
        out = await asyncio.wait_for(ch.send(attempt(number(1), delivery_id=4)), 30)
        assert out.state is DeliveryState.ACKNOWLEDGED
        await wait_for(lambda: not sim.astdb.family("plp"))
        with pytest.raises(AmiActionError) as err:
            await ch._ami.action({"Action": "DBDel", "Family": "plp", "Key": "plp-4-1"})
        assert err.value.message == DB_NOT_FOUND
    finally:
        await ch.stop()
        await sim.stop()


async def test_a_retry_cut_off_before_asking_does_not_lose_the_record(tmp_path: Path) -> None:
    # Attempt 1's call ended while down and was recorded; attempt 2 (its retry) was killed
    # before it could ask; attempt 3 still finds attempt 1's record.
    sim = AsteriskSimulator(sim_config())
    await sim.start()
    sim.astdb.put("plp", "plp-5-1", "acknowledged")
    ch = await start(call_config(sim), FakeAudio(tmp_path))
    try:
        assert await ch._ami.wait_up(10)
        retry = attempt(number(1), delivery_id=5, number_=3, interrupted=True)
        out = await asyncio.wait_for(ch.send(retry), 10)
        assert out.state is DeliveryState.ACKNOWLEDGED and out.provider_ids == ("plp-5-1",)
        assert sim.stats.originates == 0
        await wait_for(lambda: not sim.astdb.family("plp"))
        # Not interrupted: the record of an earlier attempt is not consulted at all.
        sim.astdb.put("plp", "plp-6-1", "acknowledged")
        out = await asyncio.wait_for(ch.send(attempt(number(1), delivery_id=6, number_=2)), 30)
        assert out.provider_ids == ("plp-6-2",) and sim.stats.originates == 1
    finally:
        await ch.stop()
        await sim.stop()


async def test_no_answer_to_dbget_is_retried_later_still_as_interrupted(tmp_path: Path) -> None:
    sim = AsteriskSimulator(sim_config())
    await sim.start()
    ch = await start(call_config(sim), FakeAudio(tmp_path))
    try:
        assert await ch._ami.wait_up(10)

        async def no_answer(family: str, key: str, *, within: float | None = None) -> None:
            raise AmiNotConnected("connection lost")

        ch._ami.db_get = no_answer  # type: ignore[method-assign]
        with pytest.raises(LinkDown) as err:
            await ch.send(attempt(number(1), delivery_id=8, number_=2, interrupted=True))
        assert (err.value.reason, err.value.retry_after) == ("interrupted", 15)
        assert sim.stats.originates == 0  # not dialled without knowing
    finally:
        await ch.stop()
        await sim.stop()
