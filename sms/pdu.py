"""SMPP 3.4 PDUs as bytes: framing, command ids, status names, encode/decode.

smpplib's PDU classes do the codec; submit_sm and submit_sm_resp, the hot path at thousands
per second, have a struct-based fast path that tests check byte for byte against smpplib.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass
from typing import Any

import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

HEADER = struct.Struct(">IIII")
HEADER_LEN = 16
MAX_PDU_LEN = 64 * 1024  # far above any legal PDU; a larger length means a broken stream
MAX_SEQUENCE = 0x7FFFFFFF


class Cmd(enum.IntEnum):
    GENERIC_NACK = 0x80000000
    BIND_RECEIVER = 0x00000001
    BIND_RECEIVER_RESP = 0x80000001
    BIND_TRANSMITTER = 0x00000002
    BIND_TRANSMITTER_RESP = 0x80000002
    SUBMIT_SM = 0x00000004
    SUBMIT_SM_RESP = 0x80000004
    DELIVER_SM = 0x00000005
    DELIVER_SM_RESP = 0x80000005
    UNBIND = 0x00000006
    UNBIND_RESP = 0x80000006
    BIND_TRANSCEIVER = 0x00000009
    BIND_TRANSCEIVER_RESP = 0x80000009
    ENQUIRE_LINK = 0x00000015
    ENQUIRE_LINK_RESP = 0x80000015
    ALERT_NOTIFICATION = 0x00000102
    DATA_SM = 0x00000103
    DATA_SM_RESP = 0x80000103


RESPONSE_BIT = 0x80000000

# Status codes by name, e.g. ESME_RTHROTTLED -> 0x58 (from smpplib.consts).
STATUS: dict[str, int] = {
    name.removeprefix("SMPP_"): value
    for name, value in vars(smpplib.consts).items()
    if name.startswith("SMPP_ESME_R") and isinstance(value, int)
}
_STATUS_NAMES: dict[int, str] = {value: name for name, value in STATUS.items()}

ESME_ROK = STATUS["ESME_ROK"]
ESME_RTHROTTLED = STATUS["ESME_RTHROTTLED"]
ESME_RMSGQFUL = STATUS["ESME_RMSGQFUL"]
ESME_RINVCMDID = STATUS["ESME_RINVCMDID"]
ESME_RINVCMDLEN = STATUS["ESME_RINVCMDLEN"]
ESME_RINVBNDSTS = STATUS["ESME_RINVBNDSTS"]
ESME_RX_T_APPN = STATUS["ESME_RX_T_APPN"]

# Statuses worth a retry later; every other non-zero status fails the delivery for good,
# except unknown (vendor) codes, which are retried within the retry policy's attempts.
TEMPORARY_STATUSES = frozenset(
    STATUS[n]
    for n in (
        "ESME_RTHROTTLED",
        "ESME_RMSGQFUL",
        "ESME_RSYSERR",
        "ESME_RX_T_APPN",
        "ESME_RSUBMITFAIL",
        "ESME_RUNKNOWNERR",
        "ESME_RINVBNDSTS",
        "ESME_RDELIVERYFAILURE",
    )
)


def status_name(status: int) -> str:
    """`0x0B` -> `ESME_RINVDSTADR`; unknown codes as `ESME_0x00000400`."""
    return _STATUS_NAMES.get(status, f"ESME_0x{status:08X}")


def is_temporary(status: int) -> bool:
    return status in TEMPORARY_STATUSES or status not in _STATUS_NAMES


class PduError(ValueError):
    """Bytes from the peer that are not a valid SMPP 3.4 PDU: the link must be reset."""


@dataclass(slots=True)
class Pdu:
    """One PDU: the header decoded, the body kept as bytes until someone needs it."""

    command_id: int
    status: int
    sequence: int
    body: bytes

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    @property
    def name(self) -> str:
        try:
            return Cmd(self.command_id).name.lower()
        except ValueError:
            return f"0x{self.command_id:08x}"

    def decode(self) -> Any:
        """The body as an smpplib command object (fields as attributes, strings as bytes)."""
        data = HEADER.pack(HEADER_LEN + len(self.body), self.command_id, self.status, 0)
        try:
            decoded = smpplib.smpp.parse_pdu(data + self.body, sequence=self.sequence)
        except (smpplib.exceptions.UnknownCommandError, struct.error, IndexError) as exc:
            raise PduError(f"cannot decode {self.name}: {exc}") from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise PduError(f"cannot decode {self.name}: {exc}") from exc
        if self.command_id in (Cmd.SUBMIT_SM, Cmd.DELIVER_SM):
            # smpplib stops quietly at the end of a truncated body: check it got everything.
            sm = decoded.short_message
            if decoded.sm_length is None or sm is None or len(sm) != decoded.sm_length:
                raise PduError(f"truncated {self.name}")
        return decoded


class FrameReader:
    """Cuts a byte stream into PDUs; raises PduError on an impossible length."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Pdu]:
        buf = self._buf
        buf += data
        out: list[Pdu] = []
        pos = 0
        n = len(buf)
        while n - pos >= HEADER_LEN:
            length, command_id, status, sequence = HEADER.unpack_from(buf, pos)
            if length < HEADER_LEN or length > MAX_PDU_LEN:
                raise PduError(f"impossible command_length {length}")
            if n - pos < length:
                break
            out.append(
                Pdu(command_id, status, sequence, bytes(buf[pos + HEADER_LEN : pos + length]))
            )
            pos += length
        if pos:
            del buf[:pos]
        return out


