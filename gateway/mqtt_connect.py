"""How each of the gateway's connections to the broker is opened: TLS, the MQTT version
(`[mqtt] protocol`) and the session (persistent or clean).

Under MQTT 5 a persistent session needs two things 3.1.1's `clean_session = false` gave
together: Clean Start off (keep the session the broker has) *and* a Session Expiry Interval
in CONNECT (`[mqtt] session_expiry`). Without the interval the broker ends the session when
the connection closes, and with it the jobs queued for a gateway that is down. aiomqtt builds
a new paho client per connection, and paho's default Clean Start is "on the first connection",
which would wipe the session at every reconnect: Clean Start is always given explicitly.
"""

from __future__ import annotations

import ssl

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import MqttConfig, MqttProtocol

__all__ = ["open_client", "tls_parameters"]


def tls_parameters(cfg: MqttConfig) -> aiomqtt.TLSParameters | None:
    """TLS settings for any client of the broker (the daemon, `plp-gateway send`)."""
    if cfg.tls is None:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
        certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
        keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
    )


#: Unacknowledged QoS 1 messages the broker may send this client at once (MQTT 5 Receive
#: Maximum; paho's default is 65,535). 20 is what mosquitto allows a 3.1.1 client by default
#: (`max_inflight_messages`): with several nodes, a burst of jobs is spread over them rather
#: than all handed to the first, and a node that dies holds no more than that many unstored.
RECEIVE_MAXIMUM = 20


def _persistent_session(seconds: int) -> Properties:
    """CONNECT properties of a persistent MQTT 5 session: its expiry and Receive Maximum."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = seconds
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    return properties


def open_client(
    cfg: MqttConfig,
    identifier: str,
    *,
    persistent: bool,
    will: aiomqtt.Will | None = None,
    max_inflight_messages: int | None = None,
) -> aiomqtt.Client:
    """A client (not connected yet) of the broker in `cfg`, speaking `cfg.version`.

    `persistent`: the broker keeps the session (subscriptions, unacknowledged and queued QoS 1
    messages) while the client is away, for `[mqtt] session_expiry` under MQTT 5; else the
    session ends with the connection."""
    v5 = cfg.version is MqttProtocol.V5
    return aiomqtt.Client(
        hostname=cfg.host,
        port=cfg.port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        # paho refuses clean_session under MQTT 5 (Clean Start and the expiry replace it).
        clean_session=None if v5 else not persistent,
        # (3.1.1 accepts only paho's default here.)
        clean_start=not persistent if v5 else MQTT_CLEAN_START_FIRST_ONLY,
        properties=_persistent_session(cfg.session_expiry) if v5 and persistent else None,
        username=cfg.username,
        password=cfg.password,
        keepalive=cfg.keepalive,
        will=will,
        tls_params=tls_parameters(cfg),
        tls_insecure=cfg.tls.insecure if cfg.tls is not None else None,
        timeout=10,
        max_inflight_messages=max_inflight_messages,
    )
