"""SMS benchmark: the SMSC simulator's ceiling, SmsChannel throughput and latency, throttling,
smpplib's blocking client, and (with --kannel) Kannel against the same simulator.

    .venv/bin/python bench/bench_sms.py [--messages 10000] [--window 50] [--kannel]

The simulator runs as its own process (`python -m sms.simulator`), as an operator would run it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.channel import Attempt, Reports  # noqa: E402
from gateway.control_port import control  # noqa: E402
from gateway.domain import Priority  # noqa: E402
from gateway.errors import TemporaryError  # noqa: E402
from sms import pdu as P  # noqa: E402
from sms.channel import SmsChannel  # noqa: E402
from sms.config import SmscConfig, SmsConfig  # noqa: E402

TEXT = "Alerte PLP: cambriolage signale rue Haute, restez vigilants."
_BANNER = re.compile(rb"SMPP on [\d.]+:(\d+), control on [\d.]+:(\d+)")


@dataclass
class Sim:
    proc: asyncio.subprocess.Process
    port: int
    control_port: int

    async def ctl(self, **request: object) -> dict[str, object]:
        answer: dict[str, object] = await control("127.0.0.1", self.control_port, request)
        return answer


@contextlib.asynccontextmanager
async def simulator(*args: str) -> AsyncIterator[Sim]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sms.simulator", "--port", "0", "--control-port", "0",
        "--receipt-delay", "0", "--log-level", "WARNING", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        line = await proc.stdout.readline()
    match = _BANNER.search(line)
    assert match, line
    try:
        yield Sim(proc, int(match.group(1)), int(match.group(2)))
    finally:
        proc.terminate()
        await proc.wait()


def number(i: int) -> str:
    return f"+32470{i:06d}"


_ids = itertools.count(1)


def attempt(address: str) -> Attempt:
    n = next(_ids)
    return Attempt(
        delivery_id=n, job_id="bench", channel="sms", ref=f"r{n}", address=address, lang="fr",
        text=TEXT, subject="", priority=Priority.HOT, number=1,
        expires_at=datetime.now(UTC) + timedelta(hours=6), test=False,
    )  # fmt: skip


def link(sim: Sim, window: int, rate: float = 0.0) -> SmscConfig:
    return SmscConfig(
        name="bench", host="127.0.0.1", port=sim.port, system_id="plp",
        password="secret", window=window, rate=rate, reconnect_initial_delay=0.1,  # noqa: S106
    )  # fmt: skip


# 1. the simulator's ceiling under a pipelined raw client
async def raw_ceiling(sim: Sim, count: int, outstanding: int = 1000) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    bind = P.encode("bind_transceiver", 1, system_id="plp", password="secret",  # noqa: S106
                    system_type="", addr_ton=0, addr_npi=0, address_range="")  # fmt: skip
    writer.write(bind)
    frames = P.FrameReader()
    answered = 0
    credit = asyncio.Semaphore(outstanding)
    done = asyncio.Event()
    bound = asyncio.Event()

    async def read() -> None:
        nonlocal answered
        while not done.is_set():
            data = await reader.read(65536)
            if not data:
                return
            for f in frames.feed(data):
                if f.command_id == P.Cmd.BIND_TRANSCEIVER_RESP:
                    bound.set()
                elif f.command_id == P.Cmd.SUBMIT_SM_RESP:
                    answered += 1
                    credit.release()
                    if answered == count:
                        done.set()
                elif f.command_id == P.Cmd.DELIVER_SM:
                    writer.write(P.HEADER.pack(17, P.Cmd.DELIVER_SM_RESP, 0, f.sequence) + b"\0")

    reader_task = asyncio.create_task(read())
    await bound.wait()
    started = time.perf_counter()
    for i in range(count):
        await credit.acquire()
        sm = P.SubmitSm(5, 0, "PLP", 1, 1, number(i)[1:], 0, 0, TEXT.encode(), "", 1)
        writer.write(P.encode_submit_sm(i + 2, sm))
        if i % 200 == 0:
            await writer.drain()
    await done.wait()
    elapsed = time.perf_counter() - started
    reader_task.cancel()
    writer.close()
    return count / elapsed


# 2. SmsChannel: sustained submits/s with `concurrency` senders, like the scheduler
async def channel_throughput(
    sim: Sim, count: int, window: int, receipts: bool = True
) -> tuple[float, float, float]:
    """(send() calls/s, the same until the last receipt, submits/s seen by the SMSC)."""
    reports: Reports = asyncio.Queue()
    ch = SmsChannel(SmsConfig(enabled=True, smsc=(link(sim, window),)), reports)
    await ch.start()
    assert await ch.sessions[0].wait_bound(10)
    concurrency = ch.limits().concurrency
    todo = iter(range(count))
    await sim.ctl(cmd="reset")
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for i in todo:
            try:
                await ch.send(attempt(number(i)))
            except TemporaryError:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    async with asyncio.timeout(60):
        for _ in range(count - failures if receipts else 0):
            await reports.get()
    receipts_elapsed = time.perf_counter() - started
    await ch.stop()
    assert failures == 0, failures
    stats = await sim.ctl(cmd="stats")
    span = float(stats["last_accepted_at"]) - float(stats["first_accepted_at"])  # type: ignore[arg-type]
    return count / elapsed, count / receipts_elapsed, (count - 1) / span


# 3. latency of single messages on an idle bound channel
async def single_latency(sim: Sim, rounds: int) -> list[float]:
    reports: Reports = asyncio.Queue()
    ch = SmsChannel(SmsConfig(enabled=True, smsc=(link(sim, 50),)), reports)
    await ch.start()
    assert await ch.sessions[0].wait_bound(10)
    samples = []
    for i in range(rounds):
        t0 = time.perf_counter()
        await ch.send(attempt(number(500_000 + i)))
        samples.append(time.perf_counter() - t0)
        await reports.get()
    await ch.stop()
    return samples


# 4. throttling: the SMSC accepts 50/s
async def throttled(sim: Sim, rate: float, seconds: float) -> tuple[float, int, int]:
    reports: Reports = asyncio.Queue()
    ch = SmsChannel(SmsConfig(enabled=True, smsc=(link(sim, 10, rate),)), reports)
    await ch.start()
    assert await ch.sessions[0].wait_bound(10)
    before = await sim.ctl(cmd="stats")
    sent = 0
    counter = itertools.count(700_000)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal sent
        while time.perf_counter() < deadline:
            with contextlib.suppress(TemporaryError):
                await ch.send(attempt(number(next(counter))))
                sent += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(20)))
    elapsed = time.perf_counter() - started
    after = await sim.ctl(cmd="stats")
    await ch.stop()
    b, a = before["counters"], after["counters"]
    assert isinstance(a, dict) and isinstance(b, dict)
    submits = a.get("submit_sm", 0) - b.get("submit_sm", 0)
    throttles = a.get("throttled", 0) - b.get("throttled", 0)
    return sent / elapsed, submits, throttles


# 5. smpplib's blocking Client, stop-and-wait (what "use its Client" gives without threads)
def smpplib_blocking(port: int, count: int) -> float:
    import smpplib.client

    client = smpplib.client.Client("127.0.0.1", port, allow_unknown_opt_params=True)
    client.set_message_sent_handler(lambda pdu: None)  # its default prints every PDU
    client.connect()
    client.bind_transceiver(system_id="plp", password="secret")  # noqa: S106
    started = time.perf_counter()
    for i in range(count):
        client.send_message(
            source_addr_ton=5, source_addr="PLP", dest_addr_ton=1, dest_addr_npi=1,
            destination_addr=number(900_000 + i)[1:], short_message=TEXT.encode(),
            registered_delivery=0,
        )  # fmt: skip
        client.read_once()  # the submit_sm_resp
    elapsed = time.perf_counter() - started
    client.unbind()
    client.disconnect()
    return count / elapsed


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main_async(args: argparse.Namespace) -> None:
    print(f"# SMS benchmark: {args.messages} messages, window {args.window}, one bind")
    async with simulator() as sim:
        ceiling = await raw_ceiling(sim, args.messages * 3)
        print(f"simulator ceiling (pipelined raw client, receipts on): {ceiling:,.0f} submit_sm/s")
        tput, with_receipts, seen = await channel_throughput(sim, args.messages, args.window)
        print(f"SmsChannel: {tput:,.0f} send()/s sustained, {seen:,.0f} submit_sm/s seen by the "
              f"SMSC ({with_receipts:,.0f}/s counting until the last receipt)")  # fmt: skip
        lat = await single_latency(sim, args.rounds)
        print(f"single message send() -> submit_sm_resp: p50 {pct(lat, 0.5) * 1e3:.2f} ms, "
              f"p99 {pct(lat, 0.99) * 1e3:.2f} ms over {len(lat)} messages")  # fmt: skip
        blocking = await asyncio.to_thread(smpplib_blocking, sim.port, 2000)
        print(f"smpplib blocking Client, stop-and-wait: {blocking:,.0f} submits/s")
    async with simulator("--no-receipts") as sim:
        _, _, seen_no_dlr = await channel_throughput(sim, args.messages, args.window, False)
        print(
            f"SmsChannel, SMSC sending no receipts: {seen_no_dlr:,.0f} submit_sm/s seen by the SMSC"
        )
    if args.throttle_seconds > 0:
        async with simulator("--throttle", "50", "--no-receipts") as sim:
            rate, submits, throttles = await throttled(sim, 50, args.throttle_seconds)
            share = throttles / max(1, submits)
            print(f"throttled SMSC 50/s, rate = 50: {rate:.1f} msg/s, "
                  f"{throttles}/{submits} throttled ({share:.2%})")  # fmt: skip
        async with simulator("--throttle", "50", "--no-receipts") as sim:
            rate, submits, throttles = await throttled(sim, 0, args.throttle_seconds)
            share = throttles / max(1, submits)
            print(f"throttled SMSC 50/s, rate = unlimited (adaptive): {rate:.1f} msg/s, "
                  f"{throttles}/{submits} throttled ({share:.2%})")  # fmt: skip
    if args.kannel:
        from bench.bench_sms_kannel import run_kannel

        print(f"Kannel 1.4.5, one transceiver bind, max-pending-submits {args.window}, "
              "submit_sm/s seen by the SMSC:")  # fmt: skip
        async with simulator() as sim:
            for prequeue, dlr, label in (
                (False, False, "sendsms HTTP -> SMSC, no receipts"),
                (False, True, "sendsms HTTP -> SMSC, receipts (dlr-mask 3)"),
                (True, False, "pre-queued, SMPP side only, no receipts"),
                (True, True, "pre-queued, SMPP side only, receipts"),
            ):
                k = await run_kannel(
                    sim.port, sim.control_port, args.messages, args.window, dlr=dlr,
                    prequeue=prequeue,
                )  # fmt: skip
                ours = seen if dlr else seen_no_dlr
                print(f"  {label}: {k:,.0f}/s; SmsChannel / Kannel = {ours / k:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--rounds", type=int, default=500, help="single-message latency samples")
    p.add_argument("--throttle-seconds", type=float, default=20.0, help="0 = skip")
    p.add_argument("--kannel", action="store_true", help="also run Kannel (needs `kannel`)")
    asyncio.run(main_async(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