class FrameWriter:
    """Coalesces the PDUs written during one event-loop turn into one `transport.write`.

    Measured: one send() system call per PDU cost more than the whole PDU codec at
    thousands of submits per second; a turn of the loop typically produces dozens of PDUs.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._chunks: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._chunks:
            self._loop.call_soon(self._flush)
        self._chunks.append(data)

    def flush(self) -> None:
        """Hand everything to the transport now (before closing it)."""
        self._flush()

    def _flush(self) -> None:
        chunks, self._chunks = self._chunks, []
        if chunks and not self._transport.is_closing():
            self._transport.write(b"".join(chunks))


def encode(command: str, sequence: int, status: int = ESME_ROK, **fields: Any) -> bytes:
    """Any PDU through smpplib, e.g. `encode("bind_transceiver", 1, system_id="x", ...)`."""
    pdu = smpplib.smpp.make_pdu(command, sequence=sequence, **fields)
    # smpplib ignores `sequence=` for classes that allocate one themselves: set it directly.
    pdu.sequence = sequence
    pdu.status = status
    data: bytes = pdu.generate()
    return data


def header_only(command_id: int, sequence: int, status: int = ESME_ROK) -> bytes:
    """A body-less PDU (enquire_link, unbind and their responses, generic_nack)."""
    return HEADER.pack(HEADER_LEN, command_id, status, sequence)


@dataclass(frozen=True, slots=True)
class SubmitSm:
    """The submit_sm fields this gateway uses (one SMS part)."""

    source_addr_ton: int
    source_addr_npi: int
    source_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes
    validity_period: str = ""
    registered_delivery: int = 1


def _cstr(value: str) -> bytes:
    return value.encode("ascii") + b"\x00"


def encode_submit_sm(sequence: int, sm: SubmitSm) -> bytes:
    """Fast path, byte-identical to smpplib's SubmitSM for these fields (see tests)."""
    if len(sm.short_message) > 254:
        raise ValueError("short_message longer than 254 octets")
    body = b"".join(
        (
            b"\x00",  # service_type ""
            bytes((sm.source_addr_ton, sm.source_addr_npi)),
            _cstr(sm.source_addr),
            bytes((sm.dest_addr_ton, sm.dest_addr_npi)),
            _cstr(sm.destination_addr),
            bytes((sm.esm_class, 0, 0)),  # esm_class, protocol_id, priority_flag
            b"\x00",  # schedule_delivery_time: immediately
            _cstr(sm.validity_period),
            bytes((sm.registered_delivery, 0, sm.data_coding, 0, len(sm.short_message))),
            sm.short_message,
        )
    )
    return HEADER.pack(HEADER_LEN + len(body), Cmd.SUBMIT_SM, ESME_ROK, sequence) + body


def _read_cstr(body: bytes, pos: int, limit: int) -> tuple[str, int]:
    end = body.find(b"\x00", pos, pos + limit)
    if end < 0:
        raise PduError("unterminated C-octet string")
    return body[pos:end].decode("latin-1"), end + 1


def decode_submit_sm(body: bytes) -> SubmitSm:
    """Fast path for the simulator: the mandatory submit_sm fields (TLVs ignored)."""
    return _decode_mandatory(body)[0]


