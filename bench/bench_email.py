"""Benchmark: a 10,000-recipient e-mail job through a real broker, gateway and SMTP server.

Prints MQTT publish -> first e-mail latency and sustained throughput.
Run: .venv/bin/python -m bench.bench_email [--recipients 10000] [--concurrency 8] [--plot DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures import (  # noqa: E402
    GatewayProcess,
    Mosquitto,
    Observer,
    SmtpServer,
    email_job,
    gateway_config,
    members,
)


async def run(n: int, concurrency: int, plot: Path | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker")
        broker.start()
        smtp = SmtpServer()
        smtp.start()
        first: list[float] = []
        accepted: list[float] = []  # when each e-mail's DATA arrived (for --plot)
        orig = smtp.handler.handle_DATA

        async def stamp(server: object, session: object, envelope: object) -> str:
            if not first:
                first.append(time.perf_counter())
            accepted.append(time.perf_counter())
            return await orig(server, session, envelope)

        smtp.handler.handle_DATA = stamp  # type: ignore[method-assign]
        config = gateway_config(work, broker, smtp)
        text = config.read_text().replace('level = "DEBUG"', 'level = "WARNING"')
        text = text.replace("concurrency = 4", f"concurrency = {concurrency}")
        config.write_text(text)
        gw = GatewayProcess(config, work)
        gw.start()
        try:
            async with Observer(broker) as obs:
                await obs.wait(lambda: obs.on("/gateway/test/availability"), 30)
                job = email_job("bench-email", members(n))
                payload = json.dumps(job)
                t0 = time.perf_counter()
                await obs.publish("plp/jobs", payload)
                await smtp.await_for(lambda box: len(box) >= n, timeout=600)
                t_end = time.perf_counter()
                await obs.wait_job("bench-email", "done", timeout=120)
                t_done = time.perf_counter()
            latency = first[0] - t0
            print(f"recipients            {n}")
            print(f"smtp concurrency      {concurrency}")
            print(f"payload               {len(payload) / 1e6:.2f} MB")
            print(f"publish -> 1st e-mail {latency * 1000:.0f} ms")
            print(f"all e-mails accepted  {t_end - t0:.2f} s")
            print(f"throughput            {n / (t_end - first[0]):.0f} e-mails/s (after the first)")
            print(f"job status 'done'     {t_done - t0:.2f} s after publish")
            if plot is not None:
                from bench import plots

                plots.progress(
                    plot / "email_progress.png",
                    f"E-mail: a {n:,}-recipient job, {concurrency} SMTP connections, "
                    f"{n / (t_end - first[0]):.0f} e-mails/s",
                    {"e-mails accepted by aiosmtpd": [t - t0 for t in accepted]},
                    "e-mails accepted",
                    plots.machine_note(f"bench_email --recipients {n} --concurrency {concurrency}"),
                )
        finally:
            gw.stop()
            smtp.stop()
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots there")
    args = parser.parse_args()
    asyncio.run(run(args.recipients, args.concurrency, args.plot))


if __name__ == "__main__":
    main()
