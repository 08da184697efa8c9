"""Bytes-level SMS behaviour: GSM/UCS-2 choice, UDH parts, PDU codec, receipts, keywords."""

from __future__ import annotations

from typing import Any

import phonenumbers
import pytest
import smpplib.gsm

from gateway.numbers import parse_e164 as _parse_e164
from sms import pdu as P
from sms.channel import e164
from sms.encoding import (
    DC_GSM,
    DC_UCS2,
    ESM_UDHI,
    TooLong,
    concat_info,
    decode_text,
    encode_text,
    strip_udh,
)
from sms.receipts import DeliveryReport, KeywordMatcher, MobileOriginated, canonical_id, classify


def _joined(parts: tuple[bytes, ...], dc: int) -> str:
    return "".join(decode_text(p, dc, ESM_UDHI if len(parts) > 1 else 0) for p in parts)


def test_gsm_with_extension_table_when_everything_fits() -> None:
    text = "Prijs: 5€ [zie] {info} ~ | \\ ^ @ £ é ü Ñ §"
    enc = encode_text(text)
    assert enc.data_coding == DC_GSM and len(enc.parts) == 1
    assert enc.parts[0].count(0x1B) == 9  # € [ ] { } ~ | \ ^ take two septets each
    assert decode_text(enc.parts[0], DC_GSM) == text


def test_single_part_matches_smpplib_make_parts() -> None:
    for text in ("Alerte PLP: rue Haute 12", "Oefening: ideeën in België"):
        parts, dc, esm = smpplib.gsm.make_parts(text)
        enc = encode_text(text)
        assert (list(enc.parts), enc.data_coding, enc.esm_class) == (parts, dc, esm)


def test_one_non_gsm_character_switches_the_whole_text_to_ucs2() -> None:
    enc = encode_text("Opgelet in België")  # ë is not in GSM 03.38
    assert enc.data_coding == DC_UCS2
    assert enc.parts == ("Opgelet in België".encode("utf-16-be"),)


@pytest.mark.parametrize(("length", "parts"), [(160, 1), (161, 2), (306, 2), (307, 3)])
def test_gsm_part_boundaries(length: int, parts: int) -> None:
    assert len(encode_text("a" * length).parts) == parts


