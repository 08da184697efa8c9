"""SMSC simulator: a real SMPP 3.4 server over TCP, like Kannel's fake SMSC.

Checks credentials, answers submit_sm with message ids, sends receipts per part after a delay,
accepts MO injection and injects faults on demand. Used in-process by tests (`start()` returns
the port) and as `plp-gateway simulate smsc` (`main`), steered through a JSON control port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import signal
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import pdu as P
from .encoding import ESM_UDHI, concat_info, decode_text, encode_text, strip_udh
from .simulator_control import start_control

log = logging.getLogger("sms.simulator")

RECEIPT_STATES = {"DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "ACCEPTD": 6,
                  "UNKNOWN": 7, "REJECTD": 8}  # fmt: skip


@dataclass
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    system_id: str = "plp"
    password: str = "secret"  # noqa: S105 - the simulator's default credential
    receipts: bool = True
    receipt_delay: float = 0.0
    id_format: str = "dec"  # submit_sm_resp ids: dec | hex
    receipt_id_format: str = "dec"  # ids in receipts: dec | hex
    receipt_tlvs: bool = True  # receipted_message_id + message_state
    redeliver_delay: float = 1.0  # deliver_sm refused or unanswered: send again after this
    # faults, changeable while running
    reject: dict[str, int] = field(default_factory=dict)  # destination digits -> status
    undeliver: set[str] = field(default_factory=set)  # destinations getting UNDELIV
    throttle_rate: float = 0.0  # submit_sm/s accepted per system, 0 = no throttling
    response_delay: float = 0.0
    silent: bool = False  # bound, but no answer to anything
    drop_every: float = 0.0  # close every connection every N seconds
    # End each session after its Nth submit_sm (0 = never), as some SMSCs do: the Nth is
    # answered, then "drop" closes the TCP connection, "unbind" sends an unbind and closes
    # on its unbind_resp. What the ESME wrote after the Nth is neither accepted nor answered.
    close_every: int = 0
    close_with: str = "drop"  # drop | unbind
    hold_binds: bool = False  # leave binds unanswered until released (a gate for benchmarks)
    keep: int = 100_000  # submits kept for inspection


@dataclass(frozen=True)
class Submitted:
    """One received submit_sm, as the tests inspect it."""

    message_id: str
    submit: P.SubmitSm
    at: float


class _Bucket:
    """Token bucket: `rate` per second, 0.2 s worth of burst (SMSCs count per short window)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * 0.2)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Conn(asyncio.Protocol):
    def __init__(self, sim: SmscSimulator) -> None:
        self.sim = sim
        self.frames = P.FrameReader()
        self.transport: asyncio.Transport | None = None
        self._writer: P.FrameWriter | None = None
        self.mode: str | None = None  # "tx", "rx", "trx" once bound
        self.seq = itertools.count(1)
        self.awaiting: dict[int, P.DeliverSm] = {}  # deliver_sm sent, no deliver_sm_resp yet
        self.submits = 0  # submit_sm received on this session
        self.ending = False  # the SMSC ends this session: it takes nothing more

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._writer = P.FrameWriter(transport)
        self.sim.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim.conns.discard(self)
        if self.awaiting:  # like an SMSC: unacknowledged receipts and MOs are delivered again
            self.sim.requeue(list(self.awaiting.values()))
            self.awaiting.clear()

    def write(self, data: bytes) -> None:
        if self._writer is not None:
            self._writer.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def hang_up(self) -> None:
        """Close after what was written (the last responses reach the ESME)."""
        if self.transport is not None and self._writer is not None:
            self._writer.flush()
            self.transport.close()

    @property
    def receives(self) -> bool:
        return self.mode in ("rx", "trx")

    def data_received(self, data: bytes) -> None:
        try:
            for frame in self.frames.feed(data):
                if self.ending and frame.command_id != P.Cmd.UNBIND_RESP:
                    self.sim.counters["ignored_ending"] += 1
                    continue
                self.sim.handle(self, frame)
        except P.PduError as exc:
            log.warning("simulator: malformed PDU from ESME: %s", exc)
            self.close()


_BIND_MODES = {
    P.Cmd.BIND_TRANSMITTER: ("tx", P.Cmd.BIND_TRANSMITTER_RESP),
    P.Cmd.BIND_RECEIVER: ("rx", P.Cmd.BIND_RECEIVER_RESP),
    P.Cmd.BIND_TRANSCEIVER: ("trx", P.Cmd.BIND_TRANSCEIVER_RESP),
}


