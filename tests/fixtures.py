"""Real parts for tests: a mosquitto broker, an SMTP server, the gateway as a process,
and an MQTT observer that waits for events (never for fixed times)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import aiomqtt
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from gateway.simulator_process import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent


class Mosquitto:
    """A private mosquitto on a free port; can be stopped and started again (same port)."""

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {workdir}/\n"
            "max_queued_messages 0\nmax_inflight_messages 100\nset_tcp_nodelay true\n" + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "mosquitto.log", "ab"),  # noqa: SIM115
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def connections(self) -> list[Connection]:
        """Every client connection the broker accepted, in order, from its log."""
        return [
            Connection(m["id"], _MOSQUITTO_PROTOCOLS.get(m["p"], m["p"]), m["c"] == "1")
            for m in _CONNECTED.finditer(self.log())
        ]

    def taken_over(self, client_id: str) -> int:
        """How many times a new connection with `client_id` closed an older one."""
        return self.log().count(f"Client {client_id} already connected, closing old connection")


@dataclass(frozen=True)
class Connection:
    client_id: str
    protocol: str  # "3.1.1" or "5"
    clean: bool  # clean session (3.1.1) / Clean Start (5)


# mosquitto logs `New client connected from ADDR as ID (p5, c0, k30...)`: p is its own
# protocol number (2: MQTT 3.1.1, 5: MQTT 5), c the clean session / Clean Start flag.
_CONNECTED = re.compile(r"New client connected from \S+ as (?P<id>\S+) \(p(?P<p>\d), c(?P<c>\d)")
_MOSQUITTO_PROTOCOLS = {"1": "3.1", "2": "3.1.1", "5": "5"}


@dataclass
class Mail:
    sender: str
    rcpts: list[str]
    message: Message

    @property
    def body(self) -> str:
        payload = self.message.get_payload(decode=True)
        assert isinstance(payload, bytes)
        return payload.decode(self.message.get_content_charset() or "utf-8")


@dataclass
class SmtpScript:
    """Per-recipient scripted replies: a list of codes consumed one per attempt at RCPT."""

    replies: dict[str, list[str]] = field(default_factory=dict)
    delay: float = 0.0
    pipelining: bool = False  # offer PIPELINING (aiosmtpd reads pipelined commands in order)


class _Handler:
    def __init__(self, script: SmtpScript) -> None:
        self.script = script
        self.mailbox: list[Mail] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        if self.script.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        with self.lock:
            self.attempts[address] = self.attempts.get(address, 0) + 1
            queue = self.script.replies.get(address)
            reply = queue.pop(0) if queue else None
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.script.delay:
            await asyncio.sleep(self.script.delay)
        msg = message_from_bytes(envelope.content)
        with self.changed:
            self.mailbox.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), msg))
            self.changed.notify_all()
        return "250 Message accepted"


class SmtpServer:
    """aiosmtpd in its own thread; `mailbox` holds what arrived. With `logins` (user ->
    password) it offers AUTH (without TLS: a test) and refuses other credentials with 535."""

    def __init__(self, logins: dict[str, str] | None = None) -> None:
        self.script = SmtpScript()
        self.handler = _Handler(self.script)
        self.port = free_port()
        self.logins = logins
        self.controller = self._controller()

    def _controller(self) -> Controller:
        if self.logins is None:
            return Controller(self.handler, hostname="127.0.0.1", port=self.port)
        return Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,
        )

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.logins is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        # handled=False: aiosmtpd answers (235, or 535 on a failure) itself.
        return AuthResult(success=self.logins.get(user) == password, handled=False)

    def start(self) -> None:
        # A Controller cannot start twice: a new one on the same port and mailbox.
        self.controller = self._controller()
        self.controller.start()

    def stop(self) -> None:
        with contextlib.suppress(AssertionError, RuntimeError):
            self.controller.stop()

    @property
    def mailbox(self) -> list[Mail]:
        with self.handler.lock:
            return list(self.handler.mailbox)

    def wait_for(self, predicate: Callable[[list[Mail]], bool], timeout: float = 30) -> list[Mail]:
        deadline = time.monotonic() + timeout
        with self.handler.changed:
            while not predicate(self.handler.mailbox):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"mailbox has {len(self.handler.mailbox)} messages")
                self.handler.changed.wait(min(left, 0.5))
            return list(self.handler.mailbox)

    async def await_for(
        self, predicate: Callable[[list[Mail]], bool], timeout: float = 30
    ) -> list[Mail]:
        return await asyncio.to_thread(self.wait_for, predicate, timeout)


def gateway_config(
    workdir: Path,
    broker: Mosquitto,
    smtp: SmtpServer | None = None,
    extra: str = "",
    node: str = "test",
    store: str = "",
) -> Path:
    email = ""
    if smtp is not None:
        email = (
            '[email]\nenabled = true\nhost = "127.0.0.1"\n'
            f'port = {smtp.port}\nsender = "alerte@police.example.be"\n'
            "concurrency = 4\ntimeout = 10\n"
            "[email.retry]\nmax_attempts = 4\ninitial_delay = 0.2\nmax_delay = 1.0\n"
        )
    path = workdir / "gateway.toml"
    path.write_text(
        f'node = "{node}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "plp"\n'
        "reconnect_initial_delay = 0.1\nreconnect_max_delay = 1.0\n"
        f'[store]\npath = "{workdir}/gateway.sqlite3"\n'
        + store
        + "[status]\nhealth_interval = 5\njob_status_interval = 0.2\n"
        '[log]\nlevel = "DEBUG"\n' + email + extra
    )
    return path


class GatewayProcess:
    """`plp-gateway run` as a real process, its log in a file."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start it; `env` adds to (or overrides) the environment, e.g. NOTIFY_SOCKET."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "ab"),  # noqa: SIM115
            env=env,
            cwd=ROOT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 30, after: int = 0) -> int:
        """Wait until `text` appears in the log after offset `after`; return its end offset."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            content = self.log()
            pos = content.find(text, after)
            if pos >= 0:
                return pos + len(text)
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{content[-3000:]}")
            time.sleep(0.02)
        raise TimeoutError(f"{text!r} not in gateway log:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def send_signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Seen:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Observer:
    """Subscribes to `<prefix>/#` (or only to `topics`, filters under the prefix) and records
    what arrives; `wait()` polls the record for a condition."""

    def __init__(
        self, broker: Mosquitto, prefix: str = "plp", topics: tuple[str, ...] = ("#",)
    ) -> None:
        self.broker = broker
        self.prefix = prefix
        self.topics = topics
        self.seen: list[Seen] = []
        self.by_topic: dict[str, list[Seen]] = {}
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Observer:
        self._task = asyncio.create_task(self._run())
        await self.wait(lambda: self._client is not None, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.broker.host, self.broker.port) as client:
                    for topic in self.topics:
                        await client.subscribe(f"{self.prefix}/{topic}", qos=1)
                    self._client = client
                    self._changed.set()
                    async for m in client.messages:
                        assert isinstance(m.payload, bytes)
                        seen = Seen(str(m.topic), m.payload, m.retain)
                        self.seen.append(seen)
                        self.by_topic.setdefault(seen.topic, []).append(seen)
                        self._changed.set()
            except aiomqtt.MqttError:
                self._client = None
                await asyncio.sleep(0.1)

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        """Publish like dispatch does: its own short connection, confirmed by the broker."""
        async with aiomqtt.Client(self.broker.host, self.broker.port) as client:
            await client.publish(topic, payload, qos=qos, timeout=30)

    async def publish_job(self, job: dict[str, Any]) -> None:
        await self.publish(f"{self.prefix}/jobs", json.dumps(job))

    async def wait(self, cond: Callable[[], Any], timeout: float = 30) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                result = cond()
                if result:
                    return result
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.5)

    def on(self, suffix: str) -> list[Seen]:
        """Messages on the topic `<prefix><suffix>`."""
        return self.by_topic.get(self.prefix + suffix, [])

    def status(self, job_id: str) -> dict[str, Any] | None:
        msgs = self.on(f"/jobs/{job_id}/status")
        if not msgs:
            return None
        body: dict[str, Any] = msgs[-1].json()
        return body

    async def wait_job(self, job_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.status(job_id)
            return st if st is not None and st["state"] == state else None

        result: dict[str, Any] = await self.wait(check, timeout)
        return result

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [s.json() for s in self.on(f"/jobs/{job_id}/deliveries")]

    def rejections(self) -> list[dict[str, Any]]:
        return [s.json() for s in self.on("/jobs/rejected")]


def members(
    n: int, domain: str = "example.be", langs: tuple[str, ...] = ("fr", "nl", "de", "en")
) -> list[dict[str, Any]]:
    return [
        {
            "ref": f"m-{i:05d}",
            "email": f"member{i}@{domain}",
            "phone": f"+3247{i:07d}",
            "lang": langs[i % len(langs)],
        }
        for i in range(n)
    ]


def email_job(job_id: str, recipients: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "priority": "hot",
        "message": {
            "fr": "Vague de cambriolages rue des Tilleuls. Fermez portes et fenêtres.",
            "nl": "Inbraakgolf in de Lindestraat. Sluit deuren en ramen.",
            "de": "Einbruchsserie in der Lindenstraße. Schließen Sie Türen und Fenster.",
            "en": "Burglaries in Linden Street. Lock doors and windows.",
        },
        "subject": {"fr": "Alerte PLP", "nl": "BIN-alarm", "de": "KPP-Alarm", "en": "PLP alert"},
        "channels": ["email"],
        "recipients": recipients,
        "ttl": 600,
    }
    job.update(extra)
    return job


def iter_lines(path: Path) -> Iterator[str]:
    with open(path, errors="replace") as fh:
        yield from fh
