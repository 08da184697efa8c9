"""The payloads' models: the job's signature, the cancel, and what `gateway.status`, the
intake and the daemon publish (field by field, as they write them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.json_schema import SkipJsonSchema

from ..domain import DeliveryState, JobState
from ..jobs import ChannelName, Lang, job_json_schema
from ..signing import _NONCE_RE, _TS_RE, ALG, VERSION

# The job id rule, as the job's own schema spells it (one source for every payload).
JOB_ID_PATTERN: str = job_json_schema()["properties"]["id"]["pattern"]

# The job and its status name the job `id`; every other payload names it `job_id`. Both are
# a contract (renaming either would break integrators), so each schema says which it uses.
ID_NOTE = (
    "The job id is `id` in the job and in its status, `job_id` in every other payload "
    "(delivery events, batches, rejections, inbound SMS): the same value under two names."
)
RFC3339_MS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
Time = Field(pattern=RFC3339_MS, description="RFC 3339 UTC with milliseconds")
# An optional field the gateway leaves out rather than sending null.
Omitted = SkipJsonSchema[None]


class _Closed(BaseModel):
    """A payload of the gateway: every field it writes is named here, no other."""

    model_config = ConfigDict(extra="forbid")


# -- dispatch -> gateway -----------------------------------------------------------------


class Signature(_Closed):
    """HMAC-SHA256 over the RFC 8785 canonical payload without `sig` (operations.md,
    "Signed jobs"). Required when `[security] require_signature = true`; a `sig` that does
    not verify is always refused."""

    v: Literal[1] = Field(description=f"format version, {VERSION}")
    alg: Literal["hmac-sha256"] = Field(description=f"always {ALG}")
    kid: str = Field(description="the key's name in the gateway's [security.keys]")
    ts: str = Field(pattern=_TS_RE.pattern, description="signing time, RFC 3339 with zone")
    nonce: str = Field(pattern=_NONCE_RE.pattern, description="never used twice per key")
    mac: str = Field(
        pattern=r"^[A-Za-z0-9+/]{43}=$", description="base64 of the 32-byte HMAC-SHA256"
    )


def job_schema() -> dict[str, Any]:
    schema = job_json_schema()
    sig = Signature.model_json_schema()
    schema.setdefault("$defs", {})["Signature"] = sig
    schema["properties"]["sig"] = {
        "$ref": "#/$defs/Signature",
        "description": "the signature; required when the gateway requires signed jobs",
    }
    schema["description"] = f"An alert job on <prefix>/jobs. Unknown fields are rejected. {ID_NOTE}"
    return schema


class UnsignedCancel(_Closed):
    """When signatures are not required. An empty payload (no bytes, not JSON) cancels
    too."""

    reason: str | Omitted = Field(None, description="why; kept in the deliveries' reason")
    cancel: str | Omitted = Field(
        None, pattern=JOB_ID_PATTERN, description="if given, the job id of the topic"
    )


class SignedCancel(_Closed):
    """Required form when `[security] require_signature = true`."""

    cancel: str = Field(pattern=JOB_ID_PATTERN, description="the job id of the topic")
    reason: str | Omitted = Field(None, description="why; kept in the deliveries' reason")
    sig: Signature


class Cancel(RootModel[SignedCancel | UnsignedCancel]):
    """A cancel on <prefix>/jobs/<id>/cancel (QoS 1, never retained): empty, `{"reason":
    ...}`, or signed `{"cancel": "<id>", "reason": ..., "sig": {...}}`. The job id is the
    topic's `<id>` (and `cancel` when signed)."""


# -- gateway -> all ----------------------------------------------------------------------

StateCounts = dict[DeliveryState, int]


class MemberCounts(_Closed):
    """Members, not deliveries: a member is reached when any channel delivered to them
    (gateway/outcomes.py); acknowledged ones are reached and confirmed."""

    total: int = Field(ge=0)
    reached: int = Field(ge=0, description="delivered or acknowledged on some channel")
    acknowledged: int = Field(ge=0, description="confirmed (pressed 1, replied by SMS)")
    not_reached: int = Field(ge=0, description="every delivery ended without reaching them")
    pending: int = Field(ge=0, description="not reached yet, still being tried")


class JobStatus(_Closed):
    """Retained on <prefix>/jobs/<id>/status; coalesced to one per `job_status_interval`."""

    id: str = Field(pattern=JOB_ID_PATTERN, description="the job id (`job_id` elsewhere)")
    state: Literal[
        JobState.ACCEPTED, JobState.RUNNING, JobState.DONE, JobState.CANCELLED, JobState.EXPIRED
    ]
    priority: Literal["hot", "cold"]
    counts: dict[ChannelName, StateCounts] = Field(description="deliveries per channel, state")
    totals: StateCounts = Field(description="deliveries per state, all channels")
    deliveries: int = Field(ge=0, description="number of deliveries (member x channel)")
    members: MemberCounts
    created_at: str = Time
    updated_at: str = Time
    expires_at: str = Time
    finished_at: str | None = Field(pattern=RFC3339_MS, description="null until it ends")
    reason: str | None = Field(description="why it ended early (`cancelled: <reason>`), or null")


class RejectedJobStatus(_Closed):
    """A job refused at intake whose id the gateway did not know (never for a signature
    refusal); cleared `[store] retention_days` later."""

    id: str = Field(description="the job id (`job_id` elsewhere)")
    state: Literal[JobState.REJECTED]
    updated_at: str = Time


