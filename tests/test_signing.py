"""Signed jobs: valid, tampered, wrong key, replayed, stale, unsigned with/without require."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.security_config import SecurityConfig
from gateway.signing import (
    CancelRequest,
    SignatureError,
    Verifier,
    canonical_json,
    sign,
    sign_cancel,
    signing_input,
)
from gateway.signing import (
    main as signing_main,
)

KEY = b"plp-example-key-0123456789abcdef0123456789"
OTHER_KEY = b"another-key-of-a-different-sender-0123456789"
NOW = datetime(2026, 11, 22, 19, 0, 0, tzinfo=UTC)


def job() -> dict[str, Any]:
    return {
        "id": "zone5344-2026-000123",
        "priority": "hot",
        "test": True,
        "message": {
            "fr": "Exercice : cambriolages signalés rue des Tilleuls",
            "nl": "Oefening: inbraken gemeld in de Lindestraat",
        },
        "channels": ["sms"],
        "recipients": [{"ref": "m-0017", "phone": "+32470123412", "lang": "nl"}],
        "ttl": 1800,
    }


def verifier(require: bool = True) -> Verifier:
    return Verifier({"dispatch-1": KEY, "dispatch-2": OTHER_KEY}, window_s=300, require=require)


def reason(v: Verifier, payload: dict[str, Any], now: datetime = NOW) -> str:
    with pytest.raises(SignatureError) as info:
        v.verify(payload, now)
    return info.value.reason


def test_documented_test_vector() -> None:
    """The worked example of docs/operations.md: another implementation must match it."""
    signed = sign(job(), "dispatch-1", KEY, NOW, nonce="q8wz3nJ5mY1cT2aR7vK0pA")
    assert signed["sig"] == {
        "v": 1,
        "alg": "hmac-sha256",
        "kid": "dispatch-1",
        "ts": "2026-11-22T19:00:00Z",
        "nonce": "q8wz3nJ5mY1cT2aR7vK0pA",
        "mac": "b+d+dFnPZE4uyvpggnJ92qyFz8W5vp3ZJWY0MVeuCqI=",
    }
    assert (
        signing_input(job(), "dispatch-1", "2026-11-22T19:00:00Z", "q8wz3nJ5mY1cT2aR7vK0pA")
        == (
            "plp-sig-v1\nhmac-sha256\ndispatch-1\n2026-11-22T19:00:00Z\nq8wz3nJ5mY1cT2aR7vK0pA\n"
            '{"channels":["sms"],"id":"zone5344-2026-000123","message":{"fr":"Exercice : '
            'cambriolages signalés rue des Tilleuls","nl":"Oefening: inbraken gemeld in de '
            'Lindestraat"},"priority":"hot","recipients":[{"lang":"nl","phone":"+32470123412",'
            '"ref":"m-0017"}],"test":true,"ttl":1800}'
        ).encode()
    )


def test_valid_signature_survives_json_round_trip_and_key_order() -> None:
    signed = sign(job(), "dispatch-1", KEY, NOW)
    # What arrives over MQTT: re-serialised, pretty-printed, members in another order.
    wire = json.loads(json.dumps(dict(reversed(list(signed.items()))), indent=2))
    ok = verifier().verify(wire, NOW + timedelta(seconds=2))
    assert ok.signed and ok.kid == "dispatch-1"
    assert ok.job == job()  # `sig` removed: the job model sees the job as before
    assert ok.signed_at == NOW
    assert ok.seen is not None and ok.seen.expires_at == NOW + timedelta(seconds=300)


def test_tampered_job_is_refused() -> None:
    signed = sign(job(), "dispatch-1", KEY, NOW)
    mutations: list[Callable[[dict[str, Any]], object]] = [
        lambda p: p["recipients"][0].__setitem__("phone", "+32470999999"),
        lambda p: p["message"].__setitem__("nl", "Alles veilig"),
        lambda p: p.__setitem__("priority", "cold"),
        lambda p: p.__setitem__("extra", 1),
        lambda p: p["sig"].__setitem__("ts", "2026-11-22T19:00:01Z"),
        lambda p: p["sig"].__setitem__("nonce", "q8wz3nJ5mY1cT2aR7vK0pB"),
    ]
    for mutate in mutations:
        tampered = copy.deepcopy(signed)
        mutate(tampered)
        assert reason(verifier(), tampered) == "bad_signature"


def test_wrong_key_and_unknown_key() -> None:
    # Signed with dispatch-2's key but claiming dispatch-1.
    forged = sign(job(), "dispatch-1", OTHER_KEY, NOW)
    assert reason(verifier(), forged) == "bad_signature"
    stranger = sign(job(), "dispatch-9", KEY, NOW)
    assert reason(verifier(), stranger) == "unknown_key"


def test_replayed_nonce_is_refused_within_the_window() -> None:
    v = verifier()
    signed = sign(job(), "dispatch-1", KEY, NOW)
    v.verify(signed, NOW)
    assert reason(v, signed, NOW + timedelta(seconds=10)) == "replayed"
    # The same nonce from another sender is a different nonce.
    v.verify(sign(job(), "dispatch-2", OTHER_KEY, NOW, nonce=signed["sig"]["nonce"]), NOW)
    # After the window the nonce is forgotten, and the replay is refused as stale instead.
    assert reason(v, signed, NOW + timedelta(seconds=301)) == "stale"
    assert v.seen() == []


def test_stale_and_future_timestamps_are_refused() -> None:
    v = verifier()
    assert reason(v, sign(job(), "dispatch-1", KEY, NOW - timedelta(seconds=301))) == "stale"
    assert reason(v, sign(job(), "dispatch-1", KEY, NOW + timedelta(seconds=301))) == "stale"
    v.verify(sign(job(), "dispatch-1", KEY, NOW - timedelta(seconds=299)), NOW)
    v.verify(sign(job(), "dispatch-1", KEY, NOW + timedelta(seconds=299)), NOW)


def test_unsigned_with_and_without_require() -> None:
    assert reason(verifier(require=True), job()) == "unsigned"
    ok = verifier(require=False).verify(job(), NOW)
    assert not ok.signed and ok.job == job() and ok.seen is None
    # A signature that is present is checked even when signatures are optional.
    bad = sign(job(), "dispatch-1", OTHER_KEY, NOW)
    assert reason(verifier(require=False), bad) == "bad_signature"


_GOOD_SIG = sign(job(), "dispatch-1", KEY, NOW)["sig"]


@pytest.mark.parametrize(
    "sig",
    [
        "abc",
        {},
        {k: v for k, v in _GOOD_SIG.items() if k != "mac"},
        {**_GOOD_SIG, "extra": "x"},
        {**_GOOD_SIG, "v": 2},
        {**_GOOD_SIG, "v": True},
        {**_GOOD_SIG, "alg": "ed25519"},
        {**_GOOD_SIG, "ts": "2026-11-22 19:00:00Z"},
        {**_GOOD_SIG, "ts": "2026-11-22T19:00:00"},
        {**_GOOD_SIG, "ts": "2026-13-45T19:00:00Z"},
        {**_GOOD_SIG, "nonce": "short"},
        {**_GOOD_SIG, "mac": "not base64!"},
        {**_GOOD_SIG, "mac": "AAAA"},
        {**_GOOD_SIG, "kid": 7},
    ],
)
def test_malformed_signatures(sig: object) -> None:
    assert reason(verifier(), {**job(), "sig": sig}) == "malformed_signature"


def test_replay_cache_can_be_persisted_and_restored() -> None:
    first = verifier()
    signed = sign(job(), "dispatch-1", KEY, NOW)
    first.verify(signed, NOW)
    after_restart = verifier()
    after_restart.restore(first.seen(), NOW + timedelta(seconds=5))
    assert reason(after_restart, signed, NOW + timedelta(seconds=5)) == "replayed"


def test_reconfigure_keeps_nonces_and_applies_new_keys() -> None:
    v = verifier()
    signed = sign(job(), "dispatch-1", KEY, NOW)
    v.verify(signed, NOW)
    v.reconfigure(SecurityConfig(keys={"dispatch-1": KEY.decode()}, require_signature=True))
    assert reason(v, signed) == "replayed"
    assert reason(v, sign(job(), "dispatch-2", OTHER_KEY, NOW)) == "unknown_key"


def test_canonical_json_follows_rfc8785() -> None:
    # Numbers and member order from RFC 8785 section 3.2.2 / 3.2.3.
    assert canonical_json([1.0, 1e21, 1e-7, -0.0, 0.000001, 100, 4.5, 333333333.33333329]) == (
        b"[1,1e+21,1e-7,0,0.000001,100,4.5,333333333.3333333]"
    )
    assert canonical_json({"\u20ac": 1, "\r": 2, "\U0001f600": 3, "\ufb33": 4, "1": 5}) == (
        '{"\\r":2,"1":5,"\u20ac":1,"\U0001f600":3,"\ufb33":4}'.encode()
    )
    assert (
        canonical_json({"s": '\u00e9"\\\x01\n\u2028'})
        == '{"s":"é\\"\\\\\\u0001\\n\u2028"}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json(float("nan"))


def test_security_config_checks() -> None:
    assert SecurityConfig().require_signature is False
    cfg = SecurityConfig(keys={"dispatch-1": KEY.decode()}, sign_with="dispatch-1")
    assert cfg.key_bytes() == {"dispatch-1": KEY}
    for bad in (
        {"require_signature": True},
        {"keys": {"dispatch-1": "too-short"}},
        {"keys": {"bad kid": KEY.decode()}},
        {"keys": {"dispatch-1": KEY.decode()}, "sign_with": "dispatch-2"},
        {"replay_window": 0},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            SecurityConfig.model_validate(bad)


def test_sign_command_reproduces_the_test_vector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.json").write_text(json.dumps(job()), encoding="utf-8")
    (tmp_path / "key").write_bytes(KEY + b"\n")
    argv = [str(tmp_path / "job.json"), "--kid", "dispatch-1", "--key-file", str(tmp_path / "key")]
    fixed = ["--nonce", "q8wz3nJ5mY1cT2aR7vK0pA", "--ts", "2026-11-22T19:00:00Z"]
    assert signing_main(argv + fixed) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sig"]["mac"] == "b+d+dFnPZE4uyvpggnJ92qyFz8W5vp3ZJWY0MVeuCqI="
    assert signing_main(argv) == 0
    fresh = json.loads(capsys.readouterr().out)
    verifier().verify(fresh, datetime.now(UTC))


def test_intake_check_returns_what_to_parse_and_forgets_unstored_nonces() -> None:
    """`Verifier.check` is the intake's hook (real clock): bytes in, bytes to parse out."""
    v = verifier(require=False)
    unsigned = json.dumps(job()).encode()
    assert v.check(unsigned) is unsigned
    assert v.check(b"not json") == b"not json"  # the job parser explains what is wrong
    signed = json.dumps(sign(job(), "dispatch-1", KEY, datetime.now(UTC))).encode()
    assert v.check(signed) == canonical_json(job())
    with pytest.raises(SignatureError) as info:
        v.check(signed)
    assert (info.value.reason, info.value.job_id) == ("replayed", "zone5344-2026-000123")
    v.discard(signed)  # storing it failed: the broker's redelivery must pass
    assert v.check(signed) == canonical_json(job())
    v.discard(b"[]")  # never raises


