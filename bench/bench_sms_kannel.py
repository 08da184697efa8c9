"""Kannel (bearerbox + smsbox) against the SMSC simulator, for bench_sms.py's ratio.

Kannel gets the same work as SmsChannel: one transceiver bind, `max-pending-submits` equal to
our window, delivery receipts requested (dlr-mask 3, posted to a local HTTP sink).
Messages enter through smsbox's sendsms HTTP interface, 100 numbers per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from gateway.control_port import control
from gateway.simulator_process import free_port

TEXT = "Alerte PLP: cambriolage signale rue Haute, restez vigilants."


def _config(
    smsc_port: int, window: int, ports: dict[str, int], workdir: Path, store: str | None
) -> str:
    # `store`: bearerbox's message store ("spool": one file per queued message, "file": one
    # journal), which keeps queued messages across a restart as our store does; None: none.
    stored = f'store-type = {store}\nstore-location = "{workdir}/store"\n' if store else ""
    return f"""
group = core
admin-port = {ports["admin"]}
admin-password = bench
smsbox-port = {ports["smsbox"]}
log-level = 4
log-file = "{workdir}/bearerbox.log"
box-allow-ip = 127.0.0.1
dlr-storage = internal
{stored}
group = smsc
smsc = smpp
smsc-id = sim
host = 127.0.0.1
port = {smsc_port}
transceiver-mode = true
smsc-username = plp
smsc-password = secret
system-type = VMA
max-pending-submits = {window}
enquire-link-interval = 30
reconnect-delay = 1
msg-id-type = 0x00
source-addr-ton = 5
source-addr-npi = 0
dest-addr-ton = 1
dest-addr-npi = 1

group = smsbox
bearerbox-host = 127.0.0.1
sendsms-port = {ports["sendsms"]}
log-level = 4
log-file = "{workdir}/smsbox.log"

group = sendsms-user
username = bench
password = bench
"""


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal HTTP server answering every DLR callback with 200."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    writer.close()


async def _get(port: int, path: str) -> bytes:
    """One HTTP GET; Kannel keeps connections open, so read by Content-Length."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
    finally:
        writer.close()
    return head + body


async def run_kannel(
    smsc_port: int,
    control_port: int,
    count: int,
    window: int,
    *,
    dlr: bool = True,
    prequeue: bool = True,
    store: str | None = None,
    keep: bool = False,
) -> float:
    """Submits per second Kannel sustains, seen by the simulator (first to last accepted).

    `prequeue`: all messages are queued in bearerbox while the simulator holds its bind
    unanswered, then the bind is answered and the queue drains: Kannel's SMPP side alone,
    its best case. Otherwise messages flow from sendsms HTTP requests to the SMSC as they come.
    `dlr`: request delivery receipts (dlr-mask 3, posted to a local HTTP sink), like our channel.
    """
    if shutil.which("bearerbox") is None:
        raise RuntimeError("Kannel is not installed (apt-get install kannel)")
    workdir = Path(tempfile.mkdtemp(prefix="kannel-bench-"))
    ports = {name: free_port() for name in ("admin", "smsbox", "sendsms")}
    conf = workdir / "kannel.conf"
    conf.write_text(_config(smsc_port, window, ports, workdir, store))
    sink = await asyncio.start_server(_sink, "127.0.0.1", 0)
    sink_port = sink.sockets[0].getsockname()[1]

    async def ctl(**request: object) -> Any:
        return await control("127.0.0.1", control_port, dict(request))

    await ctl(cmd="reset")
    await ctl(cmd="fault", hold_binds=prequeue)  # bearerbox's bind waits for the gate
    quiet = asyncio.subprocess.DEVNULL
    bearer = await asyncio.create_subprocess_exec(
        "bearerbox", "-v", "4", str(conf), stdout=quiet, stderr=quiet
    )
    smsbox: asyncio.subprocess.Process | None = None
    try:
        async with asyncio.timeout(30):
            while True:  # bearerbox listens on its admin port
                with contextlib.suppress(OSError):
                    await _get(ports["admin"], "/cgi-bin/status.txt?password=bench")
                    break
                await asyncio.sleep(0.1)  # another process: nothing to wait on but its port
        smsbox = await asyncio.create_subprocess_exec(
            "smsbox", "-v", "4", str(conf), stdout=quiet, stderr=quiet
        )
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(OSError):
                    await _get(ports["sendsms"], "/")  # refused until smsbox listens
                    break
                await asyncio.sleep(0.1)
        dlr_url = f"http://127.0.0.1:{sink_port}/dlr?s=%d"
        batch = 100
        for first in range(0, count, batch):
            numbers = " ".join(f"+32471{i:06d}" for i in range(first, min(count, first + batch)))
            params = {"username": "bench", "password": "bench", "from": "PLP", "to": numbers,
                      "text": TEXT}  # fmt: skip
            if dlr:
                params.update({"dlr-mask": "3", "dlr-url": dlr_url})
            query = urllib.parse.urlencode(params)
            answer = await _get(ports["sendsms"], f"/cgi-bin/sendsms?{query}")
            assert b" 202 " in answer.split(b"\r\n", 1)[0], answer[:200]
        if prequeue:
            await ctl(cmd="reset")
            await ctl(cmd="fault", hold_binds=False)  # the gate opens
        async with asyncio.timeout(300):
            while True:
                stats = await ctl(cmd="stats")
                if int(stats["counters"].get("accepted", 0)) >= count:
                    break
                await asyncio.sleep(0.05)  # polling another process's counter
        span = float(stats["last_accepted_at"]) - float(stats["first_accepted_at"])
        return (count - 1) / span
    finally:
        for proc in (smsbox, bearer):
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
        sink.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