class SmscSimulator:
    """The server. All state is in memory; `stats()` summarises it."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.conns: set[_Conn] = set()
        self.submitted: deque[Submitted] = deque(maxlen=self.config.keep)
        self.submits_by_dest: Counter[str] = Counter()
        self._by_dest: defaultdict[str, list[P.SubmitSm]] = defaultdict(list)
        self.counters: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._bucket: _Bucket | None = None
        self._pending_reports: list[P.DeliverSm] = []
        self._rr = itertools.count()
        self._changed = asyncio.Event()
        self._dropper: asyncio.Task[None] | None = None
        self._held: list[tuple[_Conn, P.Pdu]] = []
        self.port = 0

    # lifecycle
    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Conn(self), self.config.host, self.config.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.set_drop_every(self.config.drop_every)
        self.set_throttle(self.config.throttle_rate)
        log.info("SMSC simulator listening on %s:%d", self.config.host, self.port)
        return self.port

    async def stop(self) -> None:
        self.set_drop_every(0)
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            c.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # fault control
    def set_throttle(self, rate: float) -> None:
        self.config.throttle_rate = rate
        self._bucket = _Bucket(rate) if rate > 0 else None

    def set_hold_binds(self, hold: bool) -> None:
        """Hold bind requests unanswered, or answer the held ones and go on normally."""
        self.config.hold_binds = hold
        if not hold:
            held, self._held = self._held, []
            for conn, frame in held:
                if conn in self.conns:
                    self._bind(conn, frame)

    def set_drop_every(self, seconds: float) -> None:
        self.config.drop_every = seconds
        if self._dropper is not None:
            self._dropper.cancel()
            self._dropper = None
        if seconds > 0:
            self._dropper = asyncio.get_running_loop().create_task(self._drop_loop(seconds))

    async def _drop_loop(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.drop_connections()

    def drop_connections(self) -> int:
        n = len(self.conns)
        for c in list(self.conns):
            c.close()
        self.counters["dropped_connections"] += n
        return n

    def bound(self, mode: str | None = None) -> int:
        return sum(1 for c in self.conns if c.mode and (mode is None or c.mode == mode))

    # inspection
    def reset(self) -> None:
        """Forget what was received (counters, submits), e.g. between benchmark runs."""
        self.submitted.clear()
        self.submits_by_dest.clear()
        self._by_dest.clear()
        self.counters.clear()

    def submits_to(self, number: str) -> int:
        return self.submits_by_dest[number.removeprefix("+")]

    def parts_to(self, number: str) -> list[P.SubmitSm]:
        return list(self._by_dest.get(number.removeprefix("+"), []))

    def messages_to(self, number: str) -> list[str]:
        return _texts(self._by_dest.get(number.removeprefix("+"), []))

    def order(self, since: int) -> list[tuple[str, float]]:
        """(destination, monotonic time) of the accepted submit_sm after the first `since`,
        in the order they arrived (as far as `keep` reaches back)."""
        count = max(0, self.counters["accepted"] - since)
        start = max(0, len(self.submitted) - count)
        return [
            (s.submit.destination_addr, s.at)
            for s in itertools.islice(self.submitted, start, len(self.submitted))
        ]

    def stats(self) -> dict[str, object]:
        return {
            "port": self.port,
            "connections": len(self.conns),
            "bound": self.bound(),
            "counters": dict(self.counters),
            "destinations": len(self.submits_by_dest),
            # monotonic clock of the first / last accepted submit_sm: a rate seen by the SMSC
            "first_accepted_at": self.submitted[0].at if self.submitted else None,
            "last_accepted_at": self.submitted[-1].at if self.submitted else None,
            "duplicates": sum(1 for n in self.submits_by_dest.values() if n > 1),
        }

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait (event-driven) until `predicate()` is true; TimeoutError otherwise."""
        async with asyncio.timeout(within):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    # sending to the ESME
    def _receiver(self) -> _Conn | None:
        receivers = [c for c in self.conns if c.receives and not c.ending]
        if not receivers:
            return None
        return receivers[next(self._rr) % len(receivers)]

    def _deliver(self, dm: P.DeliverSm) -> bool:
        conn = self._receiver()
        if conn is None:
            self._pending_reports.append(dm)  # stored, like an SMSC, until a receiver binds
            return False
        seq = next(conn.seq)
        conn.awaiting[seq] = dm
        conn.write(P.encode_deliver_sm(seq, dm))
        self.counters["deliver_sm_sent"] += 1
        return True

    def requeue(self, items: list[P.DeliverSm], delay: float | None = None) -> None:
        """Deliver again later: after `redeliver_delay`, or when a receiver binds."""
        self.counters["deliver_sm_requeued"] += len(items)
        self._pending_reports.extend(items)
        wait = self.config.redeliver_delay if delay is None else delay
        asyncio.get_running_loop().call_later(wait, self._flush_pending)

    def _flush_pending(self) -> None:
        pending, self._pending_reports = self._pending_reports, []
        for dm in pending:
            self._deliver(dm)

    def send_receipt(self, message_id: str, dest: str, stat: str = "DELIVRD", err: str = "000",
                     source: str = "PLP") -> None:  # fmt: skip
        """A receipt for any id, e.g. one the ESME never submitted."""
        text = (
            f"id:{message_id} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
            f"submit date:2501011200 done date:2501011200 stat:{stat} err:{err} text:"
        )
        tlv = self.config.receipt_tlvs
        self._deliver(
            P.DeliverSm(1, 1, dest.removeprefix("+"), 5 if not source.isdigit() else 1, 0, source,
                        4, 0, text.encode("ascii"), message_id if tlv else None,
                        RECEIPT_STATES.get(stat, 7) if tlv else None)
        )  # fmt: skip
        self.counters[f"receipts_{stat.lower()}"] += 1

    def inject_mo(self, source: str, text: str, dest: str = "PLP") -> bool:
        """A member's SMS to the gateway (one part)."""
        enc = encode_text(text, 1, truncate=True)
        ton = 1 if source.startswith("+") else 0
        self.counters["mo_injected"] += 1
        return self._deliver(
            P.DeliverSm(ton, 1, source.removeprefix("+"), 5, 0, dest, 0, enc.data_coding,
                        enc.parts[0])
        )  # fmt: skip

    def send_raw(self, data: bytes) -> int:
        """Write raw bytes (e.g. a malformed PDU) to every bound connection."""
        n = 0
        for c in list(self.conns):
            if c.mode:
                c.write(data)
                n += 1
        return n

    # receiving
    def handle(self, conn: _Conn, frame: P.Pdu) -> None:
        cmd = frame.command_id
        if cmd in _BIND_MODES:
            if self.config.hold_binds:
                self._held.append((conn, frame))
            else:
                self._bind(conn, frame)
        elif self.config.silent and conn.mode:
            self.counters["ignored_silent"] += 1
        elif cmd == P.Cmd.SUBMIT_SM:
            self._submit(conn, frame)
        elif cmd == P.Cmd.DELIVER_SM_RESP:
            self.counters["deliver_sm_resp"] += 1
            dm = conn.awaiting.pop(frame.sequence, None)
            if frame.status:
                self.counters["deliver_sm_resp_errors"] += 1
                if dm is not None:
                    self.requeue([dm])
            self._notify()
        elif cmd == P.Cmd.ENQUIRE_LINK:
            conn.write(P.header_only(P.Cmd.ENQUIRE_LINK_RESP, frame.sequence))
        elif cmd == P.Cmd.UNBIND:
            self.counters["unbinds"] += 1
            conn.write(P.header_only(P.Cmd.UNBIND_RESP, frame.sequence))
            conn.mode = None
            if conn.transport is not None and conn._writer is not None:
                conn._writer.flush()
                conn.transport.close()
            self._notify()
        elif cmd == P.Cmd.UNBIND_RESP and conn.ending:
            conn.hang_up()
        elif frame.is_response:
            pass
        else:
            conn.write(P.header_only(P.Cmd.GENERIC_NACK, frame.sequence, P.ESME_RINVCMDID))

    def _bind(self, conn: _Conn, frame: P.Pdu) -> None:
        mode, resp_id = _BIND_MODES[P.Cmd(frame.command_id)]
        bind = frame.decode()
        system_id = bind.system_id.decode() if bind.system_id else ""
        password = bind.password.decode() if bind.password else ""
        status = P.ESME_ROK
        if conn.mode:
            status = P.STATUS["ESME_RALYBND"]
        elif system_id != self.config.system_id:
            status = P.STATUS["ESME_RINVSYSID"]
        elif password != self.config.password:
            status = P.STATUS["ESME_RINVPASWD"]
        body = b"SIMSMSC\x00" if status == P.ESME_ROK else b""
        conn.write(P.HEADER.pack(16 + len(body), resp_id, status, frame.sequence) + body)
        if status:
            self.counters["bind_failures"] += 1
            log.info("simulator: bind rejected: %s", P.status_name(status))
        else:
            conn.mode = mode
            self.counters["binds"] += 1
            if conn.receives:
                self._flush_pending()
        self._notify()

    def _submit(self, conn: _Conn, frame: P.Pdu) -> None:
        seq = frame.sequence
        if conn.mode not in ("tx", "trx"):
            conn.write(P.encode_submit_sm_resp(seq, "", P.ESME_RINVBNDSTS))
            return
        sm = P.decode_submit_sm(frame.body)
        dest = sm.destination_addr
        self.counters["submit_sm"] += 1
        conn.submits += 1
        if self.config.close_every and conn.submits % self.config.close_every == 0:
            conn.ending = True  # this one is answered below, then the session ends
        if self._bucket is not None and not self._bucket.take():
            self.counters["throttled"] += 1
            self._respond(conn, P.encode_submit_sm_resp(seq, "", P.ESME_RTHROTTLED))
            return
        status = self.config.reject.get(dest)
        if status:
            self.counters["rejected"] += 1
            self._respond(conn, P.encode_submit_sm_resp(seq, "", status))
            return
        n = next(self._ids)
        message_id = f"{n:x}" if self.config.id_format == "hex" else str(n)
        self.counters["accepted"] += 1
        self.submits_by_dest[dest] += 1
        self.submitted.append(Submitted(message_id, sm, time.monotonic()))
        self._reassemble(sm)
        self._respond(conn, P.encode_submit_sm_resp(seq, message_id))
        if self.config.receipts and sm.registered_delivery & 0x03:
            rid = f"{n:x}" if self.config.receipt_id_format == "hex" else str(n)
            stat = "UNDELIV" if dest in self.config.undeliver else "DELIVRD"
            err = "005" if stat == "UNDELIV" else "000"
            args = (rid, "+" + dest, stat, err, sm.source_addr)
            if self.config.receipt_delay > 0:
                asyncio.get_running_loop().call_later(
                    self.config.receipt_delay, lambda: self.send_receipt(*args)
                )
            else:
                self.send_receipt(*args)
        self._notify()

    def _respond(self, conn: _Conn, data: bytes) -> None:
        if self.config.response_delay > 0:
            asyncio.get_running_loop().call_later(self.config.response_delay, conn.write, data)
        else:
            conn.write(data)
        if conn.ending:
            loop = asyncio.get_running_loop()
            loop.call_later(self.config.response_delay, self._end_session, conn)

    def _end_session(self, conn: _Conn) -> None:
        self.counters["sessions_ended"] += 1
        if self.config.close_with == "unbind":
            conn.write(P.header_only(P.Cmd.UNBIND, next(conn.seq)))
        else:
            conn.hang_up()
        self._notify()

    def _reassemble(self, sm: P.SubmitSm) -> None:
        # Decoding waits until someone asks (messages_to): it would halve the ceiling.
        self._by_dest[sm.destination_addr].append(sm)


