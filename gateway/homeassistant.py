"""Home Assistant MQTT discovery (`[homeassistant] discovery = true`): retained config
messages announcing the gateway's state, each link's state and each channel's queue as
sensors of one device. They read the gateway's own retained topics (availability, health):
nothing new is published for them, and they go unavailable when the gateway does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .status import Topics

CHANNELS = ("email", "sms", "voice")  # every channel the gateway can run
LABELS = {"broker": "MQTT broker", "email": "E-mail", "sms": "SMS", "voice": "Voice"}
# Home Assistant's rule for the node and object ids in a discovery topic.
NODE_ID = re.compile(r"[A-Za-z0-9_-]+")
# Health states a gateway publishes (gateway.daemon, and the health link's will `offline`).
STATES = ("starting", "ready", "degraded", "conflict", "stopping", "stopped", "failed", "offline")


class HomeAssistantConfig(BaseModel):
    """`[homeassistant]`: MQTT discovery, off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    discovery: bool = False
    prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be a topic without wildcards or leading/trailing '/'")
        return v


def node_id_problem(node: str) -> str | None:
    """Why `node` cannot name the gateway in a discovery topic (None: it can)."""
    if NODE_ID.fullmatch(node) is None:
        return (
            f"node {node!r}: Home Assistant discovery needs a node name of letters, digits, "
            "'_' and '-' only"
        )
    return None


class Discovery:
    """The discovery messages of one gateway node; `messages()` gives them all."""

    def __init__(
        self,
        config: HomeAssistantConfig,
        topics: Topics,
        channels: Iterable[str],
        version: str,
    ) -> None:
        problem = node_id_problem(topics.node)
        if problem is not None:  # `Config` refuses it already; never build a bad topic
            raise ValueError(problem)
        self._prefix = config.prefix
        self._topics = topics
        self._channels = [c for c in CHANNELS if c in set(channels)]
        self.node_id = f"plp_gateway_{topics.node}"
        self._device = {
            "identifiers": [self.node_id],
            "name": f"PLP gateway {topics.node}",
            "manufacturer": "plp-alert-gateway",
            "model": "PLP alert gateway",
            "sw_version": version,
        }
        self._origin = {"name": "plp-alert-gateway", "sw_version": version}

    def topic(self, object_id: str) -> str:
        return f"{self._prefix}/sensor/{self.node_id}/{object_id}/config"

    def messages(self) -> list[tuple[str, bytes]]:
        """(topic, retained payload): a config per entity; an empty payload removes the
        entities of a channel this gateway no longer runs (announced by an earlier run)."""
        out = [(self.topic("state"), self._config("state", "State", self._state()))]
        for link in ("broker", *CHANNELS):
            running = link == "broker" or link in self._channels
            out.append((self.topic(f"link_{link}"), self._link(link) if running else b""))
        for channel in CHANNELS:
            running = channel in self._channels
            out.append((self.topic(f"queue_{channel}"), self._queue(channel) if running else b""))
        return out

    def _state(self) -> dict[str, object]:
        return {
            "value_template": "{{ value_json.state }}",
            "device_class": "enum",
            "options": list(STATES),
            "icon": "mdi:shield-alert",
            "json_attributes_topic": self._topics.health,
            "json_attributes_template": (
                "{{ {'version': value_json.version, 'boot_id': value_json.boot_id,"
                " 'started_at': value_json.started_at} | tojson }}"
            ),
        }

    def _link(self, link: str) -> bytes:
        return self._config(
            f"link_{link}",
            f"{LABELS[link]} link",
            {
                # `.get`: the will's health (`offline`) has no links; it renders `unknown`.
                "value_template": "{{ " + _member("links", link) + ".get('state', 'unknown') }}",
                "icon": "mdi:lan-connect",
                "entity_category": "diagnostic",
            },
        )

    def _queue(self, channel: str) -> bytes:
        get = _member("queues", channel)
        return self._config(
            f"queue_{channel}",
            f"{LABELS[channel]} queue",
            {
                "value_template": (
                    "{% set q = " + get + " %}"
                    "{{ q.get('hot', 0) + q.get('cold', 0) + q.get('delayed', 0) }}"
                ),
                "unit_of_measurement": "deliveries",
                "state_class": "measurement",
                "icon": "mdi:tray-full",
                "json_attributes_topic": self._topics.health,
                "json_attributes_template": "{{ " + get + " | tojson }}",
            },
        )

    def _config(self, object_id: str, name: str, fields: dict[str, object]) -> bytes:
        payload = {
            "name": name,
            "unique_id": f"{self.node_id}_{object_id}",
            # The entity id to create (`object_id` before Home Assistant 2025.10).
            "default_entity_id": f"sensor.{self.node_id}_{object_id}",
            "state_topic": self._topics.health,
            "availability_topic": self._topics.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            **fields,
            "device": self._device,
            "origin": self._origin,
        }
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _member(section: str, name: str) -> str:
    """A Jinja expression for `value_json[section][name]`, `{}` where either is missing."""
    return f"value_json.get('{section}', {{}}).get('{name}', {{}})"
