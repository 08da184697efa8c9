"""`plp-gateway demo`: the main job end to end on this machine.

A private mosquitto, a local SMTP sink, the SMSC simulator (SMPP 3.4 over TCP, receipts after
2 s), the AMI simulator standing in for Asterisk, the gateway on a demo configuration, a
sample hot alert to a sample PLP of 20 members in FR/NL/DE/EN by e-mail, SMS and phone call
(press 1 to acknowledge), one member answering "BIEN RECU" by SMS (acknowledged: no more
calls), live per-recipient progress, the report. Every message the broker carried on `plp/#`
is recorded in `<workdir>/mqtt.jsonl` (topic, retain flag, payload as text) for integrators to
read, and for the schema test to validate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from .config import load_config
from .follow import follow_job
from .report import print_report
from .simulator_process import SimulatorProcess, free_port, wait_port

LANGS = ("fr", "nl", "de", "en")
NAMES = [
    "Amélie",
    "Bram",
    "Dieter",
    "Emma",
    "Fatima",
    "Geert",
    "Hanne",
    "Ilse",
    "Jonas",
    "Karim",
    "Lotte",
    "Mathis",
    "Nora",
    "Olivier",
    "Pieter",
    "Quentin",
    "Rania",
    "Sofie",
    "Thomas",
    "Ute",
]


class _MailSink:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        (self.folder / f"{self.count:04d}.eml").write_bytes(envelope.content)
        return "250 OK queued"


class _Asterisk(SimulatorProcess):
    """The AMI simulator at 4x speed, standing in for Asterisk."""

    kind = "asterisk"
    title = "AMI simulator"

    def options(self) -> list[str]:
        return ["--speed", "4", "--username", "demo", "--secret", "demo-secret"]


def start_voice(workdir: Path) -> tuple[SimulatorProcess, str]:
    """Start the AMI simulator (4x speed) and return it with the gateway's `[voice]` TOML.

    The demo members' numbers end in every digit, so the simulated phones answer and press
    1, are busy, do not answer, hang up early... (docs/voice-calls.md); short retries keep
    the demo under a minute.
    """
    sim = _Asterisk(workdir)
    sim.start()
    rules = ("busy", "no_answer", "congestion", "unreachable", "hung_up_early",
             "not_acknowledged", "failed")  # fmt: skip
    retry = "".join(f"{rule} = {{ delay = 2, max_attempts = 2 }}\n" for rule in rules)
    toml = (
        f'[voice]\nenabled = true\nsounds_dir = "{workdir / "sounds"}"\n'
        'channel = "Local/{number}@plp-phones"\nmax_channels = 10\ncalls_per_second = 0\n'
        "ring_timeout = 12\n"
        f'[voice.ami]\nhost = "127.0.0.1"\nport = {sim.port}\nusername = "demo"\n'
        'secret = "demo-secret"\n'
        "[voice.retry]\n" + retry
    )
    print(f"demo: AMI simulator (stands in for Asterisk) on 127.0.0.1:{sim.port}")
    return sim, toml


def voice_summary(config_path: Path, job_id: str) -> None:
    """Who acknowledged the call by pressing 1 (masked numbers, as on MQTT)."""
    from .privacy import mask_phone
    from .store import open_store

    store = open_store(load_config(config_path).store)
    try:
        rows = [d for d in store.deliveries(job_id) if d.channel == "voice"]
    finally:
        store.close()
    acked = [d for d in rows if d.state.value == "acknowledged"]
    print(f"\ndemo: {len(acked)} of {len(rows)} members acknowledged the call (pressed 1):")
    for d in acked:
        print(f"  {d.ref:<8} {mask_phone(d.address or '')}  attempt {d.attempts}")


def sample_job(job_id: str, channels: list[str]) -> dict[str, Any]:
    members = []
    for i, name in enumerate(NAMES):
        member: dict[str, Any] = {
            "ref": f"m-{i + 1:04d}",
            "email": f"{name.lower().replace('é', 'e')}@buurt.example.be",
            "phone": f"+3247{5000000 + i * 1111:07d}",
            "lang": LANGS[i % 4],
        }
        members.append(member)
    members[6]["email"] = "hanne-at-example.be"  # shows a clear per-recipient error
    members[9]["phone"] = "+3225551234"  # a landline: the SMS fails "number_not_allowed"
    return {
        "id": job_id,
        "priority": "hot",
        "test": True,
        "message": {
            "fr": "Police locale: vague de cambriolages rue des Tilleuls ce soir. "
            "Fermez portes et fenêtres et signalez tout comportement suspect au 101.",
            "nl": "Lokale politie: inbraakgolf in de Lindestraat vanavond. "
            "Sluit deuren en ramen en meld verdacht gedrag via 101.",
            "de": "Lokale Polizei: Einbruchsserie in der Lindenstraße heute Abend. "
            "Schließen Sie Türen und Fenster und melden Sie Verdächtiges unter 101.",
            "en": "Local police: burglaries in Linden Street tonight. "
            "Lock doors and windows and report anything suspicious on 101.",
        },
        "subject": {
            "fr": "Alerte PLP Tilleuls",
            "nl": "BIN-alarm Lindestraat",
            "de": "KPP-Alarm Lindenstraße",
            "en": "PLP alert Linden Street",
        },
        "channels": channels,
        "recipients": members,
        "voice": {"ack": True},
        "ttl": 900,
    }


async def _wait_online(config_path: Path, timeout: float = 20) -> None:
    import aiomqtt

    config = load_config(config_path)
    topic = f"{config.mqtt.topic_prefix}/gateway/{config.node}/availability"
    async with aiomqtt.Client(config.mqtt.host, config.mqtt.port) as client:
        await client.subscribe(topic)
        async with asyncio.timeout(timeout):
            async for msg in client.messages:
                if msg.payload == b"online":
                    return


class _Smsc(SimulatorProcess):
    """The SMSC simulator, receipts after 2 s; its control port injects a member's reply."""

    kind = "smsc"
    title = "SMSC simulator"

    def options(self) -> list[str]:
        return ["--receipt-delay", "2"]

    def config(self) -> str:
        return (
            '[sms]\nenabled = true\nsender = "PolicePLP"\n'
            f'[[sms.smsc]]\nname = "simulator"\nhost = "127.0.0.1"\nport = {self.port}\n'
            'system_id = "plp"\npassword = "secret"\nwindow = 10\n'
        )

    async def reply_when_sent(self, phone: str, text: str, within: float = 60) -> None:
        """Once `phone` got its SMS, answer as the member would (before the receipt)."""
        async with asyncio.timeout(within):
            while not (await self.ctl("count", number=phone))["submits"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await self.ctl("mo", source=phone, text=text)


async def _drill(config: Any, job: dict[str, Any], smsc: _Smsc) -> int:
    replier = job["recipients"][1]  # Bram answers "BIEN RECU" by SMS
    reply = asyncio.create_task(smsc.reply_when_sent(replier["phone"], "BIEN RECU"))
    try:
        return await follow_job(config, job, timeout=120)
    finally:
        if not reply.done():
            reply.cancel()
        with contextlib.suppress(BaseException):
            await reply


class _Recorder:
    """Every message on `plp/#`, one JSON line each, from a paho client in its own thread."""

    def __init__(self, port: int, path: Path) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self._out = path.open("w", encoding="utf-8")
        subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="demo-recorder")
        self._client.on_connect = lambda c, *_: c.subscribe("plp/#", qos=1)
        self._client.on_message = self._write
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("the recorder could not subscribe")

    def _write(self, _client: Any, _userdata: Any, msg: Any) -> None:
        text = msg.payload.decode("utf-8", errors="replace")
        line = {"topic": msg.topic, "retain": bool(msg.retain), "payload": text}
        self._out.write(json.dumps(line, ensure_ascii=False) + "\n")

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
        self._out.close()


