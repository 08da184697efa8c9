"""The status connection's publisher: an outgoing queue published on one clean-session
connection, reconnecting with backoff, with what the broker has not confirmed kept for the
next connection.

It runs in the gateway's own process or, by default, in a child process of its own
(gateway.status_child, fed by gateway.status_process), where paho's per-message work, about
half the gateway's CPU per SMS, runs on another core. It imports nothing of the configuration's
models: the child starts in a fraction of the daemon's time and memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import aiomqtt
import paho.mqtt.client as paho

from . import mqtt_adapter
from .mqtt_connect import Broker, open_client

PUBLISH_BATCH = 64  # status messages handed to paho per turn of the event loop
PUBLISH_WINDOW = 256  # status messages published and not yet confirmed, at most
PUBLISH_TIMEOUT = 10.0  # seconds without a confirmation while some are awaited

log = logging.getLogger("gateway.mqtt")


class Outgoing(NamedTuple):
    """One message to publish. A tuple, not a frozen dataclass: four per SMS (its delivery
    events), and a frozen dataclass costs six times as much to build."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class _Refused:
    """Stands for the confirmation of a message paho refused (dropped): done at once."""

    @staticmethod
    def is_published() -> bool:
        return True


_REFUSED = _Refused()
Confirmation = paho.MQTTMessageInfo | _Refused


