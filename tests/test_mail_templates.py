"""A job's message is rendered once per language and copied per recipient: byte for byte what
building it for each recipient gives, and the long way where a value does not fit a template."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from aiosmtplib.email import flatten_message

from gateway import mail_message
from gateway.channel import Attempt
from gateway.domain import Priority
from gateway.mail_message import MessageTemplates, build_message

EXPIRES = datetime(2026, 11, 29, 7, 0, tzinfo=UTC) + timedelta(minutes=5)
FR = "Vague de cambriolages rue des Tilleuls.\n.\nFermez portes et fenêtres."


def attempt(ref: str = "m-00001", address: str = "member1@example.be", **kw: object) -> Attempt:
    fields: dict[str, object] = dict(
        delivery_id=1, job_id="tpl-1", channel="email", ref=ref, address=address, lang="fr",
        text=FR, subject="Alerte PLP", priority=Priority.HOT, number=1, expires_at=EXPIRES,
        test=False,
    )  # fmt: skip
    fields.update(kw)
    return Attempt(**fields)  # type: ignore[arg-type]


def long_way(a: Attempt, sender: str, eight_bit: bool, date: str) -> bytes:
    with mock.patch.object(mail_message, "formatdate", return_value=date):
        msg = build_message(a, sender, "police.example.be")
    return flatten_message(msg, cte_type="8bit" if eight_bit else "7bit")


@pytest.mark.parametrize("eight_bit", [True, False])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"priority": Priority.COLD},
        {"test": True},
        {"lang": "nl", "text": "Inbraakgolf in de Lindestraat.", "subject": "BIN-alarm"},
        {"subject": "Alerte PLP à Liège, rue des Tilleuls, quartier Nord: " + "très long " * 8},
        {"text": "x" * 2000},
    ],
)
def test_template_is_byte_for_byte_the_built_message(
    kw: dict[str, object], eight_bit: bool
) -> None:
    templates = MessageTemplates()
    for sender in ("alerte@police.example.be", '"Police de Liège" <alerte@police.example.be>'):
        for n in (1, 2, 3):  # the second and third come from the cache
            a = attempt(f"m-{n:05d}", f"member{n}@example.be", **kw)
            rendered = templates.render(a, sender, "police.example.be", eight_bit=eight_bit)
            assert rendered is not None
            assert rendered.data == long_way(a, sender, eight_bit, templates._now())
            assert rendered.envelope_sender == "alerte@police.example.be"
            assert rendered.message_id == f"<plp.tpl-1.m-{n:05d}@police.example.be>"


@pytest.mark.parametrize(
    ("ref", "address"),
    [
        ("m-1", "élodie@exemple.be"),  # SMTPUTF8: the email package writes it its own way
        ("m-1", "a" * 64 + "@" + "sub." * 3 + "example.be"),  # a To line the package folds
        ("m 1", "member1@example.be"),  # a ref the Message-ID parser would quote
        ("m<1>", "member1@example.be"),
    ],
)
def test_values_a_template_cannot_take_go_the_long_way(ref: str, address: str) -> None:
    a = attempt(ref, address)
    assert MessageTemplates().render(a, "alerte@police.example.be", "x.be", eight_bit=True) is None


def test_one_template_per_job_and_language() -> None:
    templates = MessageTemplates(size=2)
    sender, domain = "alerte@police.example.be", "police.example.be"
    for n in range(50):
        lang = ("fr", "nl")[n % 2]
        templates.render(attempt(f"m-{n}", lang=lang), sender, domain, eight_bit=True)
    assert len(templates._cache) == 2
    templates.render(attempt(job_id="tpl-2"), sender, domain, eight_bit=True)
    assert len(templates._cache) == 2  # bounded: the oldest goes
