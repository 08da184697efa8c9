"""What an alert e-mail looks like on the wire: its headers and body, built per recipient
(`build_message`) or rendered once per job and language and copied per recipient
(`MessageTemplates`), byte for byte the same.

The Message-ID is derived from job and recipient, so a retried message is recognisable as the
same alert by the receiving side.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, formatdate, parseaddr
from typing import NamedTuple

from aiosmtplib.email import extract_sender, flatten_message

from .channel import Attempt
from .domain import Priority, job_sender_id


def message_id(job_id: str, ref: str, domain: str) -> str:
    left = f"{job_id}.{ref}".replace(":", "=")
    return f"<plp.{left}@{domain}>"


def build_message(attempt: Attempt, sender: str, domain: str) -> EmailMessage:
    return _compose(
        attempt,
        sender,
        to=attempt.address,
        date=formatdate(localtime=False),
        msg_id=message_id(attempt.job_id, attempt.ref, domain),
    )


def _compose(attempt: Attempt, sender: str, *, to: str, date: str, msg_id: str) -> EmailMessage:
    msg = EmailMessage()
    sender_id = job_sender_id(attempt.options)
    # The PLP's own sender id is the From display name; the address stays the gateway's.
    msg["From"] = sender if sender_id is None else formataddr((sender_id, parseaddr(sender)[1]))
    msg["To"] = to
    msg["Subject"] = attempt.subject
    msg["Date"] = date
    msg["Message-ID"] = msg_id
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-PLP-Job"] = attempt.job_id
    msg["X-PLP-Expires"] = format_datetime(attempt.expires_at)
    if attempt.priority is Priority.HOT:
        msg["Importance"] = "high"
        msg["X-Priority"] = "1"
    if attempt.test:
        msg["X-PLP-Test"] = "yes"
    msg.set_content(attempt.text, charset="utf-8")
    msg["Content-Language"] = attempt.lang  # after set_content, which resets Content-*
    return msg


# Stand-ins rendered once per template, then replaced by each recipient's own values.
_TO = "to@plp-template.invalid"
_ID = "<id@plp-template.invalid>"
_DATE = "Thu, 01 Jan 1970 00:00:00 -0000"
# What may go into a header verbatim and come out as the email package would write it:
# printable ASCII without the characters its address and Message-ID parsers treat specially.
_PLAIN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+")
_LINE = 78  # beyond this the email package folds header lines; such recipients take the long way


class MessageTemplates:
    """Every member of a job in a language gets the same message but for To, Message-ID and
    Date: rendered once per job, language and server capability (8BITMIME), it is copied per
    recipient instead of building and serialising an `EmailMessage` each time, which cost more
    CPU than the SMTP exchange. Byte for byte what `build_message` and aiosmtplib would send."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._cache: OrderedDict[tuple[object, ...], _Template | None] = OrderedDict()
        self._date = (0, "")

    def clear(self) -> None:
        self._cache.clear()

    def render(
        self, attempt: Attempt, sender: str, domain: str, *, eight_bit: bool
    ) -> Rendered | None:
        """The message as sent; None when this one needs the long way (`build_message`)."""
        msg_id = message_id(attempt.job_id, attempt.ref, domain)
        to = attempt.address
        if not (_PLAIN.fullmatch(to) and _PLAIN.fullmatch(msg_id[1:-1])):
            return None
        if len(to) + 4 > _LINE or len(msg_id) + 12 > _LINE:
            return None
        key = (attempt.job_id, attempt.lang, attempt.subject, attempt.text, attempt.priority,
               attempt.test, attempt.expires_at, sender, domain, eight_bit)  # fmt: skip
        if key in self._cache:
            self._cache.move_to_end(key)
            template = self._cache[key]
        else:
            template = self._cache[key] = _template(attempt, sender, eight_bit)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        if template is None:
            return None
        head, after_to, after_date, rest = template.pieces
        data = b"".join(
            (head, to.encode(), after_to, self._now().encode(), after_date, msg_id.encode(), rest)
        )
        return Rendered(data, template.envelope_sender, msg_id)

    def _now(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, localtime=False))
        return self._date[1]


class Rendered(NamedTuple):
    data: bytes
    envelope_sender: str
    message_id: str


class _Template(NamedTuple):
    envelope_sender: str
    pieces: tuple[bytes, bytes, bytes, bytes]  # around To, Date and Message-ID, in this order


def _template(attempt: Attempt, sender: str, eight_bit: bool) -> _Template | None:
    msg = _compose(attempt, sender, to=_TO, date=_DATE, msg_id=_ID)
    envelope_sender = extract_sender(msg)
    flat = flatten_message(msg, cte_type="8bit" if eight_bit else "7bit")
    marks = (_TO.encode(), _DATE.encode(), _ID.encode())
    pieces = re.split(b"(" + b"|".join(map(re.escape, marks)) + b")", flat)
    if envelope_sender is None or tuple(pieces[1::2]) != marks:
        return None  # a header order or encoding this code does not expect: the long way
    head, after_to, after_date, rest = pieces[0::2]
    return _Template(envelope_sender, (head, after_to, after_date, rest))
