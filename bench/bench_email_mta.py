"""Benchmark: e-mail through a real MTA (Postfix on loopback), its ceiling measured first.

One run: a private Postfix instance (its own config, queue and log in a temporary directory,
smtpd on a free loopback port, every message to the discard transport) is started; N plain
smtplib connections measure what it takes (the ceiling); then the gateway as a process (real
mosquitto, shipped defaults except the SMTP host and port) sends a 5,000 and a 10,000-recipient
job. A message counts as accepted when Postfix's queue manager logs it (`queue active`): it is
then committed to the queue. The log is Postfix's own `maillog_file`, followed by this script.

Postfix is installed with apt-get when missing (services kept from starting, the system
instance left disabled); the system's own mail configuration and port 25 are not touched, and
the private instance is stopped and removed afterwards.

Run (as root): .venv/bin/python -m bench.bench_email_mta [--jobs 5000 10000] [--connections 8]
    [--py-spy PATH] [--log FILE] [--email-concurrency N] [--log-level LEVEL]
    (py-spy from PyPI: the gateway's profile per job, collapsed stacks)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import tree_cpu  # noqa: E402
from gateway.simulator_process import free_port, wait_port  # noqa: E402
from tests.fixtures import GatewayProcess, Mosquitto, Observer, email_job, members  # noqa: E402

SENDER = "alerte@police.example.be"
CEILING_SENDER = "ceiling@bench.example.be"
ACCEPTED = re.compile(r"qmgr\[\d+\]: \w+: from=<([^>]*)>, size=\d+, nrcpt=\d+ \(queue active\)")

# Only what the bench needs: no chroot (the private queue has no copy of /etc), loopback only.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
myhostname = mta.bench.invalid
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
default_transport = discard
relay_transport = discard
local_transport = discard
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
syslog_name = postfix-bench
"""


def ensure_postfix() -> None:
    """Install Debian's Postfix when missing, without letting it start or enable a system MTA."""
    if shutil.which("postfix"):
        return
    print("installing postfix with apt-get ...", flush=True)
    selections = (
        "postfix postfix/main_mailer_type select Local only\n"
        "postfix postfix/mailname string localhost\n"
    )
    subprocess.run(["debconf-set-selections"], input=selections.encode(), check=True)
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:  # Debian's switch that keeps maintainer scripts from starting services
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"],
            env=env,
            check=True,
        )
    finally:
        if own_policy:
            policy.unlink()
    if shutil.which("systemctl"):  # no system MTA on port 25 at the next boot either
        subprocess.run(["systemctl", "disable", "postfix"], capture_output=True, check=False)


