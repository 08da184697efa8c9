"""A protocol simulator (`plp-gateway simulate smsc|asterisk`) as a child process, and the
local ports it and the other test services use.

The demo, the tests and the benchmarks run the simulators this way, as operators do; a
separate process also keeps a simulator independent of the caller's event loop. They are
steered and read through the JSON control port (`gateway.control_port`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .control_port import control

_SOURCE_ROOT = Path(__file__).resolve().parent.parent  # `-m gateway` runs this very code


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something listens on 127.0.0.1:`port`; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


class SimulatorProcess:
    kind = ""  # the `plp-gateway simulate` verb
    title = ""  # for messages

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.args = args
        self.port = 0
        self.control_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def options(self) -> list[str]:
        """The simulator's own command-line options (before the test's extra `args`)."""
        return []

    def start(self) -> None:
        port_file = self.workdir / f"{self.kind}-ports.json"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "simulate", self.kind, "--port", "0",
             "--control-port", "0", "--port-file", str(port_file), "--log-level", "WARNING",
             *self.options(), *self.args],
            cwd=_SOURCE_ROOT, stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{self.kind}-sim.log", "ab"),  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.title} did not start")
            time.sleep(0.02)
        ports = json.loads(port_file.read_text())
        self.port, self.control_port = ports["port"], ports["control_port"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    async def ctl(self, cmd: str, **fields: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await control(
            "127.0.0.1", self.control_port, {"cmd": cmd, **fields}, wait=30
        )
        if not answer.get("ok"):
            raise RuntimeError(f"{self.title}: {cmd} refused: {answer}")
        return answer

    async def wait(
        self, predicate: Callable[[dict[str, Any]], object], timeout: float = 60
    ) -> dict[str, Any]:
        """Poll the simulator's stats until `predicate(stats)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.ctl("stats")
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.title} never reached the condition: {stats}")
            await asyncio.sleep(0.05)
