"""The one place that reaches inside aiomqtt (bounded in pyproject.toml: >=2.3,<2.6).

aiomqtt has no public manual-acknowledgement API and costs a future and a timeout task per
`publish()`; the gateway needs both (acknowledge a job only once stored; thousands of status
events per second). So it uses the paho client aiomqtt wraps, `Client._client`, for: manual
acknowledgement (on before connecting), `ack()`, `publish()`, the `on_publish` and
`on_socket_open` callbacks, `loop_write` (wrapped, as aiomqtt calls it: `cork_writes`), its
PUBACK handler (`fast_pubacks`, with the packet, the message table and its lock it reads), and
aiomqtt's `pending_calls_threshold`. `missing_internals()` names any of these a new release
removed; tests/test_borrowed_internals.py fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "ack",
    "cork_writes",
    "enable_manual_ack",
    "fast_pubacks",
    "missing_internals",
    "no_delay",
    "notify_on_publish",
    "publish",
    "set_pending_calls_threshold",
]


def _paho(client: aiomqtt.Client) -> paho.Client:
    inner: paho.Client = client._client
    return inner


def enable_manual_ack(client: aiomqtt.Client) -> None:
    """Must happen before connecting: with a session present the broker replays queued jobs
    right after CONNACK, and paho would acknowledge them itself."""
    _paho(client).manual_ack_set(True)


def set_pending_calls_threshold(client: aiomqtt.Client, threshold: int) -> None:
    client.pending_calls_threshold = threshold


def ack(client: aiomqtt.Client, mid: int, qos: int) -> int:
    """Acknowledge an incoming message; paho's result code."""
    rc: int = _paho(client).ack(mid, qos)
    return rc


def publish(
    client: aiomqtt.Client, topic: str, payload: bytes, qos: int, retain: bool
) -> paho.MQTTMessageInfo:
    """Hand one message to paho without aiomqtt's per-message future."""
    return _paho(client).publish(topic, payload, qos, retain)


def notify_on_publish(client: aiomqtt.Client, notify: Callable[[], None]) -> None:
    """Call `notify` at every PUBACK (and QoS 0 write) *instead of* aiomqtt's handler: for
    a connection that publishes only through `publish()` above, never through aiomqtt's
    own, whose handler finds no waiter then and raises and suppresses a KeyError per PUBACK
    (the status connection: four PUBACKs per SMS)."""
    _paho(client).on_publish = lambda *_: notify()


def no_delay(client: aiomqtt.Client) -> None:
    """Turn Nagle's algorithm off on the broker connection, as asyncio does for its own TCP
    transports: small MQTT packets (PUBACKs, events) otherwise wait for the peer's delayed
    ACK, up to 40 ms on Linux, on the path of every alert."""
    inner_client = _paho(client)
    opened = inner_client.on_socket_open

    def on_socket_open(c: Any, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if opened is not None:
            opened(c, userdata, sock)

    inner_client.on_socket_open = on_socket_open


def cork_writes(client: aiomqtt.Client) -> None:
    """paho writes each queued packet with a `send` of its own: with Nagle off, a burst of
    status events became as many TCP segments, each waking the broker. Corked (Linux's
    TCP_CORK) for the length of one `loop_write` (aiomqtt calls it once the socket is
    writable), the burst leaves in full segments when uncorked; nothing waits longer."""
    cork = getattr(socket, "TCP_CORK", None)
    if cork is None:
        return
    inner = _paho(client)
    write = inner.loop_write

    def loop_write() -> MQTTErrorCode:
        sock = inner.socket()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, cork, 1)  # type: ignore[union-attr]
        except (OSError, AttributeError):  # not a TCP socket (websockets): as paho does
            return write()
        try:
            return write()
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, cork, 0)  # type: ignore[union-attr]

    inner.loop_write = loop_write  # type: ignore[method-assign]


_MID = struct.Struct("!H")


def fast_pubacks(client: aiomqtt.Client) -> None:
    """paho decodes every PUBACK into a `ReasonCode` and a `Properties` of its own (a fifth of
    the status child's CPU: four PUBACKs per SMS). A plain PUBACK (two bytes, the packet id:
    success and no properties, every PUBACK under 3.1.1) is handed to paho's `_do_on_publish`
    with one shared success code and one empty `Properties`, as paho would with new ones;
    any other PUBACK or PUBCOMP goes to paho's own handler."""
    inner = _paho(client)
    handle = inner._handle_pubackcomp
    success = ReasonCode(PacketTypes.PUBACK)
    empty = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    unpack = _MID.unpack

    def handle_pubackcomp(cmd: Any) -> MQTTErrorCode:
        packet = inner._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return handle(cmd)
        (mid,) = unpack(packet)
        with inner._out_message_mutex:
            if mid in inner._out_messages:
                return inner._do_on_publish(mid, success, empty)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    inner._handle_pubackcomp = handle_pubackcomp  # type: ignore[method-assign]


def missing_internals() -> list[str]:
    """The aiomqtt/paho internals this adapter relies on that the installed versions lack."""
    missing = []
    loop = asyncio.new_event_loop()
    try:
        client = loop.run_until_complete(_a_client())
    finally:
        loop.close()
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client):
        return ["aiomqtt.Client()._client (the wrapped paho.mqtt.client.Client)"]
    for name in ("manual_ack_set", "ack", "publish", "loop_write", "socket"):
        if not callable(getattr(inner, name, None)):
            missing.append(f"paho.mqtt.client.Client.{name}()")
    for name in ("on_publish", "on_socket_open", "_in_packet", "_out_messages"):
        if not hasattr(inner, name):
            missing.append(f"paho.mqtt.client.Client.{name}")
    for name in ("_handle_pubackcomp", "_do_on_publish"):
        if not callable(getattr(inner, name, None)):
            missing.append(f"paho.mqtt.client.Client.{name}()")
    if not hasattr(getattr(inner, "_out_message_mutex", None), "__enter__"):
        missing.append("paho.mqtt.client.Client._out_message_mutex (a lock)")
    in_packet = getattr(inner, "_in_packet", None)
    if not isinstance(in_packet, dict) or not isinstance(in_packet.get("packet"), bytearray):
        missing.append("paho.mqtt.client.Client._in_packet['packet']")
    if not hasattr(client, "pending_calls_threshold"):
        missing.append("aiomqtt.Client.pending_calls_threshold")
    return missing


async def _a_client() -> aiomqtt.Client:
    return aiomqtt.Client("localhost")  # not connected: aiomqtt wants a running loop
