"""Typed configuration, read from TOML and validated at start with precise errors.

Any secret value may be given literally, as `"env:NAME"` (read from the environment) or as
`"file:/path"` (read from a file, e.g. a systemd credential). `load_config` resolves them all;
`load_config_deferring_secrets` (admin commands run outside the service) lists those it cannot
read instead of failing.
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sms.config import SmsConfig
from voice.config import VoiceConfig

from .channel import RetryPolicy
from .choices import DirectoryConfig
from .errors import ConfigError
from .homeassistant import HomeAssistantConfig, node_id_problem
from .metrics import MetricsConfig
from .secret import Secret, defer_secrets, deferred_secrets, unresolved
from .security_config import SecurityConfig as _SecurityConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(Section):
    max_attempts: int = Field(5, ge=1, le=100)
    initial_delay: float = Field(5.0, ge=0)
    max_delay: float = Field(300.0, ge=0)
    factor: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            initial_delay=self.initial_delay,
            max_delay=self.max_delay,
            factor=self.factor,
            jitter=self.jitter,
        )


class MqttProtocol(StrEnum):
    """The MQTT version the gateway speaks to the broker (`[mqtt] protocol`)."""

    V311 = "3.1.1"
    V5 = "5"


#: `[mqtt] session_expiry` that means never (MQTT 5's largest Session Expiry Interval).
SESSION_NEVER_EXPIRES = 0xFFFFFFFF


class TlsConfig(Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip host name check: only for tests with self-signed certs


class MqttConfig(Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = "plp"
    client_id: str | None = None  # default: plp-gateway-<node>; must be stable (session)
    username: str | None = None
    password: Secret | None = None
    tls: TlsConfig | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    reconnect_initial_delay: float = Field(0.5, gt=0)
    reconnect_max_delay: float = Field(30.0, gt=0)
    # Several gateway nodes share the jobs (issue 13): the intake subscription becomes
    # `$share/<shared_group>/<prefix>/jobs`, so the broker hands each job to one node.
    shared_group: str | None = None
    # MQTT 5 by default with a shared group (the "MQTT v5 shared subscriptions"),
    # 3.1.1 for one node as before.
    protocol: MqttProtocol | None = Field(
        None, description='"3.1.1" or "5"; default "5" with shared_group, else "3.1.1"'
    )
    # MQTT 5 only: without a Session Expiry Interval the broker ends the jobs session, and the
    # jobs queued in it, when the connection closes. 3.1.1 sessions never expire.
    session_expiry: int = Field(
        SESSION_NEVER_EXPIRES,
        ge=1,
        le=SESSION_NEVER_EXPIRES,
        description="seconds the broker keeps the jobs session of a disconnected gateway"
        " (MQTT 5; 4294967295: never)",
    )
    # The status connection (delivery events, job statuses) in a child process of its own:
    # paho's work per message, about half the gateway's CPU per SMS, on another core.
    status_process: bool = Field(
        True,
        description="publish status messages from a child process (false: in the daemon's own)",
    )

    @property
    def version(self) -> MqttProtocol:
        """The protocol the gateway's connections speak."""
        if self.protocol is not None:
            return self.protocol
        return MqttProtocol.V311 if self.shared_group is None else MqttProtocol.V5

    @field_validator("shared_group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "+#/ ")):
            raise ValueError("must be a single topic level (no '/', '+', '#', spaces)")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be a topic without wildcards or leading/trailing '/'")
        return v


class StoreConfig(Section):
    path: Path = Path("/var/lib/plp-gateway/gateway.sqlite3")
    # PostgreSQL instead of the SQLite file: "postgresql://user@host:5432/db?sslmode=verify-full"
    # (a secret: literal, env: or file:, it may hold the password).
    url: Secret | None = None
    password: Secret | None = None  # PostgreSQL's password, when not in the URL
    connect_timeout: float = Field(10.0, gt=0, description="seconds to open a connection")
    reconnect_timeout: float = Field(
        60.0, gt=0, description="seconds store calls wait for a lost PostgreSQL to come back"
    )
    retention_days: float = Field(30, gt=0)
    purge_interval: float = Field(3600, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or unresolved(v, info):
            return v
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (SQLite is [store] path)")
        return v


class ClusterConfig(Section):
    """`[cluster]`: several nodes on one PostgreSQL store (on with `[mqtt] shared_group`)."""

    lease: float = Field(
        15.0, gt=0, description="seconds a node's claims outlive its last heartbeat"
    )
    poll_interval: float = Field(
        0.25, gt=0, le=5, description="seconds between looks for due work in the shared store"
    )
    claim_batch: int = Field(
        100, ge=1, le=10_000, description="most deliveries a node claims per channel at a time"
    )


class JobsConfig(Section):
    max_payload_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(100_000, ge=1)
    max_text_length: int = Field(2000, ge=1)
    hot_ttl: float = Field(6 * 3600, gt=0, description="seconds a hot job lives without expires_at")
    cold_ttl: float = Field(3 * 86400, gt=0)
    max_ttl: float = Field(14 * 86400, gt=0)
    link_down_fallback_after: float = Field(
        60.0,
        ge=0,
        description="seconds a delivery with a fallback waits for a link of its channel",
    )


class EmailConfig(Section):
    enabled: bool = False
    host: str = "localhost"
    port: int = Field(25, ge=1, le=65535)
    sender: str = "plp-alert@localhost"
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: Secret | None = None
    timeout: float = Field(30.0, gt=0)
    concurrency: int = Field(16, ge=1, le=256)
    rate: float = Field(0.0, ge=0, description="messages per second, 0 = unlimited")
    message_id_domain: str | None = None  # default: the sender's domain
    probe_interval: float = Field(
        30.0, gt=0, description="seconds between link probes (connect, EHLO, NOOP) when idle"
    )
    retry: RetryConfig = RetryConfig()


class StatusConfig(Section):
    health_interval: float = Field(30.0, gt=0)
    job_status_interval: float = Field(
        0.5, gt=0, description="min seconds between job status updates"
    )
    event_buffer: int = Field(200_000, ge=100)
    delivery_events: Literal["each", "batch"] = Field(
        "each", description="one MQTT message per delivery change, or batched per job"
    )


class SecurityConfig(_SecurityConfig):
    """`[security]`: job signatures. Keys are secrets (`env:`/`file:` resolved before checks)."""

    keys: dict[str, Secret] = Field(default_factory=dict, description="key id -> secret")


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Config(Section):
    node: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    mqtt: MqttConfig = MqttConfig()
    store: StoreConfig = StoreConfig()
    cluster: ClusterConfig = ClusterConfig()  # several nodes: with [mqtt] shared_group
    jobs: JobsConfig = JobsConfig()
    email: EmailConfig = EmailConfig()
    sms: SmsConfig = SmsConfig()
    voice: VoiceConfig = VoiceConfig()
    status: StatusConfig = StatusConfig()
    log: LogConfig = LogConfig()
    security: SecurityConfig = SecurityConfig()
    metrics: MetricsConfig = MetricsConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    directory: DirectoryConfig = DirectoryConfig()

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        if not v or any(c in v for c in "+#/ "):
            raise ValueError("must be a single topic level (no '/', '+', '#', spaces)")
        return v

    @model_validator(mode="after")
    def _discovery_node(self) -> Config:
        # The node names the gateway in Home Assistant's discovery topics, whose ids are
        # stricter than an MQTT topic level.
        problem = node_id_problem(self.node) if self.homeassistant.discovery else None
        if problem is not None:
            raise ValueError(f"[homeassistant] discovery: {problem}")
        return self

    @model_validator(mode="after")
    def _cluster_store(self) -> Config:
        # Nodes share their work through the store: a SQLite file cannot be shared.
        if self.mqtt.shared_group is not None and self.store.url is None:
            raise ValueError("[mqtt] shared_group (several nodes) needs a PostgreSQL [store] url")
        return self

    @model_validator(mode="after")
    def _cluster_client_id(self) -> Config:
        # The same configuration on every node but `node`: a client id without the node's
        # name would be every node's, and the broker closes one node's session for the next
        # (the jobs, the status connection `<client_id>-status`), back and forth.
        client_id = self.mqtt.client_id
        if self.clustered and client_id is not None and self.node not in client_id:
            raise ValueError(
                f"[mqtt] client_id {client_id!r} must contain the node's name {self.node!r}"
                " with shared_group (each node needs its own); leave it unset for"
                f" plp-gateway-{self.node}"
            )
        return self

    @property
    def clustered(self) -> bool:
        return self.mqtt.shared_group is not None

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"plp-gateway-{self.node}"


def parse_config(
    data: dict[str, Any], source: str = "<config>", *, context: dict[str, Any] | None = None
) -> Config:
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        problems = [
            (source, ".".join(str(p) for p in err["loc"]) or "(top)", err["msg"])
            for err in exc.errors()
        ]
        raise ConfigError(problems) from None


def _read_toml(path: str | Path) -> dict[str, Any]:
    source = str(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([(source, "(file)", "file not found")]) from None
    except OSError as exc:
        raise ConfigError([(source, "(file)", exc.strerror or str(exc))]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(source, "(syntax)", str(exc))]) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; raise ConfigError listing (file, key, reason)."""
    return parse_config(_read_toml(path), str(path))


@dataclass(frozen=True)
class UnreadSecret:
    """A secret `load_config_deferring_secrets` could not read here."""

    key: str  # e.g. "email.password", "sms.smsc.0.password"
    reference: str  # "file:/path" or "env:NAME", as written
    reason: str


def load_config_deferring_secrets(path: str | Path) -> tuple[Config, list[UnreadSecret]]:
    """Like `load_config`, but a secret that cannot be read here keeps its reference as value
    and is listed: for admin commands that need no secret, run outside the service."""
    context = defer_secrets()
    config = parse_config(_read_toml(path), str(path), context=context)
    deferred = deferred_secrets(context)
    unread = [
        UnreadSecret(key, value, deferred[value])
        for key, value in _strings(config.model_dump())
        if value in deferred
    ]
    return config, unread


def _strings(tree: object, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every string in a dumped configuration."""
    if isinstance(tree, str):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _strings(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from _strings(value, f"{prefix}.{i}")
