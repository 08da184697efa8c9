"""Home Assistant MQTT discovery through a real broker: `[homeassistant] discovery = true`
leaves retained config messages whose templates, rendered as Home Assistant does (Jinja2,
sandboxed), read the gateway's real health; entities of a channel no longer run go away."""

from __future__ import annotations

import json
from typing import Any

import aiomqtt
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.homeassistant import Discovery, HomeAssistantConfig
from gateway.status import Topics
from tests.conftest import GatewayFactory
from tests.fixtures import Mosquitto, Observer

NODE_ID = "plp_gateway_test"
CONFIG = "[homeassistant]\ndiscovery = true\n"


def render(template: str, payload: bytes) -> str:
    """A value template as Home Assistant renders it for a message on its state topic."""
    env = ImmutableSandboxedEnvironment()
    return env.from_string(template).render(value_json=json.loads(payload), value=payload)


async def retained_configs(broker: Mosquitto, objects: set[str]) -> dict[str, dict[str, Any]]:
    """What a Home Assistant that starts now reads: the retained config messages."""
    async with Observer(broker, prefix="homeassistant") as ha:
        topics = {f"homeassistant/sensor/{NODE_ID}/{o}/config" for o in objects}
        await ha.wait(lambda: topics <= set(ha.by_topic), timeout=20)
        assert all(m.retain for t in topics for m in ha.by_topic[t])
        return {t.split("/")[3]: ha.by_topic[t][-1].json() for t in ha.by_topic}


async def test_discovery_announces_state_links_and_queues(
    gateway: GatewayFactory, observer: Observer, broker: Mosquitto
) -> None:
    # An entity of an earlier run with SMS enabled; this run has e-mail only.
    async with aiomqtt.Client(broker.host, broker.port) as client:
        stale = f"homeassistant/sensor/{NODE_ID}/link_sms/config"
        await client.publish(stale, b'{"name": "stale"}', qos=1, retain=True, timeout=10)
    async with Observer(broker, prefix="homeassistant") as ha:
        await ha.wait(lambda: ha.by_topic, timeout=10)  # the broker has it
        proc = gateway(CONFIG)
        # The stale entity is removed (an empty retained message); the last message sent
        # (removing a voice queue) says all the others have reached the broker.
        last = f"homeassistant/sensor/{NODE_ID}/queue_voice/config"
        await ha.wait(lambda: last in ha.by_topic, timeout=20)
        assert [m.payload for m in ha.by_topic[stale]] == [b'{"name": "stale"}', b""]
    health = await observer.wait(
        lambda: [m for m in observer.on("/gateway/test/health") if m.json()["state"] == "ready"]
    )

    configs = await retained_configs(broker, {"state", "link_broker", "link_email", "queue_email"})
    assert set(configs) == {"state", "link_broker", "link_email", "queue_email"}  # no SMS
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    assert configs["state"]["default_entity_id"] == f"sensor.{NODE_ID}_state"
    for c in configs.values():
        assert c["state_topic"] == "plp/gateway/test/health"
        assert c["availability_topic"] == "plp/gateway/test/availability"
        assert (c["payload_available"], c["payload_not_available"]) == ("online", "offline")
        assert c["device"]["identifiers"] == [NODE_ID]
        assert c["device"]["sw_version"] == health[-1].json()["version"]

    # The templates read the real health.
    payload = health[-1].payload
    assert render(configs["state"]["value_template"], payload) == "ready"
    assert render(configs["link_broker"]["value_template"], payload) == "up"
    assert render(configs["link_email"]["value_template"], payload) == "up"
    assert render(configs["queue_email"]["value_template"], payload) == "0"
    attributes = json.loads(render(configs["queue_email"]["json_attributes_template"], payload))
    assert attributes["hot"] == 0 and "inflight" in attributes
    assert json.loads(render(configs["state"]["json_attributes_template"], payload))["boot_id"]

    # Stopped: the gateway is unavailable, its last state is one the enum sensor knows.
    proc.stop()
    await observer.wait(lambda: observer.on("/gateway/test/availability")[-1].payload == b"offline")
    final = observer.on("/gateway/test/health")[-1].payload
    assert render(configs["state"]["value_template"], final) in configs["state"]["options"]
    # Even the will's health (no links, no queues) renders.
    will = b'{"node": "test", "state": "offline"}'
    assert render(configs["link_email"]["value_template"], will) == "unknown"
    assert render(configs["queue_email"]["value_template"], will) == "0"


def test_topics_come_from_checked_names() -> None:
    ha = HomeAssistantConfig(discovery=True, prefix="home/ha")
    discovery = Discovery(ha, Topics("plp/site1", "gw-1"), ["voice"], "1.0")
    topics = [t for t, _ in discovery.messages()]
    assert "home/ha/sensor/plp_gateway_gw-1/queue_voice/config" in topics
    assert all(t.startswith("home/ha/sensor/plp_gateway_gw-1/") for t in topics)

    with pytest.raises(ConfigError, match="letters, digits"):
        parse_config({"node": "gw.1", "homeassistant": {"discovery": True}})
    parse_config({"node": "gw.1"})  # without discovery, the node rule is MQTT's
    with pytest.raises(ConfigError, match=r"homeassistant\.prefix"):
        parse_config({"homeassistant": {"discovery": True, "prefix": "ha/#"}})
    assert parse_config({}).homeassistant == HomeAssistantConfig(
        discovery=False, prefix="homeassistant"
    )
