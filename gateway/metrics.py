"""Prometheus metrics: what operators graph and alert on, and a small asyncio HTTP endpoint
serving them on /metrics (off by default, bound to localhost by default).

Label values come from small fixed sets (channel names, states, reason codes): never a job id,
recipient or address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field

from .channel import Attempt, Channel, Limits, Outcome
from .domain import Job
from .errors import PermanentError, TemporaryError

log = logging.getLogger("gateway.metrics")

# Without this every counter and histogram also exposes a `<name>_created` series (its start
# time as a float): twice the series, and dashboards that match `plp_gateway_.*` see both.
disable_created_metrics()  # type: ignore[no-untyped-call]

NAMESPACE = "plp_gateway"
# From a quick SMTP hand-off (tens of ms) to a voice call that rings and plays (minutes).
SEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
GATEWAY_STATES = ("starting", "ready", "degraded", "conflict", "stopping")
# Fields of a channel's health report that are running totals since the process started: a
# Prometheus counter (`rate()` copes with the reset at a restart). The others are gauges.
COUNTER_FIELDS = (
    "sent", "connects", "failures", "submitted", "throttled", "unknown_events",
    "syntheses", "cache_hits", "fallbacks",
)  # fmt: skip

ScrapeHook = Callable[["Metrics"], None]


class MetricsConfig(BaseModel):
    """`[metrics]`: the Prometheus endpoint. Keep it on localhost unless a proxy guards it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535, description="0 = any free port")


