"""SMTP mail transactions, pipelined (RFC 2920) where the server offers PIPELINING.

aiosmtplib opens the connection (TLS, STARTTLS, EHLO, AUTH); it waits for each reply before the
next command and cannot read several replies that arrive together. So once a connection is
ready, its transport is handed to `Pipeline`, which writes MAIL FROM, RCPT TO and DATA at once
and reads their replies in order: two writes and two waits per message instead of four. Where
the server also offers CHUNKING (RFC 3030), the message goes as `BDAT <size> LAST` in the same
write: one write and one wait per message, and no dot-stuffing. Errors
are aiosmtplib's own, as its `sendmail` would raise them, so callers classify them one way.
"""

from __future__ import annotations

import asyncio
import collections
import re

import aiosmtplib
from aiosmtplib.email import quote_address

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_PERIOD = re.compile(rb"(?m)^\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A dot-atom address of these characters is its own quoted form (`quote_address` parses it
# with the email package to give back the same string, a tenth of a message's CPU).
_DOT_ATOM = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_MAX_REPLY = 64 * 1024  # a server that sends more without ending its reply is broken


def quote_envelope(address: str) -> str:
    """`quote_address`, without parsing the usual address."""
    return f"<{address}>" if _DOT_ATOM.fullmatch(address) else quote_address(address)


class Reply:
    __slots__ = ("code", "message")

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message


class Pipeline(asyncio.Protocol):
    """One connection's replies, in order, however many arrive in one segment."""

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        timeout: float,
        *,
        pipelining: bool,
        chunking: bool = False,
    ) -> None:
        self.pipelining = pipelining
        self.chunking = chunking and pipelining  # BDAT in the envelope's group needs both
        self._timeout = timeout
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._replies: collections.deque[Reply] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._transport = transport
        transport.set_protocol(self)

    @classmethod
    def take_over(cls, client: aiosmtplib.SMTP, timeout: float) -> Pipeline:
        """Take a connected client's transport (after EHLO, STARTTLS and AUTH): from now on
        the connection is this pipeline's, the client object no longer reads from it."""
        transport = client.transport
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        return cls(
            transport,
            timeout,
            pipelining=client.supports_extension("pipelining"),
            chunking=client.supports_extension("chunking"),
        )

    # -- asyncio.Protocol ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            try:
                code = int(line[:3])
            except ValueError:
                self._fail(aiosmtplib.SMTPResponseException(-1, f"Malformed reply: {line!r}"))
                return
            self._lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
            if line[3:4] != b"-":  # the last line of a (possibly multi-line) reply
                self._replies.append(Reply(code, "\n".join(self._lines)))
                self._lines = []
        if len(self._buffer) > _MAX_REPLY:
            self._fail(aiosmtplib.SMTPResponseException(-1, "Reply too long"))
            return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
            lost.__cause__ = exc
            self._lost = lost
        self._wake()

    def eof_received(self) -> bool:
        self._lost = aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")
        self._wake()
        return False  # close the transport

    def _fail(self, exc: BaseException) -> None:
        self._lost = exc
        self._transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- commands -----------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._lost is None and not self._transport.is_closing()

    def _write(self, data: bytes) -> None:
        if not self.is_connected:
            raise self._lost or aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._transport.write(data)  # type: ignore[attr-defined]

    async def _reply(self) -> Reply:
        return (await self._replies_of(1))[0]

    async def _replies_of(self, n: int) -> list[Reply]:
        """The next `n` replies, in order, within one timeout (none when they are here)."""
        if len(self._replies) < n:
            try:
                async with asyncio.timeout(self._timeout):
                    while len(self._replies) < n:
                        if self._lost is not None:
                            raise self._lost
                        self._waiter = asyncio.get_running_loop().create_future()
                        await self._waiter
            except TimeoutError:
                self.close()  # replies out of step from now on: this connection is done
                raise aiosmtplib.SMTPReadTimeoutError(
                    "Timed out waiting for server reply"
                ) from None
            finally:
                self._waiter = None
        return [self._replies.popleft() for _ in range(n)]

    async def sendmail(
        self, sender: str, recipient: str, message: bytes, mail_options: list[str]
    ) -> None:
        """One message to one recipient; raises what aiosmtplib's `sendmail` would."""
        if _CONTROL.search(sender) or _CONTROL.search(recipient):
            raise ValueError("address contains a control character")
        mail = " ".join([f"MAIL FROM:{quote_envelope(sender)}", *mail_options])
        rcpt = f"RCPT TO:{quote_envelope(recipient)}\r\n"
        message = _LINE_ENDINGS.sub(b"\r\n", message)
        if self.chunking:
            await self._send_chunked(sender, recipient, f"{mail}\r\n{rcpt}", message)
            return
        commands = [f"{mail}\r\n", rcpt, "DATA\r\n"]
        if self.pipelining:
            self._write("".join(commands).encode())
            replies = await self._replies_of(len(commands))
        else:  # one command at a time, stopping at the first refusal
            replies = []
            for command in commands:
                self._write(command.encode())
                replies.append(await self._reply())
                if replies[-1].code >= 400:
                    break
        padded: list[Reply | None] = [*replies, None, None]  # sequential: fewer on refusal
        mail_reply, rcpt_reply, data_reply = padded[:3]
        if mail_reply is not None and mail_reply.code != 250:
            if data_reply is not None and data_reply.code == 354:
                await self._abort_data()
            raise aiosmtplib.SMTPSenderRefused(mail_reply.code, mail_reply.message, sender)
        if rcpt_reply is not None and rcpt_reply.code not in (250, 251):
            if data_reply is not None and data_reply.code == 354:
                await self._abort_data()
            refused = aiosmtplib.SMTPRecipientRefused(
                rcpt_reply.code, rcpt_reply.message, recipient
            )
            raise aiosmtplib.SMTPRecipientsRefused([refused])
        assert data_reply is not None
        if data_reply.code != 354:
            raise aiosmtplib.SMTPDataError(data_reply.code, data_reply.message)
        body = _PERIOD.sub(b"..", message)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self._write(body + b".\r\n")
        done = await self._reply()
        if done.code != 250:
            raise aiosmtplib.SMTPDataError(done.code, done.message)

    async def _send_chunked(
        self, sender: str, recipient: str, envelope: str, message: bytes
    ) -> None:
        """MAIL FROM, RCPT TO and the whole message as one BDAT chunk, in one write. The
        server reads the chunk whatever became of the envelope and answers it (554 or 503 when
        the envelope failed), so the three replies always come."""
        self._write(envelope.encode() + f"BDAT {len(message)} LAST\r\n".encode() + message)
        mail_reply, rcpt_reply, bdat_reply = await self._replies_of(3)
        if mail_reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(mail_reply.code, mail_reply.message, sender)
        if rcpt_reply.code not in (250, 251):
            refused = aiosmtplib.SMTPRecipientRefused(
                rcpt_reply.code, rcpt_reply.message, recipient
            )
            raise aiosmtplib.SMTPRecipientsRefused([refused])
        if bdat_reply.code != 250:
            raise aiosmtplib.SMTPDataError(bdat_reply.code, bdat_reply.message)

    async def _abort_data(self) -> None:
        """A server that said 354 although the envelope failed gets an empty message; the
        connection is dropped afterwards anyway."""
        self._write(b".\r\n")
        await self._reply()

    async def quit(self) -> None:
        try:
            self._write(b"QUIT\r\n")
            await self._reply()
        finally:
            self.close()

    def close(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()
