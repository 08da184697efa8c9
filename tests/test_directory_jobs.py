"""Jobs addressed to the PLP directory, through the daemon with the real broker and the SMSC
and Asterisk simulators: an audience reaches exactly its members, each in their language, with
no personal data on any topic; `no_voice` members get an SMS; a follow-up reaches exactly the
members the first job reached, on the channel that reached them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.directory import Member, Plp
from gateway.domain import CODE_WORD_LINE
from gateway.store import SqliteStore
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer
from tests.sms_fixtures import SmscProcess
from tests.voice_fixtures import AsteriskProcess, number, voice_job

LANGS = ("fr", "nl", "de", "en")


def seed(tmp_path: Path, plp: Plp, members: list[Member]) -> None:
    """The directory in the gateway's store before it starts (as `directory import` does)."""
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        store.import_members(plp.id, members, plp=plp)
    finally:
        store.close()


def member(plp: str, i: int, digit: int, **extra: Any) -> Member:
    return Member(
        plp=plp,
        ref=f"{plp}-{i:03d}",
        lang=LANGS[i % 4],
        phone=number(digit, i),
        email=f"{plp}{i}@example.be",
        phone_kind="BE/mobile",
        **extra,
    )


def audience_job(job_id: str, plps: list[str], groups: list[str], **extra: Any) -> dict[str, Any]:
    job = voice_job(job_id, [], **extra)
    del job["recipients"]
    job["audience"] = {"plps": plps, "groups": groups}
    return job


