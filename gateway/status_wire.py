"""What the gateway and its status child (gateway.status_child) say to each other over the
child's stdin and stdout: a private pipe between two processes of the same installation.

Parent -> child: one setup frame (`u32 length`, then the `ChildSetup` as JSON, the broker's
password included: the pipe is the two processes' own), then message frames: `u32 topic
length, u32 payload length, u8 flags` and the two byte strings. Flags: bits 0-1 the QoS,
bit 2 retain; a frame with bit 7 set carries no message and asks the child to reconnect now
(after an outage).

Child -> parent: one line per report: `D <n>` (the first n messages not yet reported are
finished: confirmed by the broker or refused by paho), `U` (connected), `E <error>` (down).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .mqtt_connect import Broker
from .mqtt_publisher import Outgoing

_LENGTH = struct.Struct("!I")
_HEAD = struct.Struct("!IIB")
_RETAIN = 0x04
_NOW = 0x80

DONE = b"D"
UP = b"U"
DOWN = b"E"


class WireError(Exception):
    """The other end broke the protocol (a bug, or not our child)."""


@dataclass(frozen=True)
class ChildSetup:
    broker: Broker
    client_id: str
    initial_delay: float
    max_delay: float
    log_level: str
    log_format: str


def setup_frame(setup: ChildSetup) -> bytes:
    data = json.dumps(dataclasses.asdict(setup)).encode()
    return _LENGTH.pack(len(data)) + data


def _setup_of(data: bytes) -> ChildSetup:
    try:
        fields = json.loads(data)
        return ChildSetup(**{**fields, "broker": Broker(**fields["broker"])})
    except (ValueError, TypeError, KeyError) as exc:
        raise WireError(f"the first frame is not a setup: {exc!r}") from None


def read_setup(read: Iterable[bytes]) -> tuple[ChildSetup, bytes]:
    """The setup from the chunks `read` yields, and what came after it."""
    buf = b""
    for chunk in read:
        buf += chunk
        if len(buf) >= _LENGTH.size:
            (n,) = _LENGTH.unpack_from(buf)
            if len(buf) >= _LENGTH.size + n:
                setup = _setup_of(buf[_LENGTH.size : _LENGTH.size + n])
                return setup, buf[_LENGTH.size + n :]
    raise WireError("the pipe closed before the setup")


def encode(messages: Iterable[Outgoing]) -> bytes:
    parts: list[bytes] = []
    head = _HEAD.pack
    for m in messages:
        # surrogatepass: a topic paho would refuse still crosses; paho refuses it there.
        topic = m.topic.encode("utf-8", "surrogatepass")
        parts.append(head(len(topic), len(m.payload), m.qos | (_RETAIN if m.retain else 0)))
        parts.append(topic)
        parts.append(m.payload)
    return b"".join(parts)


NOW_FRAME = _HEAD.pack(0, 0, _NOW)


class Decoder:
    """Message frames from a byte stream read in arbitrary pieces."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.now = False  # a reconnect-now frame was read (cleared by the reader)

    def feed(self, data: bytes) -> list[Outgoing]:
        buf = self._buf
        buf += data
        out: list[Outgoing] = []
        pos = 0
        size = _HEAD.size
        unpack = _HEAD.unpack_from
        end = len(buf)
        while end - pos >= size:
            t, p, flags = unpack(buf, pos)
            stop = pos + size + t + p
            if stop > end:
                break
            if flags & _NOW:
                self.now = True
            else:
                start = pos + size
                topic = bytes(buf[start : start + t]).decode("utf-8", "surrogatepass")
                payload = bytes(buf[start + t : stop])
                out.append(Outgoing(topic, payload, flags & 3, bool(flags & _RETAIN)))
            pos = stop
        del buf[:pos]
        return out
