"""One gateway per prefix: a second MQTT connection that carries the retained health (its last
will marks the health `offline` when the process dies) and watches the other gateways.

MQTT 3.1.1 gives a connection one will; the job connection's will is the availability, so the
health gets its own small connection (clean session, a client id unique to this process).
On each connect it claims the prefix: it publishes its health (`starting`), reads back the
retained health and availability of every gateway on the prefix until its own claim comes
back (the broker forwards in order, so every earlier claim has arrived by then) and decides:
serve, or stand by while another live gateway serves. Two gateways that both serve (a
broker outage, a claim race) are settled by the smaller boot id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import aiomqtt

from .config import MqttConfig
from .mqtt_connect import open_client
from .status import Topics

log = logging.getLogger("gateway.presence")

CLAIM_TIMEOUT = 10.0  # seconds for our own claim to come back from the broker
CLOSE_TIMEOUT = 5.0  # seconds to publish the last health at shutdown

# Health states of a gateway that serves the prefix or is about to.
LIVE = frozenset({"starting", "ready", "degraded"})
SERVING_STATES = frozenset({"ready", "degraded"})


class Role(StrEnum):
    CLAIMING = "claiming"  # claim published, waiting for it to come back
    SERVING = "serving"  # takes jobs
    STANDBY = "standby"  # another live gateway (another node) serves the prefix
    DUPLICATE = "duplicate"  # another process runs this very node: hands off its topics


@dataclass
class Peer:
    node: str
    boot_id: str | None = None
    state: str | None = None
    online: bool | None = None  # its availability; None: not known

    @property
    def live(self) -> bool:
        # Availability `offline` (the job connection's will) also covers a gateway of an
        # older version killed with a stale retained `ready`.
        return self.state in LIVE and self.online is not False


class Presence:
    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        topics: Topics,
        boot_id: str,
        will: bytes,
        on_change: Callable[[], None],
        exclusive: bool = True,
    ) -> None:
        self._cfg = cfg
        self._client_id = f"{client_id}-health-{boot_id[:8]}"  # never takes over another's
        self._topics = topics
        self.boot_id = boot_id
        self._will = will
        self._on_change = on_change
        # Issue 13 (several nodes sharing the jobs, `[mqtt] shared_group`) passes False: the
        # health link and its will stay, the one-gateway claim goes.
        self._exclusive = exclusive
        self.role = Role.CLAIMING
        self.peers: dict[str, Peer] = {}  # node -> what its retained topics say
        self.other: Peer | None = None  # the gateway we stand by for
        self._last: dict[str, bytes] = {}  # topic -> latest payload (health, availability)
        self._pending: dict[str, bytes] = {}  # not sent yet, in order
        self._dirty = asyncio.Event()
        self._idle = asyncio.Event()  # set while everything published is confirmed
        self._idle.set()
        self._claims: set[bytes] = set()  # payloads published during the current claim
        self._client: aiomqtt.Client | None = None
        self._closing = False

    # -- what the daemon calls ---------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = True
    ) -> None:
        """The sink of the node's retained topics (health, availability), sent in order on
        this connection; only the latest payload of each matters."""
        data = payload.encode() if isinstance(payload, str) else payload
        self._last[topic] = data
        self._pending.pop(topic, None)
        self._pending[topic] = data
        self._idle.clear()
        self._dirty.set()

    async def sent(self, timeout: float) -> bool:
        """Wait until what was published is confirmed by the broker (bounded); True if so.
        The daemon announces `online` (on the job connection) only after its health."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Publish the last health and availability (best effort, bounded), then stop
        sending: the daemon cancels `run`, which disconnects without the will."""
        self._closing = True
        client = self._client
        if client is None or self.role is Role.DUPLICATE:
            return
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                for topic, payload in self._last.items():
                    await client.publish(topic, payload, qos=1, retain=True)

    # -- the connection ----------------------------------------------------------------
    def _make_client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self._topics.health, self._will, qos=1, retain=True)
        return open_client(self._cfg, self._client_id, persistent=False, will=will)

    async def run(self) -> None:
        """Connect, claim, watch; reconnect with backoff; until cancelled."""
        delay = self._cfg.reconnect_initial_delay
        prefix = self._topics.prefix
        while True:
            try:
                async with self._make_client() as client:
                    self._client = client
                    await client.subscribe(f"{prefix}/gateway/+/availability", qos=1)
                    await client.subscribe(f"{prefix}/gateway/+/health", qos=1)
                    delay = self._cfg.reconnect_initial_delay
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._send(client))
                        await self._serve(client)
            except* aiomqtt.MqttError as eg:
                # The jobs link waits for this one: the same words an operator looks for.
                log.warning(
                    "MQTT link down (health link): %s; reconnecting in %.1fs",
                    eg.exceptions[0],
                    delay,
                )
            finally:
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._cfg.reconnect_max_delay)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            while self._pending and not self._closing:
                topic = next(iter(self._pending))
                payload = self._pending.pop(topic)
                if self.role is Role.DUPLICATE:
                    continue  # the node's topics belong to the other process
                if self.role is Role.CLAIMING and topic == self._topics.health:
                    self._claims.add(payload)
                await client.publish(topic, payload, qos=1, retain=True, timeout=10)
            if not self._pending:
                self._idle.set()

    async def _serve(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        while True:
            self._claims.clear()
            self._set_role(Role.CLAIMING, None)  # the daemon publishes `starting`
            try:
                async with asyncio.timeout(CLAIM_TIMEOUT):
                    async for message in messages:
                        if self._note(message):
                            break
            except TimeoutError:
                raise aiomqtt.MqttError(
                    f"own claim on {self._topics.health} not read back in {CLAIM_TIMEOUT:.0f} s"
                    " (the broker's ACL must let the gateway read <prefix>/gateway/#)"
                ) from None
            self._decide()
            async for message in messages:
                self._note(message)
                if self._reconsider():
                    break  # claim again

    # -- deciding ----------------------------------------------------------------------
    def _note(self, message: aiomqtt.Message) -> bool:
        """Record a peer's retained topic; True when it is our own claim coming back."""
        parts = str(message.topic).split("/")
        if len(parts) < 3:
            return False
        node, kind = parts[-2], parts[-1]
        payload = message.payload if isinstance(message.payload, bytes) else b""
        peer = self.peers.setdefault(node, Peer(node))
        if kind == "availability":
            peer.online = {b"online": True, b"offline": False}.get(payload)
            return False
        try:
            body = json.loads(payload) if payload else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        boot_id, state = body.get("boot_id"), body.get("state")
        if node == self._topics.node and boot_id == self.boot_id:
            if self.role is Role.SERVING:
                # Our own health overwrote what another process of this node wrote there.
                peer.boot_id = peer.state = None
            return payload in self._claims
        peer.boot_id = boot_id if isinstance(boot_id, str) else None
        peer.state = state if isinstance(state, str) else None
        if node == self._topics.node and self.role is Role.SERVING:
            # Another process wrote on our node's health (its claim or its will): put ours
            # back at once, a monitor must read the gateway that serves.
            health = self._last.get(self._topics.health)
            if health is not None:
                self.publish(self._topics.health, health)
        return False

    def _others(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.live and p.boot_id != self.boot_id]

    def _decide(self) -> None:
        others = self._others() if self._exclusive else []
        if not others:
            self._set_role(Role.SERVING, None)
            return
        other = min(others, key=lambda p: (p.node != self._topics.node, p.boot_id or ""))
        self._yield_to(other)

    def _reconsider(self) -> bool:
        """After each message: True when we should claim the prefix again."""
        if not self._exclusive:
            return False
        others = self._others()
        if self.role is Role.SERVING:
            # Two serving gateways (a claim race, a broker outage): the smaller boot id stays.
            rivals = [p for p in others if p.state in SERVING_STATES]
            first = min(rivals, key=lambda p: p.boot_id or "", default=None)
            if first is not None and (first.boot_id or "") < self.boot_id:
                self._yield_to(first)
            return False
        return not others  # the one we stood by for is gone

    def _yield_to(self, other: Peer) -> None:
        role = Role.DUPLICATE if other.node == self._topics.node else Role.STANDBY
        self._set_role(role, other)
        log.error(
            "another live gateway serves prefix %s: node %s (boot %s, state %s); "
            "not taking jobs until it goes offline",
            self._topics.prefix,
            other.node,
            other.boot_id,
            other.state,
        )

    def _set_role(self, role: Role, other: Peer | None) -> None:
        changed = role is not self.role
        self.role, self.other = role, other
        if changed and role is Role.SERVING:
            log.info("serving prefix %s: no other live gateway", self._topics.prefix)
        self._on_change()