@pytest.mark.parametrize(("length", "parts"), [(70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_part_boundaries(length: int, parts: int) -> None:
    assert len(encode_text("ë" * length).parts) == parts


def test_escape_pairs_are_never_split_across_parts() -> None:
    text = "a" * 152 + "€" + "b" * 20  # the euro sign straddles octet 153
    enc = encode_text(text)
    assert enc.data_coding == DC_GSM
    assert all(not strip_udh(p)[1].endswith(b"\x1b") for p in enc.parts)
    assert _joined(enc.parts, DC_GSM) == text
    # smpplib's fixed split breaks it: the reason encoding.py splits by itself.
    broken, _, _ = smpplib.gsm.make_parts(text)
    assert broken[0].endswith(b"\x1b")


def test_emoji_surrogate_pairs_are_never_split() -> None:
    text = "x" * 66 + "🚨" + "y" * 10
    enc = encode_text(text)
    assert enc.data_coding == DC_UCS2 and len(enc.parts) == 2
    assert _joined(enc.parts, DC_UCS2) == text
    assert all(len(p) <= 140 for p in enc.parts)


def test_udh_concatenation_header() -> None:
    enc = encode_text("Dutch: één, twee, drie. " * 20)
    assert enc.esm_class == ESM_UDHI
    infos = [concat_info(strip_udh(p)[0]) for p in enc.parts]
    refs = {i[0] for i in infos if i}
    assert len(refs) == 1
    assert [(i[1], i[2]) for i in infos if i] == [
        (len(enc.parts), n + 1) for n in range(len(enc.parts))
    ]
    assert all(p[:3] == b"\x05\x00\x03" for p in enc.parts)


def test_2000_dutch_characters_split_into_ucs2_parts() -> None:
    text = ("Verdachte wagen gezien in de Kerkstraat te Gent, België. Geen paniek. " * 40)[:2000]
    enc = encode_text(text, max_parts=40)
    assert enc.data_coding == DC_UCS2 and len(enc.parts) == 30 and not enc.truncated
    assert _joined(enc.parts, DC_UCS2) == text


def test_max_parts_truncates_or_fails() -> None:
    text = "ë" * 1000
    enc = encode_text(text, max_parts=4)
    assert len(enc.parts) == 4 and enc.truncated
    assert _joined(enc.parts, DC_UCS2).endswith("…")
    with pytest.raises(TooLong):
        encode_text(text, max_parts=4, truncate=False)


def test_submit_sm_fast_path_is_byte_identical_to_smpplib() -> None:
    udh = b"\x05\x00\x03\x07\x02\x01"
    sm = P.SubmitSm(5, 0, "PLP", 1, 1, "32470123456", ESM_UDHI, DC_UCS2,
                    udh + "été".encode("utf-16-be"), "000001020304000R", 1)  # fmt: skip
    fast = P.encode_submit_sm(42, sm)
    slow = P.encode(
        "submit_sm", 42, source_addr_ton=5, source_addr_npi=0, source_addr="PLP",
        dest_addr_ton=1, dest_addr_npi=1, destination_addr="32470123456", esm_class=ESM_UDHI,
        data_coding=DC_UCS2, short_message=sm.short_message, validity_period=sm.validity_period,
        registered_delivery=1,
    )  # fmt: skip
    assert fast == slow
    assert P.decode_submit_sm(fast[16:]) == sm


def test_deliver_sm_fast_path_is_byte_identical_to_smpplib() -> None:
    dm = P.DeliverSm(1, 1, "32470123456", 5, 0, "PLP", 4, 0, b"id:1a stat:DELIVRD err:000", "1a", 2)
    slow = P.encode(
        "deliver_sm", 9, source_addr_ton=1, source_addr_npi=1, source_addr="32470123456",
        dest_addr_ton=5, dest_addr_npi=0, destination_addr="PLP", esm_class=4, data_coding=0,
        short_message=dm.short_message, receipted_message_id="1a", message_state=2,
    )  # fmt: skip
    assert P.encode_deliver_sm(9, dm) == slow


def test_frame_reader_cuts_a_stream_and_refuses_impossible_lengths() -> None:
    reader = P.FrameReader()
    data = P.header_only(P.Cmd.ENQUIRE_LINK, 1) + P.encode_submit_sm_resp(2, "abc")
    assert reader.feed(data[:10]) == []
    frames = reader.feed(data[10:])
    assert [(f.command_id, f.sequence) for f in frames] == [(0x15, 1), (0x80000004, 2)]
    assert P.decode_message_id(frames[1].body) == "abc"
    with pytest.raises(P.PduError):
        P.FrameReader().feed(P.HEADER.pack(4, 0x15, 0, 1))


def test_status_names_and_kinds() -> None:
    assert P.status_name(0x0B) == "ESME_RINVDSTADR"
    assert P.status_name(0x400) == "ESME_0x00000400"
    assert P.is_temporary(0x58) and P.is_temporary(0x14) and P.is_temporary(0x400)
    assert not P.is_temporary(0x0B) and not P.is_temporary(0x0A)


def _deliver(**fields: Any) -> P.Pdu:
    values: dict[str, Any] = {"source_addr": "32470123456", "destination_addr": "PLP"}
    values.update(fields)
    data = P.encode("deliver_sm", 1, **values)
    return P.Pdu(P.Cmd.DELIVER_SM, 0, 1, data[16:])


def test_receipt_from_text_only() -> None:
    text = (
        b"id:0A1B sub:001 dlvrd:000 submit date:2501011200 done date:2501011201 "
        b"stat:UNDELIV err:034 text:Alerte"
    )
    item = classify(P.decode_deliver_sm(_deliver(esm_class=4, short_message=text).body))
    assert item == DeliveryReport("0A1B", "UNDELIV", "034")
    assert item.final and not item.delivered and item.reason == "UNDELIV:034"


def test_receipt_tlvs_win_over_the_text() -> None:
    frame = _deliver(esm_class=4, short_message=b"id:99 stat:DELIVRD err:0",
                     receipted_message_id="63", message_state=2)  # fmt: skip
    item = classify(P.decode_deliver_sm(frame.body))
    assert isinstance(item, DeliveryReport)
    assert (item.message_id, item.delivered, item.reason) == ("63", True, "DELIVRD")


def test_receipt_with_tlvs_only() -> None:
    frame = _deliver(esm_class=4, receipted_message_id="77", message_state=5)
    item = classify(P.decode_deliver_sm(frame.body))
    assert item == DeliveryReport("77", "UNDELIV", "")


def test_intermediate_notification_is_not_final() -> None:
    frame = _deliver(esm_class=0x20, short_message=b"id:5 stat:ENROUTE err:000")
    item = classify(P.decode_deliver_sm(frame.body))
    assert isinstance(item, DeliveryReport) and not item.final


def test_mobile_originated_message() -> None:
    frame = _deliver(
        esm_class=0, data_coding=8, short_message="Goed ontvangen 👍".encode("utf-16-be")
    )
    assert classify(P.decode_deliver_sm(frame.body)) == MobileOriginated(
        "32470123456", 0, "Goed ontvangen 👍"
    )


@pytest.mark.parametrize(
    ("raw", "fmt", "expected"),
    [("1A", "hex", "s:26"), ("0000026", "dec", "s:26"), ("1a", "hex", "s:26"),
     ("Ab-1", "text", "s:Ab-1"), ("zz", "hex", "s:zz")],
)  # fmt: skip
def test_canonical_ids(raw: str, fmt: str, expected: str) -> None:
    assert canonical_id("s", raw, fmt) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "matched"),
    [("ok", "OK"), ("Ok merci", "OK"), ("1", "1"), ("Bien reçu !", "BIEN RECU"),
     ("goed ontvangen", "GOED ONTVANGEN"), ("ONTVANGEN.", "ONTVANGEN"), ("10", None),
     ("not ok", None), ("", None)],
)  # fmt: skip
def test_reply_keywords(text: str, matched: str | None) -> None:
    matcher = KeywordMatcher(["OK", "1", "BIEN RECU", "ONTVANGEN", "GOED ONTVANGEN"])
    assert matcher.match(text) == matched


def test_deliver_sm_fast_decode_agrees_with_smpplib() -> None:
    frame = _deliver(esm_class=4, data_coding=8, short_message=b"id:9 stat:DELIVRD",
                     receipted_message_id="9", message_state=2,
                     user_message_reference=7)  # fmt: skip
    fast, slow = P.decode_deliver_sm(frame.body), frame.decode()
    assert fast.short_message == slow.short_message
    assert fast.receipted_message_id == slow.receipted_message_id.decode()
    assert (fast.message_state, fast.esm_class, fast.data_coding) == (2, 4, 8)
    assert fast.source_addr == slow.source_addr.decode()
    with pytest.raises(P.PduError):
        P.decode_deliver_sm(frame.body[:-2])  # a TLV cut short


@pytest.mark.parametrize(
    "e164",
    ["+3222221111", "+32470123456", "+33612345678", "+4930123456", "+390612345678",
     "+12025550123", "+15551234567", "+442071234567", "+35227123456", "+8613912345678"],
)  # fmt: skip
def test_fast_e164_parse_gives_phonenumbers_number_type(e164: str) -> None:
    slow = phonenumbers.number_type(phonenumbers.parse(e164, None))
    fast = _parse_e164(e164)
    assert fast is not None and phonenumbers.number_type(fast) == slow


@pytest.mark.parametrize(
    ("addr", "ton", "expected"),
    [("32470123456", 1, "+32470123456"), ("0470123456", 2, "+32470123456"),
     ("32470123456", 0, "+32470123456"), ("0032470123456", 0, "+32470123456"),
     ("+32470123456", 0, "+32470123456"), ("Police", 5, "Police")],
)  # fmt: skip
def test_mo_sender_becomes_e164(addr: str, ton: int, expected: str) -> None:
    assert e164(addr, ton, "BE") == expected
