"""JSON Schemas (draft 2020-12) of every MQTT payload the gateway reads or writes.

One source per schema: the job's is generated from the pydantic model that validates it
(`gateway.jobs.JobIn`) plus its signature; the others from `gateway.schemas.models`, which
describe what the gateway publishes. `docs/schemas/NAME.json` is what `plp-gateway schema
NAME` prints: tests/test_schemas.py checks that, and validates real payloads of a run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://plp-alert-gateway.example/schema/"


@dataclass(frozen=True)
class Entry:
    name: str
    topic: str  # with <prefix>, <id> (a job id), <node>
    summary: str

    def matches(self, topic: str, prefix: str) -> bool:
        pattern = re.escape(self.topic).replace(re.escape("<prefix>"), re.escape(prefix))
        for part in ("<id>", "<node>"):
            pattern = pattern.replace(re.escape(part), "[^/+#]+")
        return re.fullmatch(pattern, topic) is not None


CATALOGUE = (
    Entry("job", "<prefix>/jobs", "an alert job, signed or not (dispatch -> gateway)"),
    Entry("cancel", "<prefix>/jobs/<id>/cancel", "a cancel, signed or not (dispatch -> gateway)"),
    Entry("job-status", "<prefix>/jobs/<id>/status", "a job's status (retained)"),
    Entry("delivery-event", "<prefix>/jobs/<id>/deliveries", "one delivery state change"),
    Entry("delivery-batch", "<prefix>/jobs/<id>/deliveries/batch", "batched delivery events"),
    Entry("rejected", "<prefix>/jobs/rejected", "a refused job or cancel, and why"),
    Entry("health", "<prefix>/gateway/<node>/health", "the gateway's health (retained)"),
    Entry("availability", "<prefix>/gateway/<node>/availability", "online / offline, plain text"),
    Entry("inbound-sms", "<prefix>/inbound/sms", "a member's SMS reply"),
)
NAMES = tuple(e.name for e in CATALOGUE)
DEFAULT = "job"


def for_topic(topic: str, prefix: str = "plp") -> str | None:
    """The name of the schema of payloads on `topic` (None: not a topic of the gateway)."""
    return next((e.name for e in CATALOGUE if e.matches(topic, prefix)), None)


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of payload `name` (one of NAMES); KeyError for another name."""
    from . import models

    if name not in NAMES:
        raise KeyError(name)
    if name == "job":
        out = models.job_schema()
    elif name == "availability":
        out = dict(models.AVAILABILITY)
    else:
        out = models.MODELS[name].model_json_schema(by_alias=True)
        out["description"] = f"{out.get('description', '')} {models.ID_NOTE}".strip()
    # `$schema` and `$id` first, so that the files read well.
    head = {"$schema": DRAFT, "$id": f"{BASE_ID}{name}.json"}
    tidy: dict[str, Any] = _tidy(
        head | {k: v for k, v in out.items() if k not in head}, omitted=name != "job"
    )
    return tidy


def _tidy(node: Any, omitted: bool) -> Any:
    """Descriptions on one line (pydantic keeps the docstrings' line breaks); with `omitted`,
    no `default: null` on the fields the gateway leaves out rather than sending null."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                out[key] = " ".join(value.split())
            elif not (omitted and key == "default" and value is None):
                out[key] = _tidy(value, omitted)
        return out
    if isinstance(node, list):
        return [_tidy(v, omitted) for v in node]
    return node


def render(name: str) -> str:
    """What `plp-gateway schema NAME` prints and docs/schemas/NAME.json holds."""
    return json.dumps(schema(name), indent=2, ensure_ascii=False) + "\n"


__all__ = ["CATALOGUE", "DEFAULT", "NAMES", "Entry", "for_topic", "render", "schema"]
