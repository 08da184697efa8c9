"""The broker link: the job connection (one persistent-session aiomqtt client with manual
acknowledgement) and the status connection (a clean session that publishes what the gateway
reports).

aiomqtt has no public manual-ack API, so we switch it on in the paho client aiomqtt wraps
(through gateway/mqtt_adapter.py, the one module that reaches inside aiomqtt),
*before* connecting (after CONNACK the broker replays queued jobs at once and paho would
acknowledge them itself). Outgoing messages go through a bounded queue that survives
broker outages; incoming messages are handed to one handler, in order.

Why two connections: a stock broker leaves Nagle's algorithm on (mosquitto's
`set_tcp_nodelay false`). On a connection that also carries the gateway's QoS 1 status
traffic, the broker's PUBACKs are small writes still awaiting our TCP acknowledgement when
the next job comes, and the job waits behind them for our delayed ACK (up to 40 ms). On a
connection of its own the broker only sends jobs, each acknowledged (PUBACK) once stored,
so nothing of the broker's is unacknowledged when the next one comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from . import mqtt_adapter
from .config import LogConfig, MqttConfig
from .mqtt_connect import Broker, open_client
from .mqtt_publisher import Outgoing, Publisher
from .status_process import StatusProcess
from .status_wire import ChildSetup

__all__ = ["MqttLink", "Outgoing"]

STATUS_FIRST = 2.0  # seconds the job connection waits, at most, for the status connection

log = logging.getLogger("gateway.mqtt")

MessageHandler = Callable[[aiomqtt.Message], Awaitable[None]]
ConnectHook = Callable[[], Awaitable[None]]


class MqttLink:
    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        subscriptions: list[str],
        will: Outgoing,
        buffer: int = 200_000,
        *,
        status_process: bool = False,
        log: LogConfig | None = None,
    ) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._subscriptions = subscriptions
        self._will = will
        self._out: deque[Outgoing] = deque()
        self._buffer = buffer
        self._out_ready = asyncio.Event()
        # Clean session: the queue of what to publish is ours (self._out), not the broker's.
        # Stable per node like the job session's, so a restarted process replaces its own.
        status_id = f"{client_id}-status"
        self._status: Publisher | StatusProcess
        if status_process:
            log = log or LogConfig()
            setup = ChildSetup(
                Broker.of(cfg),
                status_id,
                cfg.reconnect_initial_delay,
                cfg.reconnect_max_delay,
                log.level,
                log.format,
            )
            self._status = StatusProcess(setup, self._out, self._out_ready)
        else:
            self._status = Publisher(
                Broker.of(cfg),
                status_id,
                self._out,
                self._out_ready,
                initial_delay=cfg.reconnect_initial_delay,
                max_delay=cfg.reconnect_max_delay,
            )
        self._client: aiomqtt.Client | None = None
        self._handler: MessageHandler | None = None
        self._on_connect: ConnectHook | None = None
        self._paused = False
        # Jobs are taken only while this gateway serves the prefix (gateway.presence); the
        # link connects only once it may (not while another process runs this node).
        self._intake = True
        self._intake_changed = asyncio.Event()
        self.allowed = asyncio.Event()
        self.allowed.set()
        self.connected = asyncio.Event()  # the job connection
        self.status_connected = self._status.connected
        self.dropped = 0
        self._jobs_error: str | None = None  # last failure of the job connection, while down
        self.connects = 0

    def set_handlers(self, handler: MessageHandler, on_connect: ConnectHook) -> None:
        self._handler = handler
        self._on_connect = on_connect

    @property
    def last_error(self) -> str | None:
        return self._jobs_error or self._status.error

    @property
    def state(self) -> str:
        up = self.connected.is_set() and self.status_connected.is_set()
        return "up" if up else "down"

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Queue a message; sent as soon as (or once) the broker is reachable."""
        data = payload.encode() if isinstance(payload, str) else payload
        if len(self._out) >= self._buffer:
            self._out.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("outgoing MQTT buffer full, dropped %d oldest messages", self.dropped)
        self._out.append(Outgoing(topic, data, qos, retain))
        self._out_ready.set()

    def pending(self) -> int:
        return len(self._out)

    async def flush(self, timeout: float) -> bool:
        """Wait until the outgoing queue is empty (or `timeout`); True when it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._out or self._status.unconfirmed:  # noqa: ASYNC110 - at shutdown
                    await asyncio.sleep(0.01)
                return True
        return False

    @property
    def status_pid(self) -> int | None:
        """The status child's process id (None in process, or between children)."""
        return self._status.pid if isinstance(self._status, StatusProcess) else None

    def pause_intake(self) -> None:
        """Stop handing incoming messages to the handler (shutdown): they stay unacked."""
        self._paused = True

    def set_intake(self, on: bool) -> None:
        """Subscribe to the jobs (on) or unsubscribe (off: a standby, nothing queued for it)."""
        if on != self._intake:
            self._intake = on
            self._intake_changed.set()

    async def _sync_subscriptions(self, client: aiomqtt.Client) -> None:
        # Unsubscribing also clears the subscription a persistent session kept from an
        # earlier run, so the broker stops queueing jobs for a standby.
        on = self._intake
        for topic in self._subscriptions:
            if on:
                # MQTT 5 (`[mqtt] protocol`): QoS 1 becomes the subscription's options.
                granted = await client.subscribe(topic, qos=1)
                refused = [str(c) for c in granted if isinstance(c, ReasonCode) and c.is_failure]
                if refused:
                    # An ACL, or a broker without shared subscriptions: say it, loudly.
                    log.error("the broker refused the subscription to %s: %s", topic, refused[0])
            else:
                await client.unsubscribe(topic)
        self._subscribed = on

    _subscribed = False
    #: Called once the broker confirmed a change of the job subscription (the health then
    #: says `ready` only when jobs really reach this gateway).
    on_intake: Callable[[], None] | None = None

    @property
    def taking_jobs(self) -> bool:
        """Connected, and the broker confirmed the job subscription."""
        return self.connected.is_set() and self._subscribed

    async def _keep_subscriptions(self, client: aiomqtt.Client) -> None:
        while True:
            await self._intake_changed.wait()
            self._intake_changed.clear()
            if self._intake != self._subscribed:
                await self._sync_subscriptions(client)
                log.info("job intake %s", "on" if self._subscribed else "off")
                if self.on_intake is not None:
                    self.on_intake()

    def ack(self, message: aiomqtt.Message) -> None:
        """Acknowledge a QoS>0 message: call only once it is safely stored."""
        if self._client is None or message.qos == 0:
            return
        rc = mqtt_adapter.ack(self._client, message.mid, message.qos)
        if rc != paho.MQTT_ERR_SUCCESS:
            # The connection dropped: the broker will redeliver the message, the store
            # recognises its id, nothing is lost or doubled.
            log.info("ack of mid %d not sent (rc %s); broker will redeliver", message.mid, rc)

    def _make_client(self) -> aiomqtt.Client:
        """The job connection: persistent session, the availability will, manual
        acknowledgement (the status connection is gateway.mqtt_publisher's)."""
        will = self._will
        client = open_client(
            self._cfg,
            self._client_id,
            persistent=True,
            will=aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain),
        )
        # Must happen before connecting: see the module docstring.
        mqtt_adapter.enable_manual_ack(client)
        mqtt_adapter.no_delay(client)
        mqtt_adapter.cork_writes(client)
        return client

    async def run(self) -> None:
        """Both connections, each reconnecting with backoff on its own; until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._status.run(), name="mqtt-status")
            await self._run_jobs()

    async def _run_jobs(self) -> None:
        delay = self._cfg.reconnect_initial_delay
        while True:
            await self.allowed.wait()
            await self._status_first()
            client = self._make_client()
            try:
                async with client:
                    self._client = client
                    self._intake_changed.clear()
                    await self._sync_subscriptions(client)
                    self.connects += 1
                    self._jobs_error = None
                    self.connected.set()
                    log.info(
                        "connected to MQTT broker %s:%d as %s (MQTT %s)",
                        self._cfg.host,
                        self._cfg.port,
                        self._client_id,
                        self._cfg.version,
                    )
                    delay = self._cfg.reconnect_initial_delay
                    if self._on_connect is not None:
                        await self._on_connect()
                    # The birth beside the will: `online` goes on the connection whose will is
                    # `offline`, so the broker, which reads a connection's data before acting
                    # on its loss, can never leave `online` after a crash (on another
                    # connection, a kill -9 could let `online` land after the will).
                    await self._announce(client, online=True)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._keep_subscriptions(client))
                        await self._pump_in(client)
            except* aiomqtt.MqttError as eg:
                self._jobs_error = str(eg.exceptions[0])
                log.warning("MQTT link down: %s; reconnecting in %.1fs", self._jobs_error, delay)
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._cfg.reconnect_max_delay)

    _farewell = False  # `offline` said on a clean stop: no `online` after it

    async def _announce(self, client: aiomqtt.Client, *, online: bool) -> None:
        if online and self._farewell:
            return
        will = self._will
        payload = b"online" if online else will.payload
        await client.publish(will.topic, payload, qos=will.qos, retain=will.retain)

    async def say_offline(self, timeout: float) -> bool:
        """A clean stop sends no will: publish it ourselves, on the job connection, before
        closing it. True once the broker confirmed it."""
        self._farewell = True
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._announce(client, online=False)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not publish availability offline: %s", exc)
            return False
        return True

    async def _status_first(self) -> None:
        """Take jobs once what happens to them can be reported (the first health then says
        `up`): both normally connect within milliseconds, and after an outage the status
        connection retries at once rather than at the end of its own backoff. But a status
        connection the broker refuses must not keep alerts out for more than STATUS_FIRST."""
        if self.status_connected.is_set():
            return
        self._status.now.set()
        self._out_ready.set()  # the child's feeder hands `now` on
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STATUS_FIRST):
                await self.status_connected.wait()

    async def _pump_in(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self._paused or not self._intake or self._handler is None:
                continue  # not acked: the broker redelivers it to the next session
            try:
                await self._handler(message)
            except Exception as exc:
                # Unacknowledged: a new session gets it again once the cause is gone.
                raise aiomqtt.MqttError(f"message handler failed: {exc}") from exc