def _decode_mandatory(body: bytes) -> tuple[SubmitSm, int]:
    """submit_sm / deliver_sm mandatory fields, and where the TLVs start."""
    try:
        pos = 0
        _service, pos = _read_cstr(body, pos, 6)
        s_ton, s_npi = body[pos], body[pos + 1]
        source, pos = _read_cstr(body, pos + 2, 21)
        d_ton, d_npi = body[pos], body[pos + 1]
        dest, pos = _read_cstr(body, pos + 2, 21)
        esm_class = body[pos]
        _sched, pos = _read_cstr(body, pos + 3, 17)
        validity, pos = _read_cstr(body, pos, 17)
        registered, data_coding, sm_length = body[pos], body[pos + 2], body[pos + 4]
        pos += 5
        short_message = body[pos : pos + sm_length]
        if len(short_message) != sm_length:
            raise PduError("short_message shorter than sm_length")
    except IndexError as exc:
        raise PduError("truncated submit_sm") from exc
    sm = SubmitSm(
        s_ton, s_npi, source, d_ton, d_npi, dest, esm_class, data_coding, short_message,
        validity, registered,
    )  # fmt: skip
    return sm, pos + sm_length


def encode_submit_sm_resp(sequence: int, message_id: str, status: int = ESME_ROK) -> bytes:
    body = b"" if status else _cstr(message_id)
    return HEADER.pack(HEADER_LEN + len(body), Cmd.SUBMIT_SM_RESP, status, sequence) + body


def decode_message_id(body: bytes) -> str:
    """The message_id of a submit_sm_resp / data_sm_resp body ("" when absent)."""
    end = body.find(b"\x00")
    raw = body if end < 0 else body[:end]
    return raw.decode("latin-1")


def _tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_MESSAGE_STATE = 0x0427


@dataclass(frozen=True, slots=True)
class DeliverSm:
    """The deliver_sm fields the simulator sends (a receipt or an MO message)."""

    source_addr_ton: int
    source_addr_npi: int
    source_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes
    receipted_message_id: str | None = None
    message_state: int | None = None
    message_payload: bytes | None = None  # only read, never sent by the simulator


def encode_deliver_sm(sequence: int, dm: DeliverSm) -> bytes:
    """Fast path, byte-identical to smpplib's DeliverSM for these fields (see tests)."""
    tlvs = b""  # in smpplib's order
    if dm.message_state is not None:
        tlvs += _tlv(TLV_MESSAGE_STATE, bytes((dm.message_state,)))
    if dm.receipted_message_id:
        tlvs += _tlv(TLV_RECEIPTED_MESSAGE_ID, _cstr(dm.receipted_message_id))
    body = b"".join(
        (
            b"\x00",
            bytes((dm.source_addr_ton, dm.source_addr_npi)),
            _cstr(dm.source_addr),
            bytes((dm.dest_addr_ton, dm.dest_addr_npi)),
            _cstr(dm.destination_addr),
            bytes((dm.esm_class, 0, 0)),
            b"\x00\x00",  # schedule_delivery_time, validity_period
            bytes((0, 0, dm.data_coding, 0, len(dm.short_message))),
            dm.short_message,
            tlvs,
        )
    )
    return HEADER.pack(HEADER_LEN + len(body), Cmd.DELIVER_SM, ESME_ROK, sequence) + body


TLV_MESSAGE_PAYLOAD = 0x0424


def decode_deliver_sm(body: bytes) -> DeliverSm:
    """Fast path for receipts and MO messages: mandatory fields and the TLVs we use.

    Same layout as submit_sm for the mandatory part; raises PduError when truncated.
    """
    sm, pos = _decode_mandatory(body)
    receipted: str | None = None
    state: int | None = None
    payload: bytes | None = None
    end = len(body)
    while pos + 4 <= end:
        tag, length = struct.unpack_from(">HH", body, pos)
        value = body[pos + 4 : pos + 4 + length]
        if len(value) != length:
            raise PduError("truncated TLV")
        if tag == TLV_RECEIPTED_MESSAGE_ID:
            receipted = value.rstrip(b"\x00").decode("latin-1")
        elif tag == TLV_MESSAGE_STATE and length == 1:
            state = value[0]
        elif tag == TLV_MESSAGE_PAYLOAD:
            payload = value
        pos += 4 + length
    return DeliverSm(
        sm.source_addr_ton, sm.source_addr_npi, sm.source_addr, sm.dest_addr_ton,
        sm.dest_addr_npi, sm.destination_addr, sm.esm_class, sm.data_coding, sm.short_message,
        receipted, state, payload,
    )  # fmt: skip
