"""An Asterisk Manager Interface simulator: a TCP server that places fake calls.

`plp-gateway simulate asterisk` runs it (see `main`); tests use `AsteriskSimulator` in-process.
Outcomes by the number's last digit (see voice/simulator_calls.py), time scaled by `speed`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.privacy import mask_phone

from .simulator_astdb import AstDB, db_action
from .simulator_calls import BEHAVIOUR, Half, SimCall, playback_seconds
from .simulator_control import start_control

log = logging.getLogger("voice.simulator")

BANNER = "Asterisk Call Manager/11.0.0\r\n"
EOL = "\r\n"
Reply = Callable[..., None]  # the `reply(response, message, *extra)` helper of `_handle`


@dataclass
class SimConfig:
    username: str = "plp-gateway"
    secret: str = "secret"  # noqa: S105 - a simulator's default
    speed: float = 1.0  # 10 = every delay divided by 10
    max_channels: int = 30  # trunk capacity: more concurrent Originates fail (congestion)
    check_files: bool = True  # Playback of a missing ALERT_FILE fails (PlaybackStatus FAILED)
    playback_s: float | None = None  # force every message to last this long (call time)
    stats_file: Path | None = None  # JSON counters for another process (tests, bench)
    # manager.conf `timestampevents`: a Timestamp header on every event. A call's events
    # carry its own clock (SimCall.clock): real-speed time even at speed > 1.
    timestamp_events: bool = False


@dataclass
class SimStats:
    originates: int = 0
    calls_per_number: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    active: int = 0
    peak: int = 0
    rejected_over_limit: int = 0
    originate_errors: int = 0
    hangups_requested: int = 0
    logins_failed: int = 0
    logins: int = 0
    first_originate_at: float | None = None
    channel_seconds: float = 0.0  # sum of call durations (wall clock): utilisation
    # One entry per Originate: number, action id, start/end (time.time()), outcome.
    record: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "originates": self.originates,
            "calls_per_number": dict(self.calls_per_number),
            "outcomes": dict(self.outcomes),
            "active": self.active,
            "peak": self.peak,
            "rejected_over_limit": self.rejected_over_limit,
            "originate_errors": self.originate_errors,
            "hangups_requested": self.hangups_requested,
            "logins": self.logins,
            "logins_failed": self.logins_failed,
            "first_originate_at": self.first_originate_at,
            "channel_seconds": self.channel_seconds,
        }


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.authenticated = False
        self.events = True

    def send(self, lines: list[tuple[str, str]]) -> None:
        if self.writer.is_closing():
            return
        text = "".join(f"{k}: {v}{EOL}" for k, v in lines) + EOL
        self.writer.write(text.encode())


class AsteriskSimulator:
    """In-process AMI server: `await sim.start()`, `sim.port`, `sim.stats`, `await sim.stop()`."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.stats = SimStats()
        self.fail_originates = 0  # answer that many next Originates with "Response: Error"
        self.astdb = AstDB()  # what the dialplan records (plp/<PLP_CALL>); survives restart()
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._calls: dict[str, SimCall] = {}  # by ;1 channel name
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._uid = 0
        self._boot = time.time()
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port or self.port)
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        self._boot = time.time()
        log.info("AMI simulator listening on %s:%d (speed x%g)", host, self.port, self.config.speed)

    async def stop(self) -> None:
        """Stop like a crash: calls vanish without events, connections are cut."""
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        self._calls.clear()
        self.stats.active = 0

    async def restart(self) -> None:
        """Asterisk restarts: everything is lost, then it listens again on the same port."""
        await self.stop()
        await self.start(self.host, self.port)

    def reset_stats(self) -> None:
        """Start counting afresh (calls in progress go on)."""
        active, self.stats = self.stats.active, SimStats()
        self.stats.active = active

    def drop_connections(self) -> None:
        """Cut every AMI connection (calls go on, like a network failure)."""
        for s in list(self._sessions):
            s.writer.transport.abort()
        self._sessions.clear()

    def live_calls(self) -> list[SimCall]:
        return [c for c in self._calls.values() if not c.ended]

    # -- wire ------------------------------------------------------------------------------
    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.config.speed)

    def _broadcast(self, name: str, fields: list[tuple[str, str]], at: float | None = None) -> None:
        lines = [("Event", name), *fields]
        if self.config.timestamp_events:
            stamp = ("Timestamp", f"{time.time() if at is None else at:.6f}")
            lines.insert(2 if fields and fields[0][0] == "Privilege" else 1, stamp)
        for s in list(self._sessions):
            if s.authenticated and s.events:
                s.send(lines)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(reader, writer)
        self._sessions.add(session)
        writer.write(BANNER.encode())
        try:
            while True:
                message = await self._read_message(reader)
                if message is None:
                    break
                if not await self._handle(session, message):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._sessions.discard(session)
            writer.close()

    @staticmethod
    async def _read_message(reader: asyncio.StreamReader) -> list[tuple[str, str]] | None:
        lines: list[tuple[str, str]] = []
        while True:
            raw = await reader.readline()
            if not raw:
                return None
            line = raw.decode(errors="replace").rstrip("\r\n")
            if not line:
                if lines:
                    return lines
                continue
            key, _, value = line.partition(":")
            lines.append((key.strip(), value.strip()))

    async def _handle(self, s: _Session, message: list[tuple[str, str]]) -> bool:
        headers = {k.lower(): v for k, v in message}
        action = headers.get("action", "").lower()
        aid = headers.get("actionid")
        head = [("ActionID", aid)] if aid is not None else []

        def reply(response: str, text: str, *extra: tuple[str, str]) -> None:
            s.send([("Response", response), *head, ("Message", text), *extra])

        if action == "login":
            if headers.get("username") == self.config.username and (
                headers.get("secret") == self.config.secret
            ):
                s.authenticated = True
                s.events = headers.get("events", "on").lower() not in ("off", "no")
                self.stats.logins += 1
                reply("Success", "Authentication accepted")
                uptime = str(int(time.time() - self._boot))
                if s.events:
                    s.send(
                        [
                            ("Event", "FullyBooted"),
                            ("Privilege", "system,all"),
                            ("Uptime", uptime),
                            ("LastReload", uptime),
                            ("Status", "Fully Booted"),
                        ]
                    )
                return True
            self.stats.logins_failed += 1
            await self._sleep(1.0)  # Asterisk sleeps 1 s, answers, then hangs up
            reply("Error", "Authentication failed")
            await s.writer.drain()
            return False
        if action == "logoff":
            reply("Goodbye", "Thanks for all the fish.")
            await s.writer.drain()
            return False
        if not s.authenticated:
            reply("Error", "Permission denied")
            return True
        if action == "ping":
            s.send(
                [
                    ("Response", "Success"),
                    *head,
                    ("Ping", "Pong"),
                    ("Timestamp", f"{time.time():.6f}"),
                ]
            )
        elif action == "originate":
            self._originate(headers, message, reply)
        elif action == "hangup":
            self._hangup(headers, reply)
        elif action == "status":
            self._status(s, head, headers, reply)
        elif action == "coreshowchannels":
            self._core_show_channels(s, head, reply)
        elif not db_action(self.astdb, action, headers, s.send):
            reply("Error", "Invalid/unknown command")
        return True

    # -- actions ---------------------------------------------------------------------------
    def _originate(
        self, headers: dict[str, str], message: list[tuple[str, str]], reply: Reply
    ) -> None:
        dial = headers.get("channel", "")
        if not dial:
            reply("Error", "Channel not specified")
            return
        if self.fail_originates > 0:
            self.fail_originates -= 1
            self.stats.originate_errors += 1
            reply("Error", "Originate failed")
            return
        if headers.get("async", "false").lower() not in ("true", "yes", "1"):
            reply("Error", "The simulator only supports Async Originate")
            return
        match = re.search(r"\d{4,}", dial)
        number = match.group(0) if match else "0"
        variables: list[tuple[str, str]] = []
        for key, value in message:
            if key.lower() == "variable":
                for part in value.split(","):
                    name, _, val = part.strip().partition("=")
                    if name:
                        variables.append((name, val))
        cid_match = re.match(r'\s*"?([^"<]*)"?\s*<([^>]*)>', headers.get("callerid", ""))
        caller = (cid_match.group(2), cid_match.group(1).strip()) if cid_match else ("", "")
        self.stats.originates += 1
        if self.stats.first_originate_at is None:
            self.stats.first_originate_at = time.time()
        self.stats.calls_per_number[number] += 1
        reply("Success", "Originate successfully queued")
        aid = headers.get("actionid", "")
        entry: dict[str, object] = {"number": number, "action_id": aid, "start": time.time()}
        self.stats.record.append(entry)
        timeout_s = float(headers.get("timeout", "30000") or 30000) / 1000.0
        if self.stats.active >= self.config.max_channels:
            # Trunk full: like a real trunk, the call fails at once with congestion.
            self.stats.rejected_over_limit += 1
            self.stats.outcomes["over_limit"] += 1
            entry.update(end=entry["start"], outcome="over_limit")
            self._broadcast(
                "OriginateResponse",
                [
                    ("Privilege", "call,all"),
                    ("ActionID", aid),
                    ("Response", "Failure"),
                    ("Channel", dial),
                    ("Context", headers.get("context", "")),
                    ("Exten", headers.get("exten", "")),
                    ("Reason", "8"),
                    ("Uniqueid", "<unknown>"),
                    ("CallerIDNum", caller[0]),
                    ("CallerIDName", caller[1]),
                ],
            )
            self._write_stats()
            return
        self._seq += 1
        base = f"{dial}-{self._seq:08x}"
        uid1, uid2 = self._next_uid(), self._next_uid()
        exten = number
        call = SimCall(
            action_id=aid,
            dial=dial,
            number=number,
            one=Half(f"{base};1", uid1, uid1, 0, exten),
            two=Half(f"{base};2", uid2, uid1, 4, exten),
            variables=variables,
            caller_id=caller,
            context=headers.get("context", "plp-alert"),
            exten=headers.get("exten", "s"),
            timeout_s=timeout_s,
            emit=self._broadcast,
            sleep=self._sleep,
            speed=self.config.speed,
            astdb=self.astdb,
        )
        alert = dict(variables).get("ALERT_FILE", "")
        if self.config.playback_s is not None:
            length: float | None = self.config.playback_s
            if self.config.check_files and playback_seconds(alert) is None:
                length = None
        elif self.config.check_files:
            length = playback_seconds(alert)
        else:
            length = playback_seconds(alert) or 10.33
        behaviour = BEHAVIOUR.get(number[-1], "ack")
        self._calls[call.one.name] = call
        self.stats.active += 1
        self.stats.peak = max(self.stats.peak, self.stats.active)
        log.info("originate %s -> %s (%s)", aid, mask_phone("+" + number), behaviour)
        task = asyncio.ensure_future(self._play(call, length, behaviour, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._write_stats()

    async def _play(
        self, call: SimCall, length: float | None, behaviour: str, entry: dict[str, object]
    ) -> None:
        began = time.monotonic()
        try:
            await call.run(length, behaviour)
            outcome = behaviour if not call.hangup_cause else "hung_up_by_ami"
            self.stats.outcomes[outcome] += 1
            entry["outcome"] = outcome
        finally:
            entry["end"] = time.time()
            self.stats.channel_seconds += time.monotonic() - began
            self.stats.active -= 1
            self._calls.pop(call.one.name, None)
            self._write_stats()

    def _next_uid(self) -> str:
        self._uid += 1
        return f"{int(self._boot)}.{self._uid}"

    def _find(self, name: str) -> Iterator[SimCall]:
        if name.startswith("/") and name.endswith("/") and len(name) > 1:
            pattern = re.compile(name[1:-1])
            for call in self.live_calls():
                if pattern.search(call.one.name) or pattern.search(call.two.name):
                    yield call
            return
        for call in self.live_calls():
            if name in (call.one.name, call.two.name):
                yield call

    def _hangup(self, headers: dict[str, str], reply: Reply) -> None:
        found = list(self._find(headers.get("channel", "")))
        if not found:
            reply("Error", "No such channel")
            return
        for call in found:
            self.stats.hangups_requested += 1
            call.hangup_cause = headers.get("cause") or "16"
            call.hangup_event.set()
        reply("Success", "Channel Hungup")

    def _status(
        self, s: _Session, head: list[tuple[str, str]], headers: dict[str, str], reply: Reply
    ) -> None:
        wanted = [v.strip() for v in headers.get("variables", "").split(",") if v.strip()]
        reply("Success", "Channel status will follow")
        items = 0
        for call in self.live_calls():
            for h in (call.one, call.two):
                extra = [("Variable", f"{v}={h.variables.get(v, '')}") for v in wanted]
                s.send([("Event", "Status"), ("Privilege", "Call"), *h.fields(), *extra, *head])
                items += 1
        s.send([("Event", "StatusComplete"), *head, ("Items", str(items))])

    def _core_show_channels(self, s: _Session, head: list[tuple[str, str]], reply: Reply) -> None:
        reply("Success", "Channels will follow", ("EventList", "start"))
        items = 0
        for call in self.live_calls():
            for h in (call.one, call.two):
                s.send([("Event", "CoreShowChannel"), *head, *h.fields()])
                items += 1
        s.send(
            [
                ("Event", "CoreShowChannelsComplete"),
                *head,
                ("EventList", "Complete"),
                ("ListItems", str(items)),
            ]
        )

    def _write_stats(self) -> None:
        path = self.config.stats_file
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats.as_dict()), encoding="utf-8")
        tmp.replace(path)


