"""`plp-gateway send`: publish a job, then follow its status and delivery events live.

On a terminal, one live progress block (rich): members reached on any channel out of all,
per channel delivered / acknowledged / failed / retrying, elapsed time; then a table of every
member. On a pipe or a dumb terminal, a plain progress line at most once a second, then the
same table as plain text. `--quiet` prints nothing, `--json` one object at the end. The exit
status says how it went (cli.SEND_EXIT_CODES).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import aiomqtt
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .config import Config
from .job_id import valid_job_id
from .mqtt_connect import tls_parameters
from .outcomes import (
    CHANNEL_COLUMNS,
    Delivery,
    MemberOutcome,
    MemberStatus,
    channel_counts,
    member_counts,
    members,
)
from .status import Topics, iso

FINAL = {"done", "cancelled", "expired", "rejected"}


class Exit(enum.IntEnum):
    REACHED = 0  # the job ended and every member was reached on some channel
    NOT_REACHED = 1  # it ended and some members were not reached
    USAGE = 2  # bad usage or configuration (argparse and the config loader)
    REJECTED = 3  # the gateway rejected the job
    STOPPED = 4  # stopped following before the end: --timeout, or the output was closed


class Progress:
    """What `send` knows of the job so far, from the events and statuses it received."""

    def __init__(self, job: dict[str, Any], started: float | None = None) -> None:
        self.job_id = str(job.get("id"))
        recipients = job.get("recipients")
        self.total = len(recipients) if isinstance(recipients, list) else 0
        self.started = time.monotonic() if started is None else started
        self.state = "published"
        self.status: dict[str, Any] = {}
        self._deliveries: dict[Any, Delivery] = {}  # delivery id -> latest
        self.version = 0  # bumped at each change: plain output prints only what changed

    def event(self, body: dict[str, Any]) -> None:
        try:
            d = Delivery.from_event(body, _parse_time(body.get("time")))
        except (KeyError, ValueError):
            return  # not a delivery event we understand: skip rather than stop following
        self._deliveries[body.get("delivery_id", (d.ref, d.channel))] = d
        self.version += 1

    def job_status(self, body: dict[str, Any]) -> None:
        self.status = body
        self.state = str(body.get("state", self.state))
        self.version += 1

    @property
    def deliveries(self) -> list[Delivery]:
        return list(self._deliveries.values())

    def members(self) -> list[MemberOutcome]:
        return members(self.deliveries)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def counts(self) -> tuple[int, int, int, int]:
        """(reached, acknowledged, not reached, total)."""
        c = member_counts(self.members())
        return c.reached, c.acknowledged, c.not_reached, max(self.total, c.total)

    def channels(self) -> dict[str, dict[str, int]]:
        return channel_counts(self.deliveries)

    def line(self) -> str:
        reached, acked, not_reached, total = self.counts()
        parts = [f"job {self.job_id} {self.state}: reached {reached}/{total}"]
        if acked:
            parts[0] += f", {acked} acknowledged"
        if not_reached:
            parts[0] += f", {not_reached} not reached"
        for channel, n in sorted(self.channels().items()):
            shown = ", ".join(f"{k} {v}" for k, v in n.items() if v) or "-"
            parts.append(f"{channel}: {shown}")
        parts.append(f"{self.elapsed():.1f} s")
        return " | ".join(parts)

    def exit_code(self) -> Exit:
        if self.state not in FINAL:
            return Exit.STOPPED
        if self.state == "rejected":
            return Exit.REJECTED
        reached, _acked, _not, total = self.counts()
        return Exit.REACHED if reached == total else Exit.NOT_REACHED

    def as_json(self, code: Exit) -> dict[str, Any]:
        outcomes = self.members()
        c = member_counts(outcomes)
        return {
            "id": self.job_id,
            "state": self.state,
            "exit": int(code),
            "elapsed_s": round(self.elapsed(), 1),
            "members": {**c.as_dict(), "total": max(self.total, c.total)},
            "channels": self.channels(),
            "member_outcomes": [
                {
                    "ref": m.ref,
                    "status": m.status.value,
                    "reached_by": m.reached_by.channel if m.reached_by else None,
                    "reached_at": iso(m.reached_by.time) if m.reached_by else None,
                    "deliveries": [
                        {
                            "channel": d.channel,
                            "address": d.address,
                            "state": d.state.value,
                            "attempts": d.attempts,
                            "reason": d.reason,
                        }
                        for d in m.deliveries
                    ],
                }
                for m in outcomes
            ],
        }


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- output -----------------------------------------------------------------------------
def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts is not None else ""


def _member_cells(m: MemberOutcome) -> tuple[str, str, str, str]:
    by = f"{m.reached_by.channel} {_clock(m.reached_by.time)}" if m.reached_by else "-"
    detail = ", ".join(
        f"{d.channel} {d.state.value}" + (f" ({d.reason})" if d.reason else "")
        for d in m.deliveries
    )
    return m.ref, m.status.value.replace("_", " "), by, detail


def plain_table(progress: Progress) -> Iterator[str]:
    rows = [_member_cells(m) for m in progress.members()]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(_HEADERS[:3])]
    yield "  ".join(h.ljust(w) for h, w in zip(_HEADERS, [*widths, 0], strict=False)).rstrip()
    for r in rows:
        yield "  ".join(c.ljust(w) for c, w in zip(r, [*widths, 0], strict=False)).rstrip()


_HEADERS = ("member", "outcome", "reached by", "channels")
_STYLE = {
    MemberStatus.ACKNOWLEDGED: "bold green",
    MemberStatus.REACHED: "green",
    MemberStatus.NOT_REACHED: "bold red",
    MemberStatus.PENDING: "yellow",
}


def rich_table(progress: Progress) -> Table:
    table = Table(title=f"job {progress.job_id}: {progress.state}", title_justify="left")
    for h in _HEADERS:
        table.add_column(h)
    for m in progress.members():
        ref, status, by, detail = _member_cells(m)
        table.add_row(ref, Text(status, style=_STYLE[m.status]), by, detail)
    return table


def rich_progress(progress: Progress) -> Group:
    reached, acked, not_reached, total = progress.counts()
    head = Text.assemble(
        (f"job {progress.job_id} ", "bold"),
        f"{progress.state}   ",
        (f"reached {reached}/{total}", "bold green"),
        f"   acknowledged {acked}   ",
        (f"not reached {not_reached}", "red" if not_reached else ""),
        f"   {progress.elapsed():.1f} s",
    )
    table = Table(box=None, pad_edge=False)
    table.add_column("channel")
    for column in CHANNEL_COLUMNS:
        table.add_column(column, justify="right")
    for channel, n in sorted(progress.channels().items()):
        table.add_row(channel, *(str(n[c]) for c in CHANNEL_COLUMNS))
    return Group(head, table)


class Output:
    """Where the progress goes: a live terminal block, plain lines, nothing, or JSON."""

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream, highlight=False)
        live = self.console.is_terminal and not self.console.is_dumb_terminal
        self.mode = "live" if mode == "auto" and live else "plain" if mode == "auto" else mode
        self.interval = 0.25 if self.mode == "live" else 1.0
        self._live: Live | None = None
        self._printed = -1

    def say(self, text: str) -> None:
        if self.mode in ("live", "plain"):
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def start(self, progress: Progress) -> None:
        if self.mode == "live":
            self._live = Live(
                rich_progress(progress), console=self.console, auto_refresh=False, transient=True
            )
            self._live.start()

    def tick(self, progress: Progress) -> None:
        if self._live is not None:
            self._live.update(rich_progress(progress), refresh=True)
        elif self.mode == "plain" and progress.version != self._printed:
            self._printed = progress.version
            print(progress.line(), file=self.stream, flush=True)

    def finish(self, progress: Progress, code: Exit) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self.console.print(rich_table(progress))
            self.console.print(rich_progress(progress))
        elif self.mode == "plain":
            for line in plain_table(progress):
                print(line, file=self.stream)
            print(progress.line(), file=self.stream, flush=True)
        elif self.mode == "json":
            print(json.dumps(progress.as_json(code), ensure_ascii=False), file=self.stream)
        self.stream.flush()

    def abort(self) -> None:
        """Leave the terminal as it was (the live block hides the cursor)."""
        if self._live is not None:
            with contextlib.suppress(Exception):
                self._live.stop()
            self._live = None


# -- MQTT -------------------------------------------------------------------------------
def _client(config: Config) -> aiomqtt.Client:
    cfg = config.mqtt
    return aiomqtt.Client(
        cfg.host,
        cfg.port,
        username=cfg.username,
        password=cfg.password,
        tls_params=tls_parameters(cfg),
        tls_insecure=cfg.tls.insecure if cfg.tls is not None else None,
        timeout=10,
    )


async def follow_job(
    config: Config,
    job: dict[str, Any],
    *,
    follow: bool = True,
    timeout: float = 3600,
    mode: str = "auto",
) -> int:
    """Publish `job` and follow it; `mode` is auto (live on a terminal, else plain), plain,
    quiet or json. Returns an `Exit` status."""
    out = Output(mode)
    try:
        return await _follow(config, job, out, follow, timeout)
    except BrokenPipeError:
        # `send ... | head`: the reader has gone. No traceback, and none at exit either
        # (Python flushes stdout once more then): point stdout at /dev/null.
        out.abort()
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return Exit.STOPPED
    finally:
        out.abort()


async def _follow(
    config: Config, job: dict[str, Any], out: Output, follow: bool, timeout: float
) -> int:
    topics = Topics(config.mqtt.topic_prefix, config.node)
    job_id = str(job.get("id"))
    if not valid_job_id(job_id):
        print("the job id breaks the id rule (docs/security.md)", file=sys.stderr)
        return 2
    progress = Progress(job)
    async with _client(config) as client:
        if follow:
            await client.subscribe(topics.job_status(progress.job_id), qos=1)
            await client.subscribe(topics.job_deliveries(progress.job_id), qos=1)
            await client.subscribe(topics.job_delivery_batches(progress.job_id), qos=1)
            await client.subscribe(topics.rejected, qos=1)
        await client.publish(topics.jobs, json.dumps(job).encode(), qos=1)
        out.say(f"published job {progress.job_id} on {topics.jobs}")
        if not follow:
            return 0
        out.start(progress)
        ticker = asyncio.create_task(_tick(out, progress))
        try:
            async with asyncio.timeout(timeout):
                code = await _receive(client, topics, progress, out)
        except TimeoutError:
            code = Exit.STOPPED
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if code is Exit.REJECTED:
            out.abort()
            return code
        out.finish(progress, code)
        if code is Exit.STOPPED:
            print(f"job {progress.job_id}: still running after {timeout:.0f}s", file=sys.stderr)
        return code


async def _tick(out: Output, progress: Progress) -> None:
    while True:
        out.tick(progress)
        await asyncio.sleep(out.interval)


async def _receive(client: aiomqtt.Client, topics: Topics, progress: Progress, out: Output) -> Exit:
    async for msg in client.messages:
        try:
            body = json.loads(msg.payload) if isinstance(msg.payload, bytes) else {}
        except ValueError:
            continue
        if not isinstance(body, dict):
            continue
        topic = str(msg.topic)
        if topic == topics.rejected:
            if body.get("job_id") == progress.job_id:
                out.abort()
                errors = json.dumps(body.get("errors"), ensure_ascii=False)
                if out.mode == "json":
                    print(json.dumps({"id": progress.job_id, "state": "rejected",
                                      "exit": int(Exit.REJECTED), "errors": body.get("errors")},
                                     ensure_ascii=False), file=out.stream)  # fmt: skip
                elif out.mode != "quiet":
                    print(f"REJECTED: {errors}", file=out.stream)
                return Exit.REJECTED
        elif topic.endswith("/deliveries/batch"):
            for event in body.get("events", []):
                if isinstance(event, dict):
                    progress.event(event)
        elif topic.endswith("/deliveries"):
            progress.event(body)
        else:
            progress.job_status(body)
            if progress.state in FINAL:
                return progress.exit_code()
    return Exit.STOPPED