def start_broker(workdir: Path, port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    """A private mosquitto on 127.0.0.1:`port` (set_tcp_nodelay: see docs/benchmarks.md),
    appended to `procs`; returns once it listens."""
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "set_tcp_nodelay true\n"
    )
    procs.append(
        subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    )
    wait_port(port)


def stop_all(procs: list[subprocess.Popen[bytes]], smtp: Controller) -> None:
    """End the demo's processes, the last started first, and its SMTP sink."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
    with contextlib.suppress(Exception):
        smtp.stop()


def run_demo(workdir: Path) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "mail").mkdir(parents=True)
    procs: list[subprocess.Popen[bytes]] = []
    mqtt_port, smtp_port = free_port(), free_port()
    sink = _MailSink(workdir / "mail")
    smtp = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    config_path = workdir / "gateway.toml"
    config_path.write_text(
        'node = "demo"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
        f'[store]\npath = "{workdir}/gateway.sqlite3"\n'
        f'[email]\nenabled = true\nhost = "127.0.0.1"\nport = {smtp_port}\n'
        'sender = "alerte@police-zone5344.example.be"\nconcurrency = 4\n'
        "[status]\njob_status_interval = 0.5\n"
    )
    (workdir / "sounds").mkdir()
    voice_sim, voice_toml = start_voice(workdir)
    assert voice_sim.proc is not None
    procs.append(voice_sim.proc)
    with config_path.open("a") as fh:
        fh.write(voice_toml)
    try:
        print(f"demo: mosquitto on 127.0.0.1:{mqtt_port}, SMTP sink on 127.0.0.1:{smtp_port}")
        start_broker(workdir, mqtt_port, procs)
        recorder = _Recorder(mqtt_port, workdir / "mqtt.jsonl")
        smtp.start()
        smsc = _Smsc(workdir)
        smsc.start()
        assert smsc.proc is not None
        procs.append(smsc.proc)
        print(f"demo: SMSC simulator (SMPP) on 127.0.0.1:{smsc.port}")
        with config_path.open("a") as fh:
            fh.write(smsc.config())
        log = open(workdir / "gateway.log", "wb")  # noqa: SIM115
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config_path)],
            stdout=log,
            stderr=log,
        )
        procs.append(gw)
        asyncio.run(_wait_online(config_path))
        print(f"demo: gateway online (log: {workdir / 'gateway.log'})")
        job = sample_job(f"demo-{time.strftime('%Y%m%d-%H%M%S')}", ["email", "sms", "voice"])
        print(f"demo: publishing hot alert {job['id']} to {len(job['recipients'])} members\n")
        config = load_config(config_path)
        rc = asyncio.run(_drill(config, job, smsc))
        print()
        print_report(config, job["id"])
        voice_summary(config_path, job["id"])
        print(f"\ndemo: {sink.count} e-mails in {workdir / 'mail'}")
        stats = asyncio.run(smsc.ctl("stats"))
        counters = stats.get("counters", {})
        print(f"demo: the SMSC simulator accepted {counters.get('accepted', 0)} submit_sm, "
              f"sent {counters.get('receipts_delivrd', 0)} delivery receipts and "
              f"{counters.get('mo_injected', 0)} member reply")  # fmt: skip
        gw.send_signal(signal.SIGTERM)
        code = gw.wait(30)
        recorder.stop()
        print(f"demo: gateway stopped cleanly (exit {code})")
        print(f"demo: every MQTT message of the run in {workdir / 'mqtt.jsonl'}")
        # One member has an invalid address on purpose: the job still ends "done".
        return 0 if rc in (0, 1) and code == 0 else 1
    finally:
        stop_all(procs, smtp)


def main(argv: list[str] | None = None) -> int:
    """`demo [DIR]`, or `demo --nodes N [--store-url URL] [DIR]` (gateway.demo_cluster)."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="plp-gateway demo")
    parser.add_argument("workdir", nargs="?", default="demo-state")
    parser.add_argument("--nodes", type=int, default=1, help="gateway nodes sharing the alert")
    parser.add_argument(
        "--store-url",
        default=os.environ.get("PLP_DEMO_STORE_URL"),
        help="PostgreSQL database for --nodes 2+ (default: $PLP_DEMO_STORE_URL)",
    )
    args = parser.parse_args(argv or [])
    workdir = Path(args.workdir).resolve()
    if args.nodes <= 1:
        return run_demo(workdir)
    if not args.store_url:
        print("demo --nodes needs a PostgreSQL database: --store-url postgresql://... or"
              " PLP_DEMO_STORE_URL (the nodes share their work through it)")  # fmt: skip
        return 2
    from .demo_cluster import run_cluster_demo

    return run_cluster_demo(workdir, args.nodes, args.store_url)
