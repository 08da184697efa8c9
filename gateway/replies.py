"""What the gateway sends back when a directory member replies (issue 14): the confirmation
of STOP / START in their language, and a free reply forwarded to their PLP's coordinators.

Pure: each is a small job (`Job`), stored and sent like any other, so that the SMS channel
applies its number policy and the outcome is on MQTT (refs and masked numbers only).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Literal

from .directory import Member, Plp
from .domain import Job, Priority, Recipient
from .jobs import one_line
from .privacy import mask_phone, scrub

CONFIRM: dict[str, dict[str, str]] = {
    "stop": {
        "fr": "Vous ne recevrez plus les messages non urgents de votre PLP. Envoyez START pour"
        " les recevoir à nouveau.",
        "nl": "U ontvangt geen niet-dringende berichten van uw BIN meer. Stuur START om ze"
        " opnieuw te ontvangen.",
        "de": "Sie erhalten keine nicht dringenden Nachrichten Ihrer KPP mehr. Senden Sie START,"
        " um sie wieder zu erhalten.",
        "en": "You will no longer get non-urgent messages from your PLP. Send START to get them"
        " again.",
    },
    "start": {
        "fr": "Vous recevez à nouveau les messages non urgents de votre PLP.",
        "nl": "U ontvangt opnieuw de niet-dringende berichten van uw BIN.",
        "de": "Sie erhalten wieder die nicht dringenden Nachrichten Ihrer KPP.",
        "en": "You will get non-urgent messages from your PLP again.",
    },
}

FORWARD: dict[str, str] = {
    "fr": "Réponse du membre {ref} ({masked}) de {plp} : {text}",
    "nl": "Antwoord van lid {ref} ({masked}) van {plp}: {text}",
    "de": "Antwort von Mitglied {ref} ({masked}) von {plp}: {text}",
    "en": "Reply from member {ref} ({masked}) of {plp}: {text}",
}
FORWARD_SUBJECT: dict[str, str] = {
    "fr": "{plp} : réponse d'un membre",
    "nl": "{plp}: antwoord van een lid",
    "de": "{plp}: Antwort eines Mitglieds",
    "en": "{plp}: a member's reply",
}
TTL = timedelta(hours=6)


def _id(kind: str, *parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


def confirmation(member: Member, word: Literal["stop", "start"], now: datetime) -> Job:
    """The SMS that confirms a STOP or START, in the member's language."""
    assert member.phone is not None
    return Job(
        id=_id(f"confirm-{word}", member.plp, member.ref, now.isoformat()),
        priority=Priority.COLD,
        test=False,
        message={member.lang: CONFIRM[word][member.lang]},
        subject={},
        channels=("sms",),
        recipients=(Recipient(0, member.ref, member.lang, ("sms",), member.phone, None),),
        expires_at=now.astimezone(UTC) + TTL,
    )


def forward(plp: Plp, member: Member, text: str, by_sms: bool, now: datetime) -> Job | None:
    """A member's free reply for the PLP's coordinators (e-mail; SMS too with `by_sms`):
    the member by ref and masked number, the text with any number or address in it masked.
    None when the PLP has no coordinator to reach."""
    assert member.phone is not None
    said = scrub(one_line(text))[:500]
    masked = mask_phone(member.phone)
    recipients: list[Recipient] = []
    for c in plp.coordinators:
        channels = (("email",) if c.email else ()) + (("sms",) if by_sms and c.phone else ())
        if channels:
            index = len(recipients)
            ref = f"coordinator-{index + 1}"
            recipients.append(Recipient(index, ref, member.lang, channels, c.phone, c.email))
    if not recipients:
        return None
    name = plp.names.get(member.lang) or plp.id
    return Job(
        id=_id("reply", plp.id, member.ref, now.isoformat(), text),
        priority=Priority.HOT,  # a member may be reporting what they see now
        test=False,
        message={
            lang: form.format(ref=member.ref, masked=masked, plp=name, text=said)
            for lang, form in FORWARD.items()
        },
        subject={lang: form.format(plp=name) for lang, form in FORWARD_SUBJECT.items()},
        channels=tuple(sorted({ch for r in recipients for ch in r.channels})),
        recipients=tuple(recipients),
        expires_at=now.astimezone(UTC) + TTL,
    )
