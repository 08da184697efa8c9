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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:  # not imported at run time: the status child does without the models
    from .config import MqttConfig

__all__ = ["Broker", "open_client", "tls_parameters"]


@dataclass(frozen=True)
class Broker:
    """What opening a connection needs from `[mqtt]`, as plain values: the status publisher's
    child process (gateway.status_child) opens its connection from these without importing
    the configuration's models."""

    host: str
    port: int
    keepalive: int
    v5: bool
    session_expiry: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log or traceback
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False

    @classmethod
    def of(cls, cfg: MqttConfig) -> Broker:
        tls = cfg.tls
        return cls(
            host=cfg.host,
            port=cfg.port,
            keepalive=cfg.keepalive,
            v5=cfg.version == "5",
            session_expiry=cfg.session_expiry,
            username=cfg.username,
            password=cfg.password,
            tls=tls is not None,
            ca_file=str(tls.ca_file) if tls is not None and tls.ca_file else None,
            cert_file=str(tls.cert_file) if tls is not None and tls.cert_file else None,
            key_file=str(tls.key_file) if tls is not None and tls.key_file else None,
            tls_insecure=tls.insecure if tls is not None else False,
        )


def tls_parameters(cfg: MqttConfig | Broker) -> aiomqtt.TLSParameters | None:
    """TLS settings for any client of the broker (the daemon, `plp-gateway send`)."""
    broker = cfg if isinstance(cfg, Broker) else Broker.of(cfg)
    if not broker.tls:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=broker.ca_file,
        certfile=broker.cert_file,
        keyfile=broker.key_file,
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
    cfg: MqttConfig | Broker,
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
    broker = cfg if isinstance(cfg, Broker) else Broker.of(cfg)
    v5 = broker.v5
    return aiomqtt.Client(
        hostname=broker.host,
        port=broker.port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        # paho refuses clean_session under MQTT 5 (Clean Start and the expiry replace it).
        clean_session=None if v5 else not persistent,
        # (3.1.1 accepts only paho's default here.)
        clean_start=not persistent if v5 else MQTT_CLEAN_START_FIRST_ONLY,
        properties=_persistent_session(broker.session_expiry) if v5 and persistent else None,
        username=broker.username,
        password=broker.password,
        keepalive=broker.keepalive,
        will=will,
        tls_params=tls_parameters(broker),
        tls_insecure=broker.tls_insecure if broker.tls else None,
        timeout=10,
        max_inflight_messages=max_inflight_messages,
    )
