"""Numbers the gateway must never text or call (issue 12, finding 11): the number policy per
channel, at intake and through the running daemon with the SMSC and Asterisk simulators."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from phonenumbers.phonemetadata import PhoneMetadata

from gateway.config import JobsConfig, parse_config
from gateway.errors import ConfigError
from gateway.jobs import parse_job
from gateway.numbers import (
    DEFAULT_REGIONS,
    NUMBER_NOT_ALLOWED,
    NumberKind,
    NumberPolicy,
    kind_of_e164,
    refusal,
)
from gateway.store import SqlStore
from sms.config import SmsNumberPolicy
from tests.conftest import GatewayFactory
from tests.fixtures import Observer
from tests.sms_fixtures import SmscProcess, sms_job
from tests.voice_fixtures import AsteriskProcess, voice_job
from voice.config import VoiceNumberPolicy

SMS, VOICE = SmsNumberPolicy(), VoiceNumberPolicy()

# The numbers of the finding, as phonenumbers classifies them.
FORBIDDEN = {
    "+3290312345": NumberKind("BE", "premium_rate"),  # +32 90x
    "+449098790000": NumberKind("GB", "premium_rate"),  # +44 909
    "+979123456789": NumberKind("001", "premium_rate"),  # international premium rate
    "+881612345678": NumberKind("001", "mobile"),  # satellite (Iridium)
    "+8823421234": NumberKind("001", "mobile"),  # international networks
    "+3278151515": NumberKind("BE", "uan"),  # +32 78
    "+80012345678": NumberKind("001", "toll_free"),  # international freephone
}
BE_MOBILE, NL_MOBILE, BE_FIXED = "+32470123456", "+31612345678", "+3225551234"


@pytest.mark.parametrize(("e164", "kind"), FORBIDDEN.items())
def test_the_findings_numbers_are_outside_both_default_policies(
    e164: str, kind: NumberKind
) -> None:
    assert kind_of_e164(e164) == kind
    assert refusal(e164, SMS) == NUMBER_NOT_ALLOWED
    assert refusal(e164, VOICE) == NUMBER_NOT_ALLOWED


@pytest.mark.parametrize(
    ("e164", "sms", "voice"),
    [
        (BE_MOBILE, None, None),
        (NL_MOBILE, None, None),
        ("+33612345678", None, None),
        ("+4915123456789", None, None),
        ("+352628123456", None, None),
        (BE_FIXED, NUMBER_NOT_ALLOWED, None),  # a landline gets the call, not the SMS
        ("+35227123456", NUMBER_NOT_ALLOWED, None),
        ("+447400123456", NUMBER_NOT_ALLOWED, NUMBER_NOT_ALLOWED),  # a UK mobile
        ("+3280012345", NUMBER_NOT_ALLOWED, NUMBER_NOT_ALLOWED),  # Belgian freephone
        ("+31851234567", NUMBER_NOT_ALLOWED, NUMBER_NOT_ALLOWED),  # Dutch VoIP
        ("+32470", "invalid_number", "invalid_number"),  # not E.164
        ("+32112", "invalid_number", "invalid_number"),  # emergency: too short for E.164
        ("+3270123456", NUMBER_NOT_ALLOWED, NUMBER_NOT_ALLOWED),  # type "unknown" (invalid)
    ],
)
def test_default_policies(e164: str, sms: str | None, voice: str | None) -> None:
    assert (refusal(e164, SMS), refusal(e164, VOICE)) == (sms, voice)


@pytest.mark.parametrize("region", DEFAULT_REGIONS)
def test_default_regions_tell_mobile_from_fixed_line(region: str) -> None:
    """Why SMS defaults to `mobile` alone: phonenumbers never answers `fixed_line_or_mobile`
    in these regions (their plans separate the two); it does for e.g. the US."""
    metadata = PhoneMetadata.metadata_for_region(region)
    assert metadata is not None and not metadata.same_mobile_and_fixed_line_pattern
    for wanted in ("mobile", "fixed_line"):
        example = phonenumbers.example_number_for_type(
            region, getattr(phonenumbers.PhoneNumberType, wanted.upper())
        )
        assert example is not None
        e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
        assert kind_of_e164(e164) == NumberKind(region, wanted)
    assert kind_of_e164("+12015550123") == NumberKind("US", "fixed_line_or_mobile")


def test_a_policy_of_other_regions_and_types() -> None:
    policy = NumberPolicy(regions=("gb",), types=("MOBILE", "premium_rate"))
    assert policy.regions == ("GB",) and policy.types == ("mobile", "premium_rate")
    assert refusal("+449098790000", policy) is None
    assert refusal(BE_MOBILE, policy) == NUMBER_NOT_ALLOWED


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("sms", "regions", ["BE", "UK"], "unknown region(s) UK"),
        ("voice", "regions", ["XX"], "unknown region(s) XX"),
        ("voice", "regions", [], "at least 1"),
        ("sms", "types", ["mobile", "premium"], "unknown number type(s) premium"),
        ("voice", "types", ["unknown"], "unknown number type(s) unknown"),
        ("sms", "region", ["BE"], "Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_the_key_and_the_value(
    section: str, key: str, value: list[str], words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({section: {"number_policy": {key: value}}}, "gw.toml")
    ((source, where, why),) = info.value.problems
    assert (source, where) == ("gw.toml", f"{section}.number_policy.{key}")
    assert words in why


def test_config_defaults_per_channel() -> None:
    config = parse_config({"sms": {"number_policy": {"regions": ["BE"]}}})
    assert config.sms.number_policy.types == ("mobile",)
    assert config.voice.number_policy.regions == ("BE", "NL", "FR", "DE", "LU")
    assert config.voice.number_policy.types == ("fixed_line", "mobile", "fixed_line_or_mobile")


def job_of(recipients: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps(
        voice_job("n-1", recipients, channels=["voice", "sms"], **extra), ensure_ascii=False
    ).encode()


POLICIES = {"sms": SMS, "voice": VOICE}
BOTH = frozenset({"sms", "voice"})


def test_intake_refuses_per_channel_and_keeps_emergency_numbers_invalid(
    any_store: SqlStore,
) -> None:
    recipients: list[dict[str, Any]] = [
        {"ref": "premium", "phone": "0903 12 345"},  # national format, default region BE
        {"ref": "fixed", "phone": "02 555 12 34"},
        {"ref": "mobile", "phone": "0470 12 34 56"},
        {"ref": "fixed-voice-only", "phone": BE_FIXED, "channels": ["voice"]},
        *(
            {"ref": f"short-{n.lstrip('+')}", "phone": n}
            for n in ("112", "101", "100", "1307", "+32112")
        ),
    ]
    job, _ = parse_job(
        job_of(recipients, fallback={"voice": "sms"}), JobsConfig(), BOTH, numbers=POLICIES
    )
    by_ref = {r.ref: r for r in job.recipients}
    assert by_ref["premium"].phone == "+3290312345"
    assert by_ref["premium"].phone_refused == BOTH
    assert by_ref["fixed"].phone_refused == {"sms"}
    # Voice only, but SMS is its fallback: refused there too.
    assert by_ref["fixed-voice-only"].phone_refused == {"sms"}
    assert by_ref["mobile"].phone_refused == frozenset()
    for n in ("112", "101", "100", "1307", "+32112"):
        short = by_ref[f"short-{n.lstrip('+')}"]
        assert (short.phone, short.phone_error) == (None, "invalid_phone")

    store = any_store
    _, rows = store.add_job(job, "hash", BOTH)
    reasons = {(r.ref, r.channel): (r.state.value, r.last_error) for r in rows}
    assert reasons[("premium", "sms")] == ("failed", NUMBER_NOT_ALLOWED)
    assert reasons[("premium", "voice")] == ("failed", NUMBER_NOT_ALLOWED)
    assert reasons[("fixed", "sms")] == ("failed", NUMBER_NOT_ALLOWED)
    assert reasons[("fixed", "voice")] == ("queued", None)
    assert reasons[("short-112", "voice")] == ("failed", "invalid_phone")
    # The refusals survive a restart (the job body is read back from the store).
    again = store.job("n-1")
    assert again is not None and again.recipients == job.recipients


def test_without_policies_intake_refuses_nothing_valid() -> None:
    job, _ = parse_job(job_of([{"ref": "p", "phone": "+3290312345"}]), JobsConfig(), BOTH)
    assert job.recipients[0].phone_refused == frozenset()


async def test_daemon_never_texts_or_calls_a_forbidden_number(
    gateway: GatewayFactory,
    observer: Observer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    gateway(smsc.config() + asterisk.config(tmp_path / "sounds"))
    # Allowed numbers end in 6: the simulated callee answers (delivered without an ack).
    allowed = {"be-mobile": "+32470123456", "nl-mobile": "+31612345676", "be-fixed": "+3225551236"}
    forbidden = {f"x-{e164[1:]}": e164 for e164 in FORBIDDEN}
    # A landline called, the call fails (unallocated: last digit 8), the SMS fallback refused.
    fallback = {"ref": "fixed-fallback", "phone": "+3225551238", "channels": ["voice"]}
    recipients = [{"ref": ref, "phone": p} for ref, p in {**allowed, **forbidden}.items()]
    job = voice_job(
        "numbers",
        [*recipients, fallback],
        channels=["voice", "sms"],
        voice={"ack": False},
        fallback={"voice": "sms"},
    )
    await observer.publish_job(job)
    await observer.wait_job("numbers", "done", timeout=60)

    final: dict[tuple[str, str], dict[str, Any]] = {}
    for e in observer.events("numbers"):
        final[(e["ref"], e["channel"])] = e
    for ref in forbidden:
        for channel in ("voice", "sms"):
            event = final[(ref, channel)]
            assert (event["state"], event["reason"]) == ("failed", NUMBER_NOT_ALLOWED), event
    for ref in ("be-mobile", "nl-mobile", "be-fixed"):
        assert final[(ref, "voice")]["state"] == "delivered", final[(ref, "voice")]
    for ref in ("be-mobile", "nl-mobile"):
        assert final[(ref, "sms")]["state"] == "delivered", final[(ref, "sms")]
    assert (final[("be-fixed", "sms")]["state"], final[("be-fixed", "sms")]["reason"]) == (
        "failed",
        NUMBER_NOT_ALLOWED,
    )
    assert final[("fixed-fallback", "voice")]["state"] == "failed"
    assert (
        final[("fixed-fallback", "sms")]["state"],
        final[("fixed-fallback", "sms")]["reason"],
    ) == (
        "failed",
        NUMBER_NOT_ALLOWED,
    )

    texted = set(await smsc.counts())
    called = set(await asterisk.calls())
    assert texted == {allowed["be-mobile"][1:], allowed["nl-mobile"][1:]}
    assert called == {p[1:] for p in allowed.values()} | {fallback["phone"][1:]}


async def test_reloaded_policy_applies_to_the_next_jobs(
    gateway: GatewayFactory, observer: Observer, smsc: SmscProcess, tmp_path: Path
) -> None:
    uk_mobile = "+447400123456"
    proc = gateway(smsc.config())
    await observer.publish_job(sms_job("uk-1", [{"ref": "uk", "phone": uk_mobile}]))
    await observer.wait_job("uk-1", "done")
    assert observer.events("uk-1")[-1]["reason"] == NUMBER_NOT_ALLOWED

    config = tmp_path / "gateway.toml"
    config.write_text(
        config.read_text() + '[sms.number_policy]\nregions = ["BE", "GB"]\ntypes = ["mobile"]\n'
    )
    offset = len(proc.log())
    proc.send_signal(signal.SIGHUP)
    proc.wait_log("configuration reloaded", after=offset)
    await observer.publish_job(sms_job("uk-2", [{"ref": "uk", "phone": uk_mobile}]))
    status = await observer.wait_job("uk-2", "done")
    assert status["totals"] == {"delivered": 1}
    assert set(await smsc.counts()) == {uk_mobile[1:]}