async def test_an_audience_reaches_its_group_in_their_languages_without_personal_data_on_mqtt(
    gateway: GatewayFactory,
    observer: Observer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    shop = ("shopkeepers",)
    tilleuls = [member("tilleuls", i, 1, groups=shop) for i in range(6)]
    tilleuls[2] = member("tilleuls", 2, 1, groups=shop, no_voice=True)
    tilleuls += [member("tilleuls", i, 1, groups=("farmers",)) for i in range(6, 9)]
    seed(tmp_path, Plp("tilleuls", code_word="Tilleul", sender_id="PLPTilleul"), tilleuls)
    seed(tmp_path, Plp("chenes"), [member("chenes", i, 1, groups=shop) for i in range(3)])
    gateway(smsc.config() + asterisk.config(tmp_path / "sounds"))

    await observer.publish_job(audience_job("aud-1", ["tilleuls"], ["shopkeepers"]))
    status = await observer.wait_job("aud-1", "done")
    assert status["members"]["total"] == 6
    calls = await asterisk.calls()
    called = {m.phone for m in tilleuls if m.phone and m.phone[1:] in calls}
    assert called == {m.phone for m in tilleuls[:6] if not m.no_voice}
    deaf = tilleuls[2]
    [text] = (await smsc.ctl("messages", number=deaf.phone))["messages"]
    # In their language, with the PLP's code word, from the PLP's own sender id.
    word = CODE_WORD_LINE[deaf.lang].format("Tilleul")
    assert text == voice_job("x", [])["message"][deaf.lang] + "\n" + word
    pdus = (await smsc.ctl("pdus", number=deaf.phone))["pdus"]
    assert {p["source_addr"] for p in pdus} == {"PLPTilleul"}
    sms = [len((await smsc.ctl("messages", number=m.phone))["messages"]) for m in tilleuls]
    assert sum(sms) == 1
    events = observer.events("aud-1")
    assert {e["ref"] for e in events} == {m.ref for m in tilleuls[:6]}
    assert {e["channel"] for e in events if e["ref"] == deaf.ref} == {"sms"}

    # Unknown PLPs and groups are refused with their path.
    await observer.publish_job(audience_job("aud-2", ["tilleuls", "nope"], []))
    await observer.publish_job(audience_job("aud-3", ["tilleuls"], ["shopkeepers", "bikers"]))
    rejected = await observer.wait(lambda: len(observer.rejections()) >= 2 or None)
    assert rejected
    paths = {(e["path"], e["code"]) for r in observer.rejections() for e in r["errors"]}
    assert ("$.audience.plps[1]", "unknown_plp") in paths
    assert ("$.audience.groups[1]", "unknown_group") in paths

    everything = b"".join(m.topic.encode() + m.payload for m in observer.seen)
    for m in tilleuls + [member("chenes", i, 1) for i in range(3)]:
        assert m.phone is not None and m.email is not None
        for secret in (m.phone, m.phone[1:], m.email):
            assert secret.encode() not in everything, secret


async def test_a_follow_up_reaches_exactly_who_the_first_job_reached_on_that_channel(
    gateway: GatewayFactory,
    observer: Observer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    answers = member("tilleuls", 0, 1)  # answers the call
    deaf = member("tilleuls", 1, 1, no_voice=True)  # SMS instead
    wrong = member("tilleuls", 2, 8)  # the number does not exist: nobody reached
    seed(tmp_path, Plp("tilleuls"), [answers, deaf, wrong])
    gateway(smsc.config() + asterisk.config(tmp_path / "sounds"))

    await observer.publish_job(audience_job("first", ["tilleuls"], []))
    await observer.wait_job("first", "done")
    follow = voice_job("second", [], message={"nl": "Het gevaar is geweken.", "fr": "Fin."})
    del follow["recipients"]
    follow["follows"] = "first"
    await observer.publish_job(follow)
    await observer.wait_job("second", "done")

    events = observer.events("second")
    assert {(e["ref"], e["channel"]) for e in events} == {(answers.ref, "voice"), (deaf.ref, "sms")}
    calls = await asterisk.calls()
    assert calls[answers.phone[1:]] == 2 and calls[wrong.phone[1:]] == 1  # type: ignore[index]
    texts = (await smsc.ctl("messages", number=deaf.phone))["messages"]
    assert len(texts) == 2 and texts[1].startswith("Het gevaar is geweken.")  # nl member

    # With recipients or an audience too, it is refused.
    both = audience_job("third", ["tilleuls"], [])
    both["follows"] = "first"
    await observer.publish_job(both)
    await observer.wait(lambda: observer.rejections() or None)
    [error] = observer.rejections()[-1]["errors"]
    assert (error["path"], error["code"]) == ("$.follows", "conflict")


async def test_e_mail_carries_the_code_word_and_the_plps_sender_name(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer, tmp_path: Path
) -> None:
    plp = Plp("tilleuls", code_word="Tilleul", sender_id="PLP Linde")
    seed(tmp_path, plp, [member("tilleuls", i, 1) for i in range(2)])
    gateway()
    job = audience_job("mail-1", ["tilleuls"], [])
    job["channels"] = ["email"]
    del job["voice"]
    await observer.publish_job(job)
    await observer.wait_job("mail-1", "done")
    mails = await smtp.await_for(lambda box: len(box) >= 2)
    for mail in mails:
        lang = LANGS[int(mail.rcpts[0].removeprefix("tilleuls")[0])]
        assert mail.body.rstrip().endswith(CODE_WORD_LINE[lang].format("Tilleul"))
        assert mail.message["From"].startswith("PLP Linde <alerte@police.example.be>")


async def test_a_follow_up_works_after_a_cancel(
    gateway: GatewayFactory,
    observer: Observer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    answers = member("tilleuls", 0, 1)  # answers and presses 1
    rings = member("tilleuls", 1, 3)  # never picks up: still ringing when the alert is lifted
    seed(tmp_path, Plp("tilleuls"), [answers, rings])
    gateway(smsc.config() + asterisk.config(tmp_path / "sounds", ring_timeout=300))
    await observer.publish_job(audience_job("alert", ["tilleuls"], []))
    await observer.wait(
        lambda: any(
            e["ref"] == answers.ref and e["state"] == "acknowledged"
            for e in observer.events("alert")
        )
    )
    await observer.publish("plp/jobs/alert/cancel", b"")
    await observer.wait_job("alert", "cancelled")
    lifted = voice_job("lifted", [], message={"fr": "L'alerte est levée."})
    del lifted["recipients"]
    lifted["follows"] = "alert"
    await observer.publish_job(lifted)
    await observer.wait_job("lifted", "done")
    assert {(e["ref"], e["channel"]) for e in observer.events("lifted")} == {(answers.ref, "voice")}
