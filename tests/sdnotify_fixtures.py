"""A fake systemd for tests: the receiving end of NOTIFY_SOCKET (a unix datagram socket).

Give a daemon under test `env={"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": ...}` and
wait for its messages with `await fake.recv()` or `await fake.wait_for("READY")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a unix datagram socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.setblocking(False)

    async def recv(self, wait: float = 5.0) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), wait)
        fields: dict[str, str] = {}
        for line in data.decode().split("\n"):
            key, _, value = line.partition("=")
            fields[key] = value
        return fields

    def close(self) -> None:
        self.sock.close()

    async def wait_for(self, key: str, wait: float = 30.0) -> dict[str, str]:
        """Skip messages until one has `key` (e.g. "READY", "WATCHDOG"); return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            msg = await self.recv(max(0.0, deadline - loop.time()))
            if key in msg:
                return msg


@contextlib.contextmanager
def fake_systemd() -> Iterator[FakeSystemd]:
    # AF_UNIX paths are limited to 108 bytes: a short directory rather than pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="sdn", dir="/tmp") as d:
        fake = FakeSystemd(str(Path(d) / "notify"))
        try:
            yield fake
        finally:
            fake.close()
