"""Jobs the broker queued for a dead node's MQTT session, taken over by a live node.

A shared subscription hands each job to one session of the group, and mosquitto (like the
MQTT spec allows) picks offline persistent sessions too: while a node is dead, its session
collects its turn of the jobs, and a job published while every node was down waits in one
of their sessions. So a live node adopts a dead node's session (the node's lease ran out in
the store): it connects with that node's client id, takes what was queued (stored, then
acknowledged, exactly like its own intake), and unsubscribes that session from the jobs so
that the broker stops queueing for it. The dead node subscribes again when it comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt

from . import mqtt_adapter
from .config import MqttConfig
from .mqtt_connect import open_client

log = logging.getLogger("gateway.adoption")

#: Handles one message and acknowledges it with the given function once it is stored.
Handler = Callable[[aiomqtt.Message, Callable[[aiomqtt.Message], None]], Awaitable[None]]


async def adopt_session(
    cfg: MqttConfig, client_id: str, subscriptions: Sequence[str], handle: Handler
) -> int:
    """Take the jobs queued for `client_id`'s session and unsubscribe it; returns how many
    messages were handled. A node that comes back meanwhile takes its session back (the
    broker disconnects this one): what was not acknowledged yet goes to it, nothing is lost."""
    # Persistent like the node's own connection (MQTT 5: the same session expiry), so that
    # what it leaves queued there (more than the broker sends at once) stays for the next.
    client = open_client(cfg, client_id, persistent=True)
    mqtt_adapter.enable_manual_ack(client)  # before connecting: see gateway.mqtt

    def ack(message: aiomqtt.Message) -> None:
        if message.qos > 0:
            mqtt_adapter.ack(client, message.mid, message.qos)

    handled = 0
    async with client:
        # The broker sends what it queued right after CONNACK, so all of it is in before
        # the answer to these UNSUBSCRIBEs (one connection, in order).
        for topic in subscriptions:
            await client.unsubscribe(topic)
        while len(client.messages) > 0:
            message = await anext(aiter(client.messages))
            await handle(message, ack)
            handled += 1
    if handled:
        log.warning("adopted the MQTT session %s: %d queued messages taken", client_id, handled)
    return handled