class Metrics:
    """All the gateway's metrics in a registry of its own (tests may create several)."""

    def __init__(self, version: str = "", node: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build = Info("build", "Gateway version and node.", namespace=NAMESPACE, registry=r)
        self.build.info({"version": version, "node": node})
        self.state = Gauge(
            "state",
            "1 for the gateway's current state.",
            ["state"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.jobs = Counter(
            "jobs", "Jobs entering each state.", ["state"], namespace=NAMESPACE, registry=r
        )
        self.deliveries = Counter(
            "deliveries",
            "Delivery state transitions per channel.",
            ["channel", "state"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.attempts = Counter(
            "attempts",
            "Send attempts per channel and outcome (ok, temporary, permanent).",
            ["channel", "outcome"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.retries = Counter(
            "retries",
            "Deliveries scheduled for a retry.",
            ["channel"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.send_seconds = Histogram(
            "send_duration_seconds",
            "Time a channel took for one send attempt.",
            ["channel"],
            buckets=SEND_BUCKETS,
            namespace=NAMESPACE,
            registry=r,
        )
        self.queue_depth = Gauge(
            "queue_depth",
            "Deliveries waiting per channel, priority and state (ready; delayed: not yet due).",
            ["channel", "priority", "state"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.link_up = Gauge(
            "link_up", "1 when the link is usable.", ["link"], namespace=NAMESPACE, registry=r
        )
        self.link_state = Gauge(
            "link_state",
            "1 for each link's current state.",
            ["link", "state"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.tts_syntheses = Counter(
            "tts_syntheses",
            "Texts synthesised to speech.",
            ["engine"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.tts_cache_hits = Counter(
            "tts_cache_hits", "Speech served from the cache.", namespace=NAMESPACE, registry=r
        )
        self.tts_seconds = Histogram(
            "tts_synthesis_duration_seconds",
            "Time one synthesis took.",
            ["engine"],
            buckets=TTS_BUCKETS,
            namespace=NAMESPACE,
            registry=r,
        )
        self.rejected = Counter(
            "rejected_payloads",
            "Payloads refused at intake, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.reloads = Counter(
            "config_reloads",
            "Configuration reloads by result.",
            ["result"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.inflight = Gauge(
            "inflight",
            "Send attempts running per channel.",
            ["channel"],
            namespace=NAMESPACE,
            registry=r,
        )
        # Each link's numeric health fields: counters as counters, gauges as gauges.
        self.link_health = _LinkHealth()
        r.register(self.link_health)
        self._links: dict[str, str] = {}
        self._tts_seen: dict[str, float] = {}
        self._queues: set[tuple[str, str, str]] = set()
        self._hooks: list[ScrapeHook] = []
        self.set_state("degraded")

    # -- recording (one call per event; cheap, safe from any coroutine) --------------------
    def set_state(self, state: str) -> None:
        for s in {*GATEWAY_STATES, state}:
            self.state.labels(s).set(1 if s == state else 0)

    def job_state(self, state: str) -> None:
        self.jobs.labels(state).inc()

    def delivery_state(self, channel: str, state: str) -> None:
        self.deliveries.labels(channel, state).inc()

    def attempt(self, channel: str, outcome: str, seconds: float) -> None:
        """One send attempt finished: outcome `ok`, `temporary` or `permanent`."""
        self.attempts.labels(channel, outcome).inc()
        self.send_seconds.labels(channel).observe(seconds)

    def retry(self, channel: str) -> None:
        self.retries.labels(channel).inc()

    def set_queue_depths(self, depths: Mapping[tuple[str, str, str], int]) -> None:
        """`{(channel, priority, state): waiting}`; keys missing from `depths` read 0."""
        for key in self._queues - set(depths):
            self.queue_depth.labels(*key).set(0)
        for key, n in depths.items():
            self.queue_depth.labels(*key).set(n)
        self._queues |= set(depths)

    def set_link(self, link: str, state: str, up: bool) -> None:
        previous = self._links.get(link)
        if previous is not None and previous != state:
            self.link_state.remove(link, previous)
        self._links[link] = state
        self.link_state.labels(link, state).set(1)
        self.link_up.labels(link).set(1 if up else 0)

    def tts_synthesis(self, engine: str, seconds: float) -> None:
        self.tts_syntheses.labels(engine).inc()
        self.tts_seconds.labels(engine).observe(seconds)

    def tts_duration(self, engine: str, seconds: float) -> None:
        """One synthesis's time (its count comes with the voice channel's health counters)."""
        self.tts_seconds.labels(engine).observe(seconds)

    def tts_cache_hit(self) -> None:
        self.tts_cache_hits.inc()

    def set_health(
        self,
        state: str,
        links: Mapping[str, Mapping[str, object]],
        queues: Mapping[str, Mapping[str, int]],
        waiting: Mapping[str, Mapping[tuple[str, str], int]] | None = None,
    ) -> None:
        """Take the health report the daemon publishes on MQTT (see `Gateway.links()`):
        link states, numeric health fields, in-flight counts, and TTS counts found under a
        channel's `tts` member (`syntheses`/`<engine>_syntheses`, `cache_hits`). `waiting`
        gives the queue depths per channel as `{(priority, state): n}` (the health's `hot`,
        `cold`, `delayed` mix priorities and a state)."""
        self.set_state(state)
        for link, health in links.items():
            link_state = str(health.get("state", "unknown"))
            self.set_link(link, link_state, link_state == "up")
            tts = health.get("tts")
            if isinstance(tts, Mapping):
                self._tts_counts(tts)
        self.link_health.update(links)
        for channel, depth in queues.items():
            if "inflight" in depth:
                self.inflight.labels(channel).set(depth["inflight"])
        if waiting is not None:
            self.set_queue_depths(
                {
                    (channel, priority, queue_state): n
                    for channel, per_key in waiting.items()
                    for (priority, queue_state), n in per_key.items()
                }
            )

    def _tts_counts(self, stats: Mapping[str, object]) -> None:
        # The voice channel keeps running totals; counters take the increase since last time.
        for key, value in stats.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if key == "cache_hits":
                counter = self.tts_cache_hits
            elif key.endswith("_syntheses"):
                counter = self.tts_syntheses.labels(key.removesuffix("_syntheses"))
            else:
                continue
            increase = value - self._tts_seen.get(key, 0)
            self._tts_seen[key] = value
            if increase > 0:
                counter.inc(increase)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "refused").inc()

    # -- exposition ----------------------------------------------------------------------------
    def on_scrape(self, hook: ScrapeHook) -> None:
        """Call `hook(self)` before each scrape, e.g. to refresh queue depths and links."""
        self._hooks.append(hook)

    def render(self) -> bytes:
        for hook in self._hooks:
            try:
                hook(self)
            except Exception:
                log.exception("metrics: a scrape hook failed; serving the last values")
        return generate_latest(self.registry)


class _LinkHealth(Collector):
    """The numeric fields of each link's latest health report, collected at scrape time:
    running totals as `plp_gateway_link_events_total{link, event}` (a counter), the others
    (window in use, active calls, `since` timestamps ...) as `plp_gateway_link_stat{link,
    stat}` (a gauge)."""

    def __init__(self) -> None:
        self._fields: dict[str, list[tuple[str, float]]] = {}

    def update(self, links: Mapping[str, Mapping[str, object]]) -> None:
        self._fields = {link: _numbers(health) for link, health in links.items()}

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            f"{NAMESPACE}_link_events",
            "Running totals in each link's health report (sent, connects, failures ...).",
            labels=["link", "event"],
        )
        stats = GaugeMetricFamily(
            f"{NAMESPACE}_link_stat",
            "Other numeric fields of each link's health report (window in use, calls ...).",
            labels=["link", "stat"],
        )
        for link, fields in self._fields.items():
            for name, value in fields:
                family = events if is_counter_field(name) else stats
                family.add_metric([link, name], value)
        yield events
        yield stats


def is_counter_field(name: str) -> bool:
    """Whether a flattened health field (`outcomes_busy`, `tts_espeak_syntheses`) is a
    running total."""
    return name.startswith("outcomes_") or any(
        name == word or name.endswith("_" + word) for word in COUNTER_FIELDS
    )


def _numbers(health: Mapping[str, object], prefix: str = "") -> list[tuple[str, float]]:
    """Numeric fields of a health mapping, nested ones as `outer_inner`; a list of named
    mappings (an SMS channel's `binds`) as `<list>_<name>_<field>`, other lists skipped."""
    out: list[tuple[str, float]] = []
    for key, value in health.items():
        name = f"{prefix}{key}"
        if isinstance(value, int | float):  # bools too: up/down flags
            out.append((name, float(value)))
        elif isinstance(value, Mapping):
            out.extend(_numbers(value, name + "_"))
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                    out.extend(_numbers(item, f"{name}_{item['name']}_"))
    return out


class MeteredChannel:
    """A channel as the scheduler sees it, timing every send attempt and counting outcomes.

    It wraps without changing behaviour: results and exceptions pass through untouched.
    """

    def __init__(self, channel: Channel, metrics: Metrics) -> None:
        self.inner = channel
        self.name = channel.name
        self._metrics = metrics

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    def limits(self) -> Limits:
        return self.inner.limits()

    def reconfigure(self, section: Any, /) -> None:
        self.inner.reconfigure(section)

    async def prepare(self, job: Job) -> Mapping[str, str]:
        return await self.inner.prepare(job)

    async def send(self, attempt: Attempt) -> Outcome:
        started = time.perf_counter()
        outcome = "temporary"  # what the scheduler makes of an unexpected exception
        try:
            result = await self.inner.send(attempt)
            outcome = "ok"
            return result
        except PermanentError:
            outcome = "permanent"
            raise
        except TemporaryError:
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._metrics.attempt(self.name, outcome, time.perf_counter() - started)

    def health(self) -> Mapping[str, object]:
        return self.inner.health()


class Pages(Protocol):
    """Serves the other paths (the status page): (status, content type, body) or None."""

    async def handle(self, target: str) -> tuple[str, str, bytes] | None: ...


class MetricsServer:
    """Serves `GET /metrics` over HTTP/1.1 on asyncio; `start()` binds, `stop()` closes."""

    REQUEST_TIMEOUT = 5.0
    MAX_REQUEST = 8192

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 9464,
        pages: Pages | None = None,
    ) -> None:
        self.metrics = metrics
        self.pages = pages  # the status page (gateway/status_page.py): other paths than /metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, metrics: Metrics, config: MetricsConfig) -> MetricsServer:
        return cls(metrics, config.host, config.port)

    async def start(self) -> None:
        """Bind and listen; raises OSError when the address is not available."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.REQUEST_TIMEOUT)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, _, rest = request_line.partition(" ")
            target = rest.partition(" ")[0]
            path = target.partition("?")[0]
            page = None
            if method in ("GET", "HEAD") and path != "/metrics" and self.pages is not None:
                page = await self.pages.handle(target)
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif page is not None:
                status, ctype, body = page
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.metrics.render()
            elif path == "/":
                status, ctype, body = "200 OK", "text/plain", b"plp-gateway: see /metrics\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await asyncio.wait_for(writer.drain(), self.REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.debug("metrics: dropped a bad or slow request: %r", exc)
        except ConnectionError as exc:
            log.debug("metrics: client went away: %r", exc)
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