class PrivateMta:
    """A Postfix instance of the bench's own, discarding everything it accepts."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-postfix-"))
        self.dir.chmod(0o755)  # Postfix's daemons run as `postfix` and must reach the queue
        self.conf = self.dir / "etc"
        self.maillog = self.dir / "maillog"
        self.port = free_port()

    def start(self) -> None:
        self.conf.mkdir()
        (self.dir / "spool").mkdir()
        data = self.dir / "data"
        data.mkdir()
        shutil.chown(data, "postfix")
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))
        (self.conf / "main.cf").write_text(MAIN_CF.format(dir=self.dir))
        self.maillog.touch()
        shutil.chown(self.maillog, "postfix")
        subprocess.run(["postfix", "-c", str(self.conf), "check"], check=True)
        subprocess.run(["postfix", "-c", str(self.conf), "start"], check=True)
        wait_port(self.port)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], check=False)
        # The master stops its children on its own time; wait for its pid file to go.
        pid_file = self.dir / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)

    def features(self) -> list[str]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as s:
            s.ehlo()
            return sorted(s.esmtp_features)


class LogFollower:
    """Follows the MTA's log and stamps (perf_counter) each message queued from `sender`."""

    def __init__(self, path: Path, sender: str) -> None:
        self.path = path
        self.sender = sender
        self.stamps: list[float] = []
        self._fh = open(path, errors="replace")  # noqa: SIM115
        self._fh.seek(0, os.SEEK_END)
        self._rest = ""

    def poll(self) -> int:
        chunk = self._fh.read()
        if chunk:
            now = time.perf_counter()
            lines = (self._rest + chunk).split("\n")
            self._rest = lines.pop()
            for line in lines:
                m = ACCEPTED.search(line)
                if m and m.group(1) == self.sender:
                    self.stamps.append(now)
        return len(self.stamps)

    async def wait(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.poll() < count:  # noqa: ASYNC110 (a file, not an event: polled)
                await asyncio.sleep(0.002)

    def close(self) -> None:
        self._fh.close()


def _ceiling_worker(port: int, k: int, n: int, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for i in range(n):
            s.sendmail(CEILING_SENDER, [f"c{k}-{i}@example.be"], body)


def ceiling_message() -> bytes:
    """A message shaped like the gateway's (same headers, similar text)."""
    from email.message import EmailMessage
    from email.utils import formatdate

    msg = EmailMessage()
    msg["From"] = CEILING_SENDER
    msg["To"] = "member@example.be"
    msg["Subject"] = "Alerte PLP"
    msg["Date"] = formatdate()
    msg["Message-ID"] = "<plp.ceiling@bench.example.be>"
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-PLP-Job"] = "ceiling"
    msg["X-PLP-Expires"] = formatdate()
    msg["Importance"] = "high"
    msg["X-Priority"] = "1"
    msg.set_content("Vague de cambriolages rue des Tilleuls. Fermez portes et fenêtres.")
    return msg.as_bytes()


def measure_ceiling(mta: PrivateMta, connections: int, total: int) -> float:
    """Messages/s that `connections` plain smtplib clients (one process each) get through."""
    follower = LogFollower(mta.maillog, CEILING_SENDER)
    per = total // connections
    body = ceiling_message()
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_ceiling_worker, args=(mta.port, k, per, body))
        for k in range(connections)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError("a ceiling client failed")
    asyncio.run(follower.wait(per * connections, 120))
    elapsed = follower.stamps[-1] - t0
    follower.close()
    return per * connections / elapsed


def gateway_config(
    work: Path,
    broker: Mosquitto,
    mta: PrivateMta,
    concurrency: int | None = None,
    log_level: str | None = None,
) -> Path:
    """Shipped defaults but for where things are: broker, store, SMTP host and port (and
    `[email] concurrency` or `[log] level` when the run measures their effect)."""
    path = work / "gateway.toml"
    path.write_text(
        'node = "bench"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "plp"\n'
        f'[store]\npath = "{work}/gateway.sqlite3"\n'
        f'[email]\nenabled = true\nhost = "127.0.0.1"\nport = {mta.port}\nsender = "{SENDER}"\n'
        + (f"concurrency = {concurrency}\n" if concurrency is not None else "")
        + (f'[log]\nlevel = "{log_level}"\n' if log_level is not None else "")
    )
    return path


async def run_gateway(
    mta: PrivateMta,
    jobs: list[int],
    py_spy: str | None = None,
    keep_log: str | None = None,
    concurrency: int | None = None,
    log_level: str | None = None,
) -> list[dict[str, float]]:
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker")
        broker.start()
        gw = GatewayProcess(gateway_config(work, broker, mta, concurrency, log_level), work)
        gw.start()
        try:
            async with Observer(broker) as obs:
                await obs.wait(lambda: obs.on("/gateway/bench/availability"), 30)
                for k, n in enumerate(jobs):
                    job_id = f"bench-mta-{k}-{n}"
                    payload = json.dumps(email_job(job_id, members(n)))
                    follower = LogFollower(mta.maillog, SENDER)
                    spy = _py_spy(py_spy, gw, f"bench-email-mta-{n}.pyspy") if py_spy else None
                    cpu0 = _cpu_seconds(gw)
                    t0 = time.perf_counter()
                    await obs.publish("plp/jobs", payload)
                    await follower.wait(n, 600)
                    cpu = _cpu_seconds(gw) - cpu0
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
                        spy.wait(60)
                    await obs.wait_job(job_id, "done", timeout=120)
                    t_done = time.perf_counter()
                    first, last = follower.stamps[0], follower.stamps[-1]
                    follower.close()
                    results.append(
                        {
                            "recipients": n,
                            "payload_mb": len(payload) / 1e6,
                            "first_ms": (first - t0) * 1000,
                            "all_s": last - t0,
                            "rate": n / (last - t0),
                            "sustained": (n - 1) / (last - first) if last > first else 0.0,
                            "done_s": t_done - t0,
                            "cpu_ms": cpu * 1000 / n,
                        }
                    )
        finally:
            gw.stop()
            broker.stop()
            if keep_log:
                shutil.copyfile(gw.log_path, keep_log)
    return results


def _cpu_seconds(gw: GatewayProcess) -> float:
    """CPU time (user + system, all threads) the gateway process and its status child have
    used so far: unlike e-mails/s, hardly moved by what else runs on the machine."""
    assert gw.proc is not None
    return sum(tree_cpu(gw.proc.pid).values())


def _py_spy(binary: str, gw: GatewayProcess, out: str) -> subprocess.Popen[bytes]:
    """Sample the gateway's Python stacks (collapsed, for flamegraph.pl or a quick sort)."""
    assert gw.proc is not None
    pid = str(gw.proc.pid)
    cmd = [binary, "record", "-p", pid, "-r", "200", "--format", "raw", "--threads", "-o", out]
    proc = subprocess.Popen([*cmd, "--nonblocking"], stdout=subprocess.DEVNULL)
    time.sleep(1)  # py-spy attaches before the job is published; not a wait for an event
    return proc


@contextlib.contextmanager
def private_mta() -> Iterator[PrivateMta]:
    ensure_postfix()
    mta = PrivateMta()
    try:
        mta.start()
        yield mta
    finally:
        mta.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, nargs="+", default=[5_000, 10_000])
    parser.add_argument("--connections", type=int, default=8, help="smtplib clients (ceiling)")
    parser.add_argument("--ceiling-messages", type=int, default=8_000)
    parser.add_argument("--py-spy", metavar="BINARY", help="profile the gateway during each job")
    parser.add_argument("--log", metavar="FILE", help="keep the gateway's log there")
    parser.add_argument(
        "--email-concurrency",
        type=int,
        metavar="N",
        help="the gateway's [email] concurrency (default: the shipped value)",
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING"],
        help="the gateway's [log] level (default: the shipped INFO)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: Postfix's master needs it")
    with private_mta() as mta:
        print(f"postfix {mta.port}: {' '.join(mta.features())}")
        ceiling = measure_ceiling(mta, args.connections, args.ceiling_messages)
        print(f"MTA ceiling           {ceiling:.0f} e-mails/s ({args.connections} smtplib clients)")
        results = asyncio.run(
            run_gateway(
                mta,
                args.jobs,
                args.py_spy,
                args.log,
                args.email_concurrency,
                args.log_level,
            )
        )
        # Measured again: on a shared machine the ceiling moves; both bound the ratio.
        after = measure_ceiling(mta, args.connections, args.ceiling_messages)
        print(f"MTA ceiling after     {after:.0f} e-mails/s (same clients, after the jobs)")
        for r in results:
            print(f"--- gateway, {r['recipients']:.0f} recipients ({r['payload_mb']:.2f} MB)")
            print(f"publish -> 1st queued {r['first_ms']:.0f} ms")
            print(f"all queued            {r['all_s']:.2f} s after publish")
            print(f"throughput            {r['rate']:.0f} e-mails/s over the job")
            print(f"  after the first     {r['sustained']:.0f} e-mails/s")
            print(
                f"ratio to the ceiling  {r['rate'] / ceiling:.2f} (after: {r['rate'] / after:.2f})"
            )
            print(f"job status 'done'     {r['done_s']:.2f} s after publish")
            print(f"gateway CPU           {r['cpu_ms']:.2f} ms per e-mail (publish to last queued)")


if __name__ == "__main__":
    main()
