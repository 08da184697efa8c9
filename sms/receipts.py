"""deliver_sm decoded: delivery receipts (text and TLVs) vs member replies, canonical ids.

A receipt's message id is matched to the id of the submit_sm_resp through `canonical_id`,
which both the channel's `Outcome` and its `Receipt` use.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from .config import IdFormat
from .encoding import decode_text
from .pdu import DeliverSm

# esm_class bits 2-5: message type
_MSG_TYPE_MASK = 0x3C
_RECEIPT = 0x04
_INTERMEDIATE = 0x20

# message_state TLV -> the receipt text's `stat:` spelling
MESSAGE_STATES = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV",
                  6: "ACCEPTD", 7: "UNKNOWN", 8: "REJECTD"}  # fmt: skip
FAILED_STATS = frozenset({"EXPIRED", "DELETED", "UNDELIV", "UNKNOWN", "REJECTD"})
# Stats some SMSCs spell in full
_ALIASES = {"DELIVERED": "DELIVRD", "UNDELIVERABLE": "UNDELIV", "REJECTED": "REJECTD",
            "ACCEPTED": "ACCEPTD"}  # fmt: skip

_FIELD_RE = re.compile(
    r"(id|sub|dlvrd|submit date|done date|stat|err|text)\s*:\s*(.*?)(?=\s+(?:id|sub|dlvrd|"
    r"submit date|done date|stat|err|text)\s*:|$)",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class DeliveryReport:
    """A receipt for one submitted part. `final` False for ENROUTE/ACCEPTD notifications."""

    message_id: str
    stat: str
    err: str

    @property
    def delivered(self) -> bool:
        return self.stat == "DELIVRD"

    @property
    def final(self) -> bool:
        return self.delivered or self.stat in FAILED_STATS

    @property
    def reason(self) -> str:
        """`UNDELIV`, or `UNDELIV:005` when the SMSC gave a non-zero error code."""
        err = self.err.strip()
        return self.stat if not err or not err.strip("0") else f"{self.stat}:{err}"


@dataclass(frozen=True)
class MobileOriginated:
    """A message a member sent to the gateway's number."""

    source_addr: str
    source_ton: int
    text: str


def parse_receipt_text(text: str) -> dict[str, str]:
    """`id:123 sub:001 ... stat:DELIVRD err:000 text:...` -> {"id": "123", "stat": ...}."""
    return {m.group(1).lower(): m.group(2).strip() for m in _FIELD_RE.finditer(text)}


_ERR_RE = re.compile(rb"err:\s*(\w*)", re.IGNORECASE)


def classify(deliver_sm: DeliverSm) -> DeliveryReport | MobileOriginated | None:
    """A deliver_sm is a receipt (TLVs preferred, else its text) or an MO message.

    Returns None for receipts without a usable id (logged by the caller).
    """
    esm_class = deliver_sm.esm_class
    msg_type = esm_class & _MSG_TYPE_MASK
    short_message = deliver_sm.short_message or deliver_sm.message_payload or b""
    if msg_type not in (_RECEIPT, _INTERMEDIATE):
        text = decode_text(short_message, deliver_sm.data_coding, esm_class)
        return MobileOriginated(deliver_sm.source_addr, deliver_sm.source_addr_ton, text)
    message_id = (deliver_sm.receipted_message_id or "").strip()
    state = deliver_sm.message_state
    if message_id and state is not None:
        # The fast path: both TLVs present, only the error code comes from the text.
        err = _ERR_RE.search(short_message)
        stat = MESSAGE_STATES.get(state, "UNKNOWN")
        return DeliveryReport(message_id, stat, err.group(1).decode("latin-1") if err else "")
    fields = parse_receipt_text(short_message.decode("latin-1"))
    message_id = message_id or fields.get("id", "")
    stat = fields.get("stat", "").upper()
    stat = _ALIASES.get(stat, stat)
    if not stat and state is not None:
        stat = MESSAGE_STATES.get(state, "UNKNOWN")
    if not message_id:
        return None
    if not stat:
        stat = "ENROUTE" if msg_type == _INTERMEDIATE else "UNKNOWN"
    return DeliveryReport(message_id, stat, fields.get("err", ""))


def canonical_id(smsc: str, raw: str, fmt: IdFormat) -> str:
    """`<smsc>:<id>`; "dec"/"hex" ids become plain decimal so both spellings meet."""
    value = raw.strip()
    if fmt != "text":
        # An SMSC not following its own format: keep the text.
        with contextlib.suppress(ValueError):
            value = str(int(value, 16 if fmt == "hex" else 10))
    return f"{smsc}:{value}"


def _normalise(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    words = re.sub(r"[^\w]+", " ", plain.upper()).split()
    return " ".join(words)


class KeywordMatcher:
    """Does a reply acknowledge? `ok`, `Bien reçu !`, `1` match; `10`, `not ok` do not."""

    def __init__(self, keywords: Iterable[str]) -> None:
        self._keywords = sorted({_normalise(k) for k in keywords if _normalise(k)}, key=len)

    def match(self, text: str) -> str | None:
        norm = _normalise(text)
        for kw in reversed(self._keywords):  # longest first
            if norm == kw or norm.startswith(kw + " "):
                return kw
        return None
