"""The status child: a process of its own that publishes what the gateway reports (delivery
events, job statuses) on the status connection, so that paho's work per message runs on
another core than the gateway's event loop (gateway.status_process starts it).

It reads messages from stdin (gateway.status_wire), publishes them through
gateway.mqtt_publisher and reports on stdout which are finished and whether it is connected.
When stdin closes (the gateway stopped, or died) or on SIGTERM, it publishes what it still
holds while its connection lasts (PUBLISH_TIMEOUT at most), never reconnects, and exits: a
gateway started again with the same client id takes the connection over without a fight.
Ctrl-C in a terminal reaches the whole process group: the gateway stops through this child,
which ignores SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Iterator

from .logs import setup_logging
from .mqtt_publisher import PUBLISH_TIMEOUT, Outgoing, Publisher
from .status_wire import DONE, DOWN, UP, ChildSetup, Decoder, read_setup

_READ = 1 << 16


def _chunks(fd: int) -> Iterator[bytes]:
    while chunk := os.read(fd, _READ):
        yield chunk


class _Reports(asyncio.Protocol):
    """The parent's end of stdout; what is written after it closed is dropped."""

    transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def write(self, line: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(line)


async def serve(setup: ChildSetup, rest: bytes, stdin: int, stdout: int) -> None:
    loop = asyncio.get_running_loop()
    _, reports = await loop.connect_write_pipe(_Reports, os.fdopen(stdout, "wb", buffering=0))
    out: deque[Outgoing] = deque()
    ready = asyncio.Event()

    def state() -> None:
        if publisher.connected.is_set():
            reports.write(UP + b"\n")
        else:
            error = (publisher.error or "down").replace("\n", " ")
            reports.write(DOWN + b" " + error.encode("utf-8", "replace") + b"\n")

    publisher = Publisher(
        setup.broker,
        setup.client_id,
        out,
        ready,
        initial_delay=setup.initial_delay,
        max_delay=setup.max_delay,
        on_done=lambda n: reports.write(b"%s %d\n" % (DONE, n)),
        on_state=state,
    )
    decoder = Decoder()
    closed = asyncio.Event()

    def take(data: bytes) -> None:
        messages = decoder.feed(data)
        if messages:
            out.extend(messages)
            ready.set()
        if decoder.now:
            decoder.now = False
            publisher.now.set()

    class _Feed(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            take(data)

        def connection_lost(self, exc: Exception | None) -> None:
            closed.set()

    take(rest)
    await loop.connect_read_pipe(_Feed, os.fdopen(stdin, "rb", buffering=0))
    loop.add_signal_handler(signal.SIGTERM, closed.set)
    running = asyncio.create_task(publisher.run(), name="status-publisher")
    await closed.wait()
    # The gateway is gone or stopping: no new connection from here on (one started again
    # with our client id would be thrown off), what is held goes out while this one lasts.
    publisher.reconnect = False
    if publisher.connected.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                while (out or publisher.unconfirmed) and not running.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = os.dup(0), os.dup(1)
    # Nothing but reports on the pipe to the parent: a stray print goes to the log instead.
    os.dup2(2, 1)
    setup, rest = read_setup(_chunks(stdin))
    setup_logging(setup.log_level, setup.log_format)
    asyncio.run(serve(setup, rest, stdin, stdout))


if __name__ == "__main__":
    main()