def read_stats(path: Path) -> dict[str, object]:
    """Counters written by a simulator in another process (`--stats-file`)."""
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return data


_DESCRIPTION = """\
A pretend telephone exchange (Asterisk) on this machine, for trying voice calls without a real
Asterisk or phone line: the gateway connects to it as to Asterisk's manager interface (AMI),
and every call it places is played out with the events a real Asterisk sends. Nobody is
actually called. What the "member" does depends on the last digit of the number:

  1, 0, 9  answers, listens to the message, presses 1    -> acknowledged (answered
                                                             when no press-1 was asked)
  2        busy                                           -> busy
  3        rings and is never picked up                   -> no_answer
  4        the network is congested                       -> congestion
  5        answers but hangs up during the message        -> hung_up_early
  6        answers and listens, presses nothing           -> answered
  7        phone switched off / out of coverage           -> unreachable
  8        number does not exist                          -> invalid_number
"""

_EPILOG = """\
Point the gateway at it in gateway.toml:
  [voice]
  enabled = true
  channel = "Local/{number}@plp-phones"
  [voice.ami]
  host = "127.0.0.1"
  port = 5038
  username = "plp-gateway"
  secret = "secret"

examples:
  plp-gateway simulate asterisk                      real-time calls on port 5038
  plp-gateway simulate asterisk --speed 10            every call ten times faster
  plp-gateway simulate asterisk --max-channels 4      a small line: more calls get congestion

Stop it with Ctrl+C. Every option is described in docs/voice-calls.md ("The AMI simulator").
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plp-gateway simulate asterisk",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=5038,
        help="port the gateway connects to, AMI (default: %(default)s)",
    )
    parser.add_argument(
        "--username",
        default="plp-gateway",
        help="user name the gateway must log in with (default: %(default)s)",
    )
    parser.add_argument(
        "--secret",
        default="secret",
        help="password the gateway must log in with (default: %(default)s)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="how much faster than real time calls run: 10 = ten times faster (default: 1)",
    )
    parser.add_argument(
        "--max-channels",
        type=int,
        default=30,
        help="calls at the same time; more fail as congestion (default: %(default)s)",
    )
    parser.add_argument(
        "--playback",
        type=float,
        default=None,
        help="pretend every message lasts this many seconds "
        "(default: the length of the gateway's audio file)",
    )
    parser.add_argument(
        "--no-file-check",
        action="store_true",
        help="play calls even when the gateway's audio file is not on this machine",
    )
    parser.add_argument(
        "--stats-file",
        type=Path,
        default=None,
        help="keep call counters in this JSON file, for scripts",
    )
    parser.add_argument(
        "--control-port",
        type=int,
        default=None,
        help="port for steering the simulator from scripts, JSON lines (0 = any free port; "
        "default: none)",
    )
    parser.add_argument(
        "--port-file", type=Path, help="write the ports actually used here, as JSON"
    )
    parser.add_argument(
        "--timestamp-events",
        action="store_true",
        help="add a Timestamp to every event, like Asterisk with timestampevents = yes",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`plp-gateway simulate asterisk`: run the simulator until SIGINT/SIGTERM."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    cfg = SimConfig(
        username=args.username,
        secret=args.secret,
        speed=args.speed,
        max_channels=args.max_channels,
        check_files=not args.no_file_check,
        playback_s=args.playback,
        stats_file=args.stats_file,
        timestamp_events=args.timestamp_events,
    )

    async def run() -> None:
        sim = AsteriskSimulator(cfg)
        await sim.start(args.host, args.port)
        ctl = None
        control_port = None
        if args.control_port is not None:
            ctl = await start_control(sim, args.host, args.control_port)
            control_port = ctl.sockets[0].getsockname()[1]
        if args.port_file:
            ports = {"port": sim.port, "control_port": control_port}
            args.port_file.write_text(json.dumps(ports), encoding="utf-8")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        control = f", control on {args.host}:{control_port}" if ctl is not None else ""
        print(f"AMI simulator on {sim.host}:{sim.port}{control}", flush=True)
        await stop.wait()
        if ctl is not None:
            ctl.close()
        await sim.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