class Publisher:
    """Publishes `out` (shared with its producer, which sets `ready` after appending) on the
    status connection. `on_done(n)` is told, in order, each time the first `n` messages taken
    from `out` are finished (confirmed by the broker, or refused by paho and dropped); a
    message not finished when the connection drops goes back to the head of `out`."""

    def __init__(
        self,
        broker: Broker,
        client_id: str,
        out: deque[Outgoing],
        ready: asyncio.Event,
        *,
        initial_delay: float,
        max_delay: float,
        on_done: Callable[[int], None] | None = None,
        on_state: Callable[[], None] | None = None,
    ) -> None:
        self._broker = broker
        self._client_id = client_id
        self._out = out
        self._ready = ready
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._on_done = on_done
        self._on_state = on_state
        self.connected = asyncio.Event()
        self.now = asyncio.Event()  # cuts the reconnection's backoff short
        self.error: str | None = None  # the last failure, while down
        self.unconfirmed = 0  # taken from `out`, not finished yet
        self.reconnect = True

    def _make_client(self) -> aiomqtt.Client:
        client = open_client(
            self._broker,
            self._client_id,
            persistent=False,
            # Unlimited in paho: _pump_out bounds what is in flight (PUBLISH_WINDOW), and a
            # limit makes paho scan every unconfirmed message at each PUBACK.
            max_inflight_messages=0,
        )
        # _pump_out keeps up to PUBLISH_WINDOW publications in flight: that many pending
        # calls is normal and must not log a warning each time.
        mqtt_adapter.set_pending_calls_threshold(client, 2 * PUBLISH_WINDOW)
        mqtt_adapter.no_delay(client)
        mqtt_adapter.cork_writes(client)
        mqtt_adapter.fast_pubacks(client)
        return client

    def _state(self, up: bool, error: str | None) -> None:
        self.error = error
        if up:
            self.connected.set()
        else:
            self.connected.clear()
        if self._on_state is not None:
            self._on_state()

    async def run(self) -> None:
        """Publish until cancelled, reconnecting with backoff while `reconnect` holds (else
        return once the connection ends)."""
        delay = self._initial_delay
        while self.reconnect:
            self.now.clear()
            try:
                async with self._make_client() as client:
                    self._state(True, None)
                    log.info("status connection up as %s", self._client_id)
                    delay = self._initial_delay
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._pump_out(client))
                        # Subscribed to nothing: this only notices the connection drop,
                        # which cancels _pump_out (it requeues what is unconfirmed).
                        async for _ in client.messages:
                            pass
            except* aiomqtt.MqttError as eg:
                self._state(False, f"status connection: {eg.exceptions[0]}")
                log.warning(
                    "MQTT link down (status connection): %s; reconnecting in %.1fs",
                    eg.exceptions[0],
                    delay,
                )
            finally:
                if self.connected.is_set():
                    self._state(False, self.error)
            if not self.reconnect:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.now.wait()
            delay = min(delay * 2, self._max_delay)

    async def _pump_out(self, client: aiomqtt.Client) -> None:
        """Publish the outgoing queue through paho, up to PUBLISH_WINDOW unconfirmed.

        aiomqtt's `publish()` costs a future and a timeout task per message; status events
        come by thousands per second, so messages go to paho directly and are confirmed in
        order from their PUBACKs (one wake-up per PUBACK burst). More go out while earlier
        ones wait for theirs: a broker with Nagle on (a stock mosquitto) holds its PUBACKs
        until a segment of ours acknowledges the first, so waiting for a whole batch stalls
        each batch for our delayed ACK (~40 ms: at most ~1,600 messages/s). Unconfirmed
        messages go back to the head of the queue for the next connection.
        """
        wake = self._ready  # a message to send, or a PUBACK
        # Only this loop publishes on the status connection, never aiomqtt's publish().
        mqtt_adapter.notify_on_publish(client, wake.set)
        loop = asyncio.get_running_loop()
        inflight: deque[tuple[Outgoing, Confirmation]] = deque()
        progress = loop.time()  # last time the broker confirmed something (or none waited)
        try:
            while True:
                wake.clear()
                if self._finish_head(inflight):
                    progress = loop.time()
                room = min(PUBLISH_WINDOW - len(inflight), len(self._out), PUBLISH_BATCH)
                if room > 0:
                    if not inflight:
                        progress = loop.time()
                    batch = [self._out.popleft() for _ in range(room)]
                    self._publish_now(client, batch, inflight)
                    self.unconfirmed = len(inflight)
                    await asyncio.sleep(0)  # paho writes, PUBACKs are read, between batches
                    continue
                self.unconfirmed = len(inflight)
                if not inflight:
                    await wake.wait()
                    continue
                left = progress + PUBLISH_TIMEOUT - loop.time()
                try:
                    async with asyncio.timeout(max(left, 0)):
                        await wake.wait()
                except TimeoutError:
                    raise aiomqtt.MqttError(
                        f"{len(inflight)} publications not confirmed in {PUBLISH_TIMEOUT:.0f} s"
                    ) from None
        finally:
            # The connection ended (or a publication failed: _publish_now put the rest of its
            # batch back first): keep for the next connection what the broker has not
            # confirmed. The finished head is told; everything after the first unconfirmed
            # message goes back, a confirmed one among them included, so that `on_done`
            # counts stay the head of what was taken (at most a few messages twice, at a
            # reconnection: QoS 1 is at least once).
            self._finish_head(inflight)
            self._requeue([m for m, _ in inflight])
            self.unconfirmed = 0

    def _finish_head(self, inflight: deque[tuple[Outgoing, Confirmation]]) -> int:
        """Drop the finished messages at the head of `inflight` and tell `on_done` how many."""
        done = 0
        while inflight and inflight[0][1].is_published():
            inflight.popleft()
            done += 1
        if done and self._on_done is not None:
            self._on_done(done)
        return done

    def _publish_now(
        self,
        client: aiomqtt.Client,
        batch: list[Outgoing],
        inflight: deque[tuple[Outgoing, Confirmation]],
    ) -> None:
        """Hand `batch` to paho, each message joining `inflight` in order."""
        for i, m in enumerate(batch):
            try:
                info = mqtt_adapter.publish(client, m.topic, m.payload, m.qos, m.retain)
            except ValueError as exc:
                # paho refuses this one message (a wildcard or bad UTF-8 in its topic, an
                # oversize payload): it is dropped, the writer and the others go on.
                log.error(
                    "MQTT publication dropped, paho refused it: %s (topic of %d characters)",
                    exc,
                    len(m.topic),
                )
                inflight.append((m, _REFUSED))
                continue
            if info.rc != paho.MQTT_ERR_SUCCESS:
                # Those handed to paho stay in flight (finished, or requeued as the connection
                # ends); the rest of the batch goes back at once, behind them.
                self._requeue(batch[i:])
                raise aiomqtt.MqttError(f"publish failed: {paho.error_string(info.rc)}")
            inflight.append((m, info))

    def _requeue(self, messages: list[Outgoing]) -> None:
        """Put messages back at the head of the outgoing queue, in their order."""
        self._out.extendleft(reversed(messages))
