"""SMS text encoding: GSM 03.38 (with its extension table) or UCS-2, split into UDH parts.

Why not only `smpplib.gsm.make_parts`: measured with smpplib 2.2.4, it maps "`" to 0x5F (a
phone shows "§"), cannot encode "§", and cuts parts at fixed octet counts, which can separate
a GSM escape from its character or the two halves of a UTF-16 surrogate pair (an emoji).
We keep its wire conventions (unpacked septets, the 8-bit-reference concatenation UDH).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import smpplib.consts

DC_GSM = smpplib.consts.SMPP_ENCODING_DEFAULT  # 0: SMSC default alphabet (GSM 03.38)
DC_LATIN1 = smpplib.consts.SMPP_ENCODING_ISO88591  # 3
DC_UCS2 = smpplib.consts.SMPP_ENCODING_ISO10646  # 8
ESM_UDHI = smpplib.consts.SMPP_GSMFEAT_UDHI  # 0x40

_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXT = {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D,
            "]": 0x3E, "|": 0x40, "€": 0x65}  # fmt: skip
_ESC = 0x1B

# character -> its septets (one, or ESC + one)
GSM_ENCODE: dict[str, bytes] = {ch: bytes((i,)) for i, ch in enumerate(_GSM_BASIC) if i != _ESC}
GSM_ENCODE.update({ch: bytes((_ESC, code)) for ch, code in _GSM_EXT.items()})
_GSM_DECODE = {i: ch for i, ch in enumerate(_GSM_BASIC) if i != _ESC}
_GSM_EXT_DECODE = {code: ch for ch, code in _GSM_EXT.items()}

GSM_SINGLE, GSM_PART = 160, 153  # septets; a 6-octet UDH takes 7 septets
UCS2_SINGLE, UCS2_PART = 70, 67  # UTF-16 code units; the UDH takes 6 octets


class TooLong(ValueError):
    """The text needs more parts than allowed and truncation is off."""


@dataclass(frozen=True)
class Encoded:
    """A text ready for submit_sm: one `short_message` per part."""

    parts: tuple[bytes, ...]
    data_coding: int
    esm_class: int
    truncated: bool = False


_refs = itertools.count(random.randrange(256))


def is_gsm(text: str) -> bool:
    return all(ch in GSM_ENCODE for ch in text)


def _units(text: str, gsm: bool) -> list[bytes]:
    """The text as indivisible units: GSM septet groups or UTF-16 code-unit groups."""
    if gsm:
        return [GSM_ENCODE[ch] for ch in text]
    return [ch.encode("utf-16-be") for ch in text]  # 2 octets, or 4 for a surrogate pair


def _split(units: list[bytes], capacity: int) -> list[bytes]:
    """Greedy packing of units into parts of at most `capacity` octets, never splitting one."""
    parts: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for unit in units:
        if size + len(unit) > capacity:
            parts.append(b"".join(current))
            current, size = [], 0
        current.append(unit)
        size += len(unit)
    if current:
        parts.append(b"".join(current))
    return parts


def encode_text(text: str, max_parts: int = 10, *, truncate: bool = True) -> Encoded:
    """GSM when every character fits, else UCS-2; parts with a concatenation UDH if long."""
    gsm = is_gsm(text)
    single, part = (GSM_SINGLE, GSM_PART) if gsm else (UCS2_SINGLE * 2, UCS2_PART * 2)
    units = _units(text, gsm)
    total = sum(len(u) for u in units)
    data_coding = DC_GSM if gsm else DC_UCS2
    if total <= single:
        return Encoded((b"".join(units),), data_coding, 0)
    chunks = _split(units, part)
    truncated = False
    if len(chunks) > max_parts:
        if not truncate:
            raise TooLong(f"{len(chunks)} parts needed, {max_parts} allowed")
        ellipsis = _units("..." if gsm else "…", gsm)
        budget = max_parts * part - sum(len(u) for u in ellipsis)
        kept: list[bytes] = []
        size = 0
        for unit in units:
            # Cut conservatively: each part may lose up to 3 octets to unit boundaries.
            if size + len(unit) > budget - 3 * max_parts:
                break
            kept.append(unit)
            size += len(unit)
        chunks = _split(kept + ellipsis, part)[:max_parts]
        truncated = True
    if len(chunks) == 1:
        return Encoded((chunks[0],), data_coding, 0, truncated)
    ref = next(_refs) % 256
    count = len(chunks)
    parts = tuple(bytes((5, 0, 3, ref, count, i)) + c for i, c in enumerate(chunks, start=1))
    return Encoded(parts, data_coding, ESM_UDHI, truncated)


def decode_gsm(data: bytes) -> str:
    out: list[str] = []
    escape = False
    for b in data:
        if escape:
            out.append(_GSM_EXT_DECODE.get(b, _GSM_DECODE.get(b, "?")))
            escape = False
        elif b == _ESC:
            escape = True
        else:
            out.append(_GSM_DECODE.get(b, "?"))
    return "".join(out)


def strip_udh(data: bytes) -> tuple[bytes, bytes]:
    """(udh, payload) of a short_message whose esm_class has UDHI set."""
    if not data:
        return b"", b""
    n = data[0] + 1
    return data[:n], data[n:]


def concat_info(udh: bytes) -> tuple[int, int, int] | None:
    """(reference, total, sequence) from a concatenation UDH (8- or 16-bit reference)."""
    pos = 1
    while pos + 1 < len(udh):
        iei, length = udh[pos], udh[pos + 1]
        value = udh[pos + 2 : pos + 2 + length]
        if iei == 0 and length == 3 and len(value) == 3:
            return value[0], value[1], value[2]
        if iei == 8 and length == 4 and len(value) == 4:
            return (value[0] << 8) | value[1], value[2], value[3]
        pos += 2 + length
    return None


def decode_text(data: bytes, data_coding: int, esm_class: int = 0) -> str:
    """Text of a received short_message (MO or submit), UDH removed."""
    if esm_class & ESM_UDHI:
        _udh, data = strip_udh(data)
    coding = data_coding
    if coding == DC_UCS2:
        return data.decode("utf-16-be", errors="replace")
    if coding == DC_LATIN1:
        return data.decode("latin-1")
    if coding == 1:  # IA5 / ASCII
        return data.decode("ascii", errors="replace")
    return decode_gsm(data)
