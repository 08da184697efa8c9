"""`plp-gateway demo --nodes N`: several gateway nodes sharing one alert, and one of them
killed (kill -9) in the middle of it: the others take over and finish.

Needs a PostgreSQL database the demo may fill (`--store-url URL` or `PLP_DEMO_STORE_URL`):
nodes share their work through it. Everything else is private to the demo: mosquitto, an
SMTP sink, the SMSC simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiosmtpd.controller import Controller

from .cluster import print_cluster
from .config import load_config
from .demo import LANGS, _MailSink, _Smsc, _wait_online, start_broker, stop_all
from .follow import follow_job
from .simulator_process import free_port

LEASE = 6.0  # short, so that the takeover shows within the demo


def _members(n: int) -> list[dict[str, str]]:
    return [
        {
            "ref": f"m-{i:04d}",
            "email": f"member{i}@example.be",
            "phone": f"+32470{i:06d}",
            "lang": LANGS[i % len(LANGS)],
        }
        for i in range(n)
    ]


def _claimed(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(int(n) for n in re.findall(r"cluster: claimed (\d+) ", text))


async def _kill_busiest(
    nodes: dict[str, subprocess.Popen[bytes]], workdir: Path, sink: _MailSink, after: int
) -> None:
    while sink.count < after:  # noqa: ASYNC110 - a demo, polling a counter
        await asyncio.sleep(0.1)
    busiest = max(nodes, key=lambda name: _claimed(workdir / f"{name}.log"))
    nodes[busiest].send_signal(signal.SIGKILL)
    print(f"\ndemo: kill -9 {busiest} (it had claimed the most); the others take over once its")
    print(f"      {LEASE:.0f} s lease runs out\n")


def run_cluster_demo(workdir: Path, n_nodes: int, store_url: str, members: int = 400) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "mail").mkdir(parents=True)
    procs: list[subprocess.Popen[bytes]] = []
    mqtt_port, smtp_port = free_port(), free_port()
    sink = _MailSink(workdir / "mail")
    smtp = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    nodes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        start_broker(workdir, mqtt_port, procs)
        smtp.start()
        smsc = _Smsc(workdir)
        smsc.start()
        assert smsc.proc is not None
        procs.append(smsc.proc)
        configs: list[Path] = []
        for i in range(n_nodes):
            name = f"node{i + 1}"
            path = workdir / f"{name}.toml"
            path.write_text(
                f'node = "{name}"\n'
                f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nshared_group = "demo"\n'
                f'[store]\nurl = "{store_url}"\n'
                f"[cluster]\nlease = {LEASE}\nclaim_batch = 40\n"
                f'[email]\nenabled = true\nhost = "127.0.0.1"\nport = {smtp_port}\n'
                'sender = "alerte@police-zone5344.example.be"\nconcurrency = 4\n'
                '[status]\njob_status_interval = 0.5\n[log]\nlevel = "DEBUG"\n' + smsc.config()
            )
            configs.append(path)
            log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115
            nodes[name] = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(path)],
                stdout=log,
                stderr=log,
            )
            procs.append(nodes[name])
            asyncio.run(_wait_online(path))
            print(f"demo: {name} online (log: {workdir / f'{name}.log'})")
        time.sleep(LEASE / 3 * 1.3)  # the last node's join: one heartbeat before it claims
        config = load_config(configs[0])
        print_cluster(config)
        job = {
            "id": f"demo-cluster-{time.strftime('%Y%m%d-%H%M%S')}",
            "priority": "hot",
            "message": {
                "fr": "Alerte PLP: cambriolages rue des Tilleuls. Fermez portes et fenêtres.",
                "nl": "BIN-alarm: inbraken in de Lindestraat. Sluit deuren en ramen.",
                "de": "KPP-Alarm: Einbrüche in der Lindenstraße. Türen und Fenster schließen.",
                "en": "PLP alert: burglaries in Linden Street. Lock doors and windows.",
            },
            "subject": {"fr": "Alerte PLP", "nl": "BIN-alarm", "de": "KPP-Alarm", "en": "PLP"},
            "channels": ["email", "sms"],
            "recipients": _members(members),
            "ttl": 900,
        }
        print(f"\ndemo: publishing {job['id']} to {members} members by e-mail and SMS\n")

        async def drill() -> int:
            killer = asyncio.create_task(_kill_busiest(nodes, workdir, sink, members // 4))
            try:
                return await follow_job(config, job, timeout=180, mode="plain")
            finally:
                killer.cancel()
                with contextlib.suppress(BaseException):
                    await killer

        rc = asyncio.run(drill())
        print()
        for name in nodes:
            text = (workdir / f"{name}.log").read_text(errors="replace")
            for line in text.splitlines():
                if "took over from" in line or "adopted the MQTT session" in line:
                    print(f"demo: {name}: {line.split(' ', 4)[-1]}")
            print(f"demo: {name} claimed {_claimed(workdir / f'{name}.log')} deliveries")
        print_cluster(config)
        counters = asyncio.run(smsc.ctl("stats")).get("counters", {})
        sms = counters.get("accepted", 0)
        print(f"demo: {sink.count} e-mails and {sms} SMS for {members} members")
        print("      (a few more than one each: the killed node's attempts in flight)")
        return 0 if rc in (0, 1) else 1
    finally:
        stop_all(procs, smtp)