class JobStatusPayload(RootModel[JobStatus | RejectedJobStatus]):
    """The retained status of a job on <prefix>/jobs/<id>/status. An empty retained payload
    (no bytes) clears it once the job is purged."""


class DeliveryEvent(_Closed):
    """One delivery (member x channel) changed state; on <prefix>/jobs/<id>/deliveries."""

    job_id: str = Field(description="the job id (`id` in the job and its status)")
    delivery_id: int = Field(ge=1)
    ref: str = Field(description="dispatch's member id, or a pseudonymous one")
    channel: ChannelName
    address: str = Field(description="masked (+32470****12, a***@example.be); '-' if none")
    lang: Lang
    state: DeliveryState
    previous: DeliveryState
    attempt: int = Field(ge=0, description="attempts made (calls for voice)")
    reason: str | None = Field(description="the last error code, e.g. smtp_451, busy")
    time: str = Time
    detail: str | Omitted = Field(None, description="more words on the state")
    provider_id_hash: list[str] | Omitted = Field(None, description="hashes of provider ids")
    next_attempt_at: Annotated[str, Field(pattern=RFC3339_MS)] | Omitted = Field(
        None, description="when retrying: the next attempt's time"
    )
    possibly_sent: Literal[True] | Omitted = Field(
        None, description="an earlier attempt was in flight when it stopped: it may have gone"
    )


class DeliveryBatch(_Closed):
    """The same events, in order, batched per job (`[status] delivery_events = "batch"`); on
    <prefix>/jobs/<id>/deliveries/batch, at most 1,000 per message."""

    job_id: str = Field(description="the job id (`id` in the job and its status)")
    events: list[DeliveryEvent] = Field(min_length=1, max_length=1000)


class ErrorItem(_Closed):
    path: str = Field(description='JSON path ("$.recipients[3].lang"), or "sig"')
    code: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$",
        description="machine-readable reason (docs/mqtt-api.md lists them)",
    )
    message: str = Field(description="in English, for people")


class Rejection(_Closed):
    """A payload the gateway refused (job or cancel); on <prefix>/jobs/rejected."""

    job_id: str | None = Field(description="the job id when one could be read, else null")
    topic: str = Field(description="where the refused payload came")
    node: str = Field(description="the gateway that refused it")
    errors: list[ErrorItem] = Field(min_length=1, description="the first errors found")
    errors_total: int | Omitted = Field(
        None, ge=1, description="all errors found; `errors` may list fewer"
    )
    time: str = Time


class InboundSms(_Closed):
    """A member's SMS reply; on <prefix>/inbound/sms. Only the masked number and scrubbed
    text: a number or address in the text is masked too."""

    channel: Literal["sms"]
    from_: str = Field(alias="from", description="the sender, masked")
    job_id: str | None = Field(description="the job it answers (`id` elsewhere), or null")
    ref: str | None = Field(description="the member, or null when the number is not known")
    text: str
    acknowledges: bool = Field(description="read as a confirmation (OK, BIEN RECU, ...)")
    time: str = Time


LinkState = Literal[
    "unknown", "connecting", "logging_in", "up", "degraded", "down", "auth_failed", "stopped"
]


class Link(BaseModel):
    """A link's state; channels add their own details (server, sent, binds, calls, tts)."""

    model_config = ConfigDict(extra="allow")

    state: LinkState
    last_error: str | None = None


class QueueDepth(_Closed):
    hot: int = Field(ge=0, description="ready, hot")
    cold: int = Field(ge=0, description="ready, cold")
    delayed: int = Field(ge=0, description="waiting for a retry")
    inflight: int = Field(ge=0)
    slots: int = Field(ge=0, description="attempts at a time")


class Peer(_Closed):
    node: str
    boot_id: str | None


class Failure(_Closed):
    task: str
    error: str


class Health(_Closed):
    """Retained on <prefix>/gateway/<node>/health, on change and every `health_interval`."""

    node: str
    state: Literal["starting", "ready", "degraded", "conflict", "stopping", "stopped", "failed"]
    version: str
    boot_id: str = Field(description="changes at every start")
    started_at: str = Time
    uptime_s: float = Field(ge=0)
    links: dict[str, Link] = Field(description="broker, email, sms, voice")
    queues: dict[ChannelName, QueueDepth]
    counters: dict[str, int] = Field(description="accepted, rejected, attempts, retries, ...")
    time: str = Time
    conflict: Peer | Omitted = Field(None, description="state conflict: the gateway serving")
    failure: Failure | Omitted = Field(None, description="state failed: what ended")


class OfflineHealth(_Closed):
    """The last will of the health connection: the process is gone without a goodbye."""

    node: str
    state: Literal["offline"]
    version: str
    boot_id: str = Field(description="of the process that died")
    started_at: str = Time


class HealthPayload(RootModel[Health | OfflineHealth]):
    """The gateway's health on <prefix>/gateway/<node>/health (retained)."""


MODELS: dict[str, type[BaseModel]] = {
    "cancel": Cancel,
    "job-status": JobStatusPayload,
    "delivery-event": DeliveryEvent,
    "delivery-batch": DeliveryBatch,
    "rejected": Rejection,
    "health": HealthPayload,
    "inbound-sms": InboundSms,
}

AVAILABILITY: dict[str, Any] = {
    "title": "Availability",
    "description": (
        "Retained on <prefix>/gateway/<node>/availability. The payload is plain UTF-8 text, "
        "not JSON: `online`, or `offline` (also the last will of the jobs connection). "
        "Validate the decoded text, as a string, against this schema."
    ),
    "type": "string",
    "enum": ["online", "offline"],
}