def _texts(parts: list[P.SubmitSm]) -> list[str]:
    """Complete messages from the parts one destination received, in arrival order."""
    texts: list[str] = []
    partial: dict[tuple[int, int], dict[int, str]] = {}
    for sm in parts:
        text = decode_text(sm.short_message, sm.data_coding, sm.esm_class)
        info = concat_info(strip_udh(sm.short_message)[0]) if sm.esm_class & ESM_UDHI else None
        if info is None:
            texts.append(text)
            continue
        ref, total, number = info
        got = partial.setdefault((ref, total), {})
        got[number] = text
        if len(got) == total:
            del partial[(ref, total)]
            texts.append("".join(got[i] for i in sorted(got)))
    return texts


_DESCRIPTION = """\
A pretend SMS operator (SMSC) on this machine, for trying the gateway without a real SMS
contract: it accepts the gateway's SMPP connection, "sends" every SMS (nothing reaches a
phone), and answers with delivery receipts as an operator would. You can make it refuse some
numbers, slow down or drop the connection to see how the gateway copes.
"""

_EPILOG = """\
Point the gateway at it in gateway.toml ([sms] enabled = true), with one operator:
  [[sms.smsc]]
  host = "127.0.0.1"
  port = 2775
  system_id = "plp"
  password = "secret"

examples:
  plp-gateway simulate smsc                       listen on 2775, receipts after 0.5 s
  plp-gateway simulate smsc --reject +32470999999=ESME_RINVDSTADR --undeliver +32470888888
  plp-gateway simulate smsc --throttle 50 --drop-every 10     a busy, unreliable operator

Stop it with Ctrl+C. Every option is described in docs/sms.md ("SMSC simulator").
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plp-gateway simulate smsc",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=2775,
        help="port the gateway connects to, SMPP (default: %(default)s; 0 = any free port)",
    )
    p.add_argument(
        "--control-port",
        type=int,
        default=2776,
        help="port for steering the simulator from scripts, JSON lines "
        "(default: %(default)s; 0 = any free port)",
    )
    p.add_argument("--port-file", type=Path, help="write the ports actually used here, as JSON")
    p.add_argument(
        "--system-id",
        default="plp",
        help="user name the gateway must log in with (default: %(default)s)",
    )
    p.add_argument(
        "--password",
        default="secret",
        help="password the gateway must log in with (default: %(default)s)",
    )
    p.add_argument(
        "--no-receipts", action="store_true", help="never confirm delivery (no receipts)"
    )
    p.add_argument(
        "--receipt-delay",
        type=float,
        default=0.5,
        help="seconds before a message is reported delivered (default: %(default)s)",
    )
    p.add_argument(
        "--id-format",
        choices=["dec", "hex"],
        default="dec",
        help="how message ids are written when a message is accepted (default: %(default)s)",
    )
    p.add_argument(
        "--receipt-id-format",
        choices=["dec", "hex"],
        default="dec",
        help="how message ids are written in receipts; some operators mix the two "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--throttle",
        type=float,
        default=0.0,
        help="messages per second accepted; above that the gateway is told to slow down "
        "(default: 0 = no limit)",
    )
    p.add_argument(
        "--drop-every",
        type=float,
        default=0.0,
        help="cut the gateway's connection every N seconds (default: 0 = never)",
    )
    p.add_argument(
        "--close-every",
        type=int,
        default=0,
        help="end the session after every N messages, as some operators do (default: 0 = never)",
    )
    p.add_argument(
        "--close-with",
        choices=["drop", "unbind"],
        default="drop",
        help="how the session ends with --close-every: cut the connection, or unbind "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--response-delay",
        type=float,
        default=0.0,
        help="seconds before answering each message (default: %(default)s)",
    )
    p.add_argument(
        "--reject",
        action="append",
        default=[],
        metavar="NUMBER=ESME_RXXX",
        help="refuse messages to NUMBER with this SMPP error (repeatable)",
    )
    p.add_argument(
        "--undeliver",
        action="append",
        default=[],
        metavar="NUMBER",
        help="accept messages to NUMBER, then report them undeliverable (repeatable)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)",
    )
    return p


async def _run(args: argparse.Namespace) -> None:
    reject = {}
    for item in args.reject:
        number, _, status = item.partition("=")
        reject[number.removeprefix("+")] = P.STATUS[status or "ESME_RINVDSTADR"]
    config = SimulatorConfig(
        host=args.host, port=args.port, system_id=args.system_id, password=args.password,
        receipts=not args.no_receipts, receipt_delay=args.receipt_delay,
        id_format=args.id_format, receipt_id_format=args.receipt_id_format,
        reject=reject, undeliver={n.removeprefix("+") for n in args.undeliver},
        throttle_rate=args.throttle, response_delay=args.response_delay,
        drop_every=args.drop_every, close_every=args.close_every, close_with=args.close_with,
    )  # fmt: skip
    sim = SmscSimulator(config)
    port = await sim.start()
    ctl = await start_control(sim, args.host, args.control_port)
    control_port = ctl.sockets[0].getsockname()[1]
    if args.port_file:
        args.port_file.write_text(json.dumps({"port": port, "control_port": control_port}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # Last: a parent reading this line may rely on everything above.
    print(
        f"SMSC simulator: SMPP on {args.host}:{port}, control on {args.host}:{control_port}",
        flush=True,
    )
    await stop.wait()
    ctl.close()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """`plp-gateway simulate smsc`: run the simulator until interrupted."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(_run(args))
    except KeyError as exc:
        print(f"unknown status {exc}")
        return 2
    except OSError as exc:
        print(f"cannot listen: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