def test_the_check_reads_every_payload_that_may_carry_a_signature() -> None:
    """An unsigned job where signatures are optional is not read by the check (a 10 MB job:
    two parses fewer); one whose `sig` member is named with an escape still is, and fails."""
    v = verifier(require=False)
    unsigned = json.dumps(job()).encode()
    assert not v.reads(unsigned) and v.reads(json.dumps({"sig": 1}).encode())
    assert verifier(require=True).reads(unsigned)
    bad = json.dumps(sign(job(), "dispatch-1", OTHER_KEY, datetime.now(UTC))).encode()
    for name in (b'"\\u0073ig"', b'"s\\u0069g"', b'"si\\u0067"'):
        hidden = bad.replace(b'"sig"', name)
        assert v.reads(hidden)
        with pytest.raises(SignatureError) as info:
            v.check(hidden)
        assert info.value.reason == "bad_signature"


CANCEL_NONCE = "Zk3pW9sQx1VbR6mT0yLd2A"
CANCEL_TS = "2026-11-22T19:05:00Z"


def test_documented_cancel_test_vector(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The signed cancel of docs/operations.md, by the library and by `plp-gateway sign`."""
    signed = sign_cancel(
        "zone5344-2026-000123",
        "dispatch-1",
        KEY,
        datetime.fromisoformat(CANCEL_TS),
        "Exercice terminé",
        CANCEL_NONCE,
    )
    assert (
        signing_input(signed, "dispatch-1", CANCEL_TS, CANCEL_NONCE)
        == (
            "plp-sig-v1\nhmac-sha256\ndispatch-1\n2026-11-22T19:05:00Z\nZk3pW9sQx1VbR6mT0yLd2A\n"
            '{"cancel":"zone5344-2026-000123","reason":"Exercice terminé"}'
        ).encode()
    )
    assert signed["sig"]["mac"] == "GO4o2nWxWyfKsPaMEDic+QQzDtlO2QH/mNx+yL3UNo8="
    (tmp_path / "key").write_bytes(KEY + b"\n")
    argv = ["--kid", "dispatch-1", "--key-file", str(tmp_path / "key")]
    argv += ["--cancel", "zone5344-2026-000123", "--reason", "Exercice terminé"]
    assert signing_main([*argv, "--ts", CANCEL_TS, "--nonce", CANCEL_NONCE]) == 0
    assert json.loads(capsys.readouterr().out) == signed


def test_cancel_is_bound_to_its_job_id() -> None:
    v = verifier(require=True)
    now = datetime.now(UTC)
    good = json.dumps(sign_cancel("job-1", "dispatch-1", KEY, now, "fin")).encode()
    assert v.check_cancel(good, "job-1") == CancelRequest("fin", signed=True)

    def refused(payload: bytes, job_id: str = "job-1", v: Verifier = v) -> tuple[str, str]:
        with pytest.raises(SignatureError) as info:
            v.check_cancel(payload, job_id)
        assert info.value.job_id == job_id
        return info.value.path, info.value.reason

    assert refused(good) == ("sig", "replayed")
    moved = json.dumps(sign_cancel("job-1", "dispatch-1", KEY, now)).encode()
    assert refused(moved, "job-2") == ("$.cancel", "wrong_job")
    a_job = json.dumps(sign(job(), "dispatch-1", KEY, now)).encode()
    assert refused(a_job) == ("$.cancel", "wrong_job")
    assert refused(b"") == ("sig", "unsigned")
    assert refused(b'{"reason": "x"}') == ("sig", "unsigned")
    assert refused(b"garbage") == ("sig", "unsigned")


def test_unsigned_cancels_when_signatures_are_optional() -> None:
    v = verifier(require=False)
    assert v.check_cancel(b"", "job-1") == CancelRequest()
    assert v.check_cancel(b"garbage", "job-1") == CancelRequest()
    assert v.check_cancel(b'{"reason": "fin"}', "job-1") == CancelRequest("fin")
    assert v.check_cancel(b'{"cancel": "job-1"}', "job-1") == CancelRequest()
    with pytest.raises(SignatureError) as info:
        v.check_cancel(b'{"cancel": "job-2"}', "job-1")
    assert info.value.reason == "wrong_job"
    bad = json.dumps(sign_cancel("job-1", "dispatch-1", OTHER_KEY, datetime.now(UTC))).encode()
    with pytest.raises(SignatureError) as info:
        v.check_cancel(bad, "job-1")
    assert info.value.reason == "bad_signature"


def test_accepted_nonces_are_handed_to_the_store_once() -> None:
    v = verifier(require=False)
    now = datetime.now(UTC)
    v.check(json.dumps(job()).encode())  # unsigned: nothing to keep
    assert v.take_unsaved() == []
    signed = json.dumps(sign(job(), "dispatch-1", KEY, now)).encode()
    v.check(signed)
    v.check_cancel(json.dumps(sign_cancel("j", "dispatch-1", KEY, now)).encode(), "j")
    assert len(v.take_unsaved()) == 2
    assert v.take_unsaved() == []
    v.discard(signed)
    assert v.take_unsaved() == []
