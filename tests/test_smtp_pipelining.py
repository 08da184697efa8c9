"""PIPELINING (RFC 2920): where the server offers it, MAIL FROM, RCPT TO and DATA go out at
once and their replies are read in order, refusals included; where it does not, one command at
a time. Against a scripted server that shows what arrived before it answered, and end to end
through the gateway against aiosmtpd offering PIPELINING."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtplib.email import quote_address

from gateway.channel import Attempt
from gateway.config import EmailConfig
from gateway.domain import Priority
from gateway.errors import ChannelError, PermanentError, TemporaryError
from gateway.mail import EmailChannel
from gateway.simulator_process import free_port
from gateway.smtp_pipeline import quote_envelope
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members
from tests.mqtt_tls_fixtures import make_pki


@dataclass
class ScriptedSmtp:
    """A raw SMTP server: greets, answers EHLO, and answers each group of commands only once
    the whole group has arrived, the way a pipelining client sends it. `reads` records what
    each read from the socket held, so a test sees which commands came together."""

    pipelining: bool
    chunking: bool = False
    replies: dict[str, str] = field(default_factory=dict)  # verb -> its next reply, once
    reads: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    port: int = 0

    def reply(self, line: str) -> str:
        verb = line.split(":", 1)[0].split(" ", 1)[0].upper()
        default = {"DATA": "354 go ahead", "QUIT": "221 bye"}.get(verb, "250 ok")
        return self.replies.pop(verb, default)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        pending = b""
        in_data = False
        chunk_size: int | None = None  # bytes of a BDAT chunk still to come
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            self.reads.append(chunk)
            pending += chunk
            out: list[str] = []
            while True:
                if chunk_size is not None:
                    if len(pending) < chunk_size:
                        break
                    self.messages.append(pending[:chunk_size])
                    pending, chunk_size = pending[chunk_size:], None
                    out.append(self.replies.pop("END", "250 queued"))
                    continue
                if in_data:
                    end = pending.find(b"\r\n.\r\n")
                    if pending.startswith(b".\r\n"):  # an empty message
                        end = -2
                    elif end < 0:
                        break
                    self.messages.append(pending[: end + 2])
                    pending = pending[end + 5 :]
                    in_data = False
                    out.append(self.replies.pop("END", "250 queued"))
                    continue
                nl = pending.find(b"\r\n")
                if nl < 0:
                    break
                line, pending = pending[:nl].decode(), pending[nl + 2 :]
                if line.upper().startswith("EHLO"):
                    features = ["250-scripted", "250-8BITMIME"]
                    if self.pipelining:
                        features.append("250-PIPELINING")
                    if self.chunking:
                        features.append("250-CHUNKING")
                    out.append("\r\n".join([*features, "250 HELP"]))
                    continue
                if line.upper().startswith("BDAT"):
                    chunk_size = int(line.split()[1])
                    continue
                answer = self.reply(line)
                out.append(answer)
                if line.upper() == "DATA" and answer.startswith("354"):
                    in_data = True
            if out:
                writer.write("".join(f"{r}\r\n" for r in out).encode())
            if any(r.startswith("221") for r in out):
                break
        writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[bool], Awaitable[ScriptedSmtp]]]:
    servers: list[asyncio.Server] = []

    async def start(pipelining: bool) -> ScriptedSmtp:
        script = ScriptedSmtp(pipelining)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        script.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return script

    yield start
    for server in servers:
        server.close()


def attempt(n: int, text: str = "Alerte PLP") -> Attempt:
    return Attempt(
        delivery_id=n, job_id="pipe-1", channel="email", ref=f"m-{n}",
        address=f"member{n}@example.be", lang="fr", text=text, subject="Alerte",
        priority=Priority.HOT, number=1, expires_at=datetime.now(UTC) + timedelta(minutes=5),
        test=False,
    )  # fmt: skip


def config(port: int) -> EmailConfig:
    return EmailConfig(
        enabled=True, host="127.0.0.1", port=port, sender="alerte@police.example.be",
        concurrency=1, timeout=5,
    )  # fmt: skip


async def send(port: int, *attempts: Attempt) -> list[object]:
    channel = EmailChannel(config(port))
    await channel.start()
    try:
        async with asyncio.timeout(10):
            return [await _outcome(channel, a) for a in attempts]
    finally:
        await channel.stop()


async def _outcome(channel: EmailChannel, a: Attempt) -> object:
    try:
        return await channel.send(a)
    except (TemporaryError, PermanentError) as exc:
        return exc


def envelope_reads(script: ScriptedSmtp) -> list[bytes]:
    return [r for r in script.reads if r.startswith(b"MAIL")]


async def test_envelope_goes_out_at_once_when_the_server_offers_pipelining(
    scripted: Callable[[bool], Awaitable[ScriptedSmtp]],
) -> None:
    script = await scripted(True)
    text = "Alerte PLP.\n.\nUne ligne qui commence par un point."
    await send(script.port, attempt(1, text), attempt(2))
    reads = envelope_reads(script)
    assert len(reads) == 2
    for n, read in enumerate(reads, 1):
        assert read == (
            b"MAIL FROM:<alerte@police.example.be> BODY=8BITMIME\r\n"
            + f"RCPT TO:<member{n}@example.be>\r\n".encode()
            + b"DATA\r\n"
        )
    assert len(script.messages) == 2
    assert b"\r\n..\r\nUne ligne" in script.messages[0]  # the lone "." stuffed on the wire


async def test_one_command_at_a_time_without_pipelining(
    scripted: Callable[[bool], Awaitable[ScriptedSmtp]],
) -> None:
    script = await scripted(False)
    await send(script.port, attempt(1))
    assert envelope_reads(script) == [b"MAIL FROM:<alerte@police.example.be> BODY=8BITMIME\r\n"]
    assert b"RCPT TO:<member1@example.be>\r\n" in script.reads
    assert b"DATA\r\n" in script.reads
    assert len(script.messages) == 1


@pytest.mark.parametrize(
    ("replies", "error", "reason"),
    [
        ({"RCPT": "550 5.1.1 no such user", "DATA": "554 no valid recipients"}, PermanentError,
         "smtp_550"),
        ({"RCPT": "451 4.7.1 greylisted", "DATA": "554 no valid recipients"}, TemporaryError,
         "smtp_451"),
        ({"MAIL": "452 4.3.1 out of space", "RCPT": "503 sender first",
          "DATA": "503 sender first"}, TemporaryError, "smtp_452"),
        # A server that says 354 although it refused the recipient gets an empty message.
        ({"RCPT": "550 5.1.1 no such user"}, PermanentError, "smtp_550"),
        ({"END": "552 5.3.4 message too big"}, PermanentError, "smtp_552"),
    ],
)  # fmt: skip
async def test_pipelined_refusals_are_read_in_order(
    scripted: Callable[[bool], Awaitable[ScriptedSmtp]],
    replies: dict[str, str],
    error: type[ChannelError],
    reason: str,
) -> None:
    script = await scripted(True)
    script.replies.update(replies)
    first, second = await send(script.port, attempt(1), attempt(2))
    assert isinstance(first, error) and first.reason == reason
    # Replies stayed in step: the next message goes through (on a fresh connection).
    assert not isinstance(second, Exception), second


async def test_message_goes_with_its_envelope_as_one_chunk_when_the_server_offers_chunking(
    scripted: Callable[[bool], Awaitable[ScriptedSmtp]],
) -> None:
    script = await scripted(True)
    script.chunking = True
    text = "Alerte PLP.\n.\nUne ligne qui commence par un point."
    await send(script.port, attempt(1, text))
    (read,) = envelope_reads(script)
    assert read.startswith(
        b"MAIL FROM:<alerte@police.example.be> BODY=8BITMIME\r\n"
        b"RCPT TO:<member1@example.be>\r\nBDAT "
    )
    (message,) = script.messages
    assert read.endswith(message) and b"\r\n.\r\nUne ligne" in message  # no dot-stuffing


@pytest.mark.parametrize(
    ("replies", "error", "reason"),
    [
        ({"RCPT": "550 5.1.1 no such user"}, PermanentError, "smtp_550"),
        ({"MAIL": "451 4.3.0 try later", "RCPT": "503 sender first"}, TemporaryError, "smtp_451"),
        ({"END": "552 5.3.4 message too big"}, PermanentError, "smtp_552"),
    ],
)
async def test_chunked_refusals_are_read_in_order(
    scripted: Callable[[bool], Awaitable[ScriptedSmtp]],
    replies: dict[str, str],
    error: type[ChannelError],
    reason: str,
) -> None:
    script = await scripted(True)
    script.chunking = True
    script.replies.update(replies)
    first, second = await send(script.port, attempt(1), attempt(2))
    assert isinstance(first, error) and first.reason == reason
    assert not isinstance(second, Exception), second


async def test_gateway_delivers_a_job_over_a_pipelining_server(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    smtp.script.pipelining = True
    recipients = members(250)  # several chunks of announcements
    smtp.script.replies[recipients[7]["email"]] = ["451 4.7.1 Try again later"]
    smtp.script.replies[recipients[9]["email"]] = ["550 5.1.1 No such user"]
    gateway()
    await observer.publish_job(email_job("pipelined-1", recipients))
    status = await observer.wait_job("pipelined-1", "done", timeout=120)
    assert status["totals"] == {"delivered": 249, "failed": 1}
    mailbox = smtp.mailbox
    assert sorted(m.rcpts[0] for m in mailbox) == sorted(
        r["email"] for i, r in enumerate(recipients) if i != 9
    )
    by_ref: dict[str, list[str]] = {}
    for event in observer.events("pipelined-1"):
        by_ref.setdefault(event["ref"], []).append(event["state"])
    assert by_ref[recipients[7]["ref"]] == [
        "queued", "sending", "retrying", "sending", "delivered"
    ]  # fmt: skip
    assert by_ref[recipients[9]["ref"]] == ["queued", "sending", "failed"]
    # Every member announced once, before anything else happens to it.
    assert len(by_ref) == 250
    assert all(states[0] == "queued" and states.count("queued") == 1 for states in by_ref.values())


class _TlsHandler:
    """aiosmtpd offering PIPELINING; records whether each message came over TLS."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bool]] = []

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        tls = server.transport.get_extra_info("sslcontext") is not None
        self.received.append((envelope.rcpt_tos[0], tls))
        return "250 queued"


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_pipelined_transactions_over_tls(
    security: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline takes over the connection aiosmtplib secured: the TLS transport's."""
    pki = make_pki(tmp_path, users=())
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))  # aiosmtplib's default context
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["server"], tmp_path / "server.key")
    handler, port = _TlsHandler(), free_port()
    if security == "starttls":
        controller = Controller(
            handler, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True
        )
    else:
        controller = Controller(handler, hostname="127.0.0.1", port=port, ssl_context=ctx)
    controller.start()
    try:
        cfg = config(port).model_copy(update={"security": security, "concurrency": 2})
        channel = EmailChannel(cfg)
        await channel.start()
        try:
            async with asyncio.timeout(10):
                await asyncio.gather(*(channel.send(attempt(n)) for n in range(1, 5)))
        finally:
            await channel.stop()
    finally:
        controller.stop()
    assert sorted(handler.received) == [(f"member{n}@example.be", True) for n in range(1, 5)]


@pytest.mark.parametrize(
    "address",
    [
        "member1@example.be",
        "a.b+c_d-e@sub.example.be",
        "x@y",
        "Jean <jean@example.be>",
        '"a b"@example.be',
        "a..b@example.be",
        ".a@example.be",
        "a@example..be",
        "émile@exemple.be",
        "a@b@c",
        " a@example.be ",
    ],
)
def test_envelope_addresses_are_quoted_as_aiosmtplib_quotes_them(address: str) -> None:
    """The usual address skips the email package's parser: same result either way."""
    try:
        expected: str | type[Exception] = quote_address(address)
    except ValueError:
        expected = ValueError
    try:
        got: str | type[Exception] = quote_envelope(address)
    except ValueError:
        got = ValueError
    assert got == expected
