"""The daemon: wires config -> store -> channels -> scheduler -> MQTT intake -> status,
starts everything in one place and stops it in reverse order (SIGTERM/SIGINT), reloads on
SIGHUP.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .adoption import adopt_session
from .async_store import AsyncStore
from .channel import Channel, Reports, settle
from .cluster import ClusterNode, SharedLimits
from .config import Config, load_config
from .domain import Job
from .errors import ConfigError
from .exit_codes import ExitCode
from .homeassistant import Discovery
from .intake import Intake
from .mail import EmailChannel
from .metrics import MeteredChannel, Metrics, MetricsServer
from .mqtt import MqttLink, Outgoing
from .numbers import NumberPolicy
from .presence import Presence, Role
from .scheduler import Scheduler
from .sdnotify import Notifier, Watchdog
from .signing import Verifier
from .status import StatusPublisher, Topics, dumps, iso
from .status_page import StatusPage
from .store import open_store
from .tasks import cancel_all

log = logging.getLogger("gateway.daemon")

STOP_GRACE = 10.0
REPORT_BATCH = 500  # receipts applied per store transaction
CLEAR_CONFIRM_S = 30.0  # wait for the broker to confirm cleared retained statuses
_DOWN = ("down", "degraded", "auth_failed")  # a channel's health state that degrades us


def build_channels(
    config: Config, reports: Reports, metrics: Metrics | None = None
) -> dict[str, Channel]:
    channels: dict[str, Channel] = {}
    if config.email.enabled:
        channels["email"] = EmailChannel(config.email)
    if config.sms.enabled:
        from sms.channel import SmsChannel

        channels["sms"] = SmsChannel(config.sms, reports)
    if config.voice.enabled:
        from voice.call_channel import VoiceChannel
        from voice.synthesis import Synthesizer

        # The channel starts and stops its synthesizer (the audio is made at acceptance).
        timed = metrics.tts_duration if metrics is not None else None
        synthesizer = Synthesizer(config.voice, on_synthesis=timed)
        channels["voice"] = VoiceChannel(config.voice, reports, synthesizer)
    return channels


def number_policies(config: Config, channels: Mapping[str, Channel]) -> dict[str, NumberPolicy]:
    """The number policy of each running phone channel, as intake applies it."""
    policies = {"sms": config.sms.number_policy, "voice": config.voice.number_policy}
    return {name: policy for name, policy in policies.items() if name in channels}


class Gateway:
    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.topics = Topics(config.mqtt.topic_prefix, config.node)
        self._stop = asyncio.Event()
        self._stopping = False
        self._reload_requested = asyncio.Event()
        self._health_changed = asyncio.Event()
        self.reports: Reports = asyncio.Queue()
        self.store = AsyncStore(open_store(config.store))
        self.link = MqttLink(
            config.mqtt,
            config.client_id,
            [
                _jobs_subscription(config, self.topics),
                self.topics.cancel_filter,
                self.topics.directory_filter,
            ],
            will=Outgoing(self.topics.availability, b"offline", qos=1, retain=True),
            buffer=config.status.event_buffer,
            status_process=config.mqtt.status_process,
            log=config.log,
        )
        self.status = StatusPublisher(
            self.link.publish,
            self.topics,
            self.store,
            config.status.job_status_interval,
            config.status.delivery_events,
            rejected_retention=config.store.retention_days * 86400,
        )
        # The retained health goes through its own connection, whose will marks it offline.
        self.presence = Presence(
            config.mqtt,
            config.client_id,
            self.topics,
            self.status.boot_id,
            self._offline_health(),
            self._presence_changed,
            exclusive=not config.clustered,
        )
        self.status.publish_node = self.presence.publish
        self.link.allowed.clear()  # until the presence check has decided
        self._failure: dict[str, str] | None = None  # the task that ended unexpectedly
        self._final: str | None = None  # last health state, once stopped
        self.metrics = Metrics(__version__, config.node) if config.metrics.enabled else None
        self.channels = build_channels(config, self.reports, self.metrics)
        self.discovery = (
            Discovery(config.homeassistant, self.topics, self.channels, __version__)
            if config.homeassistant.discovery
            else None
        )
        self.scheduler = Scheduler(
            self.store,
            self._metered(self.channels),
            self.status,
            link_down_fallback_after=config.jobs.link_down_fallback_after,
            owner=self.status.boot_id if config.clustered else None,
        )
        # Several nodes on one store: this node's lease and its feed of due work.
        self.cluster = (
            ClusterNode(
                self.store,
                AsyncStore(open_store(config.store)),
                self.scheduler,
                config.node,
                self.status.boot_id,
                config.cluster,
                on_nodes=self._share,
                mqtt_client=config.client_id,
                adopt=self._adopt,
                job_dirty=self.status.job_dirty,
                status_interval=config.status.job_status_interval,
            )
            if config.clustered
            else None
        )
        if self.cluster is not None:
            cluster = self.cluster
            self.status.publishes_jobs = lambda: cluster.leads
        self.verifier = Verifier.from_config(config.security)
        self.intake = Intake(
            self.store,
            self.scheduler,
            self.status,
            self.topics,
            config.jobs,
            self.link.ack,
            check=self.verifier,
            numbers=number_policies(config, self.channels),
        )
        self.intake.directory = config.directory
        self.scheduler.directory = config.directory
        self.link.set_handlers(self.intake.handle, self._on_connect)
        self.link.on_intake = self.publish_health
        self.ready_hooks: list[Callable[[], None]] = []
        self.notifier = Notifier.from_env()
        self.watchdog = Watchdog(self.notifier, self._alive)
        self._ready_sent = False
        self._background: list[asyncio.Task[None]] = []
        self.metrics_server: MetricsServer | None = None
        if self.metrics is not None:
            self.status.sinks.append(self.metrics)
            self.metrics.on_scrape(self._scrape)

    # -- health -------------------------------------------------------------------------
    def links(self) -> dict[str, object]:
        out: dict[str, object] = {
            "broker": {"state": self.link.state, "last_error": self.link.last_error}
        }
        for name, ch in self.channels.items():
            out[name] = dict(ch.health())
        return out

    def state(self) -> str:
        if self._final is not None:
            return self._final
        if self._stopping:
            return "stopping"
        if self.presence.role in (Role.STANDBY, Role.DUPLICATE):
            return "conflict"
        if self.presence.role is Role.CLAIMING or not self.link.connects:
            return "starting"
        if (
            self.presence.role is Role.SERVING
            and self.link.connected.is_set()
            and not self.link.taking_jobs
        ):
            # A standby taking over: `ready` once the broker confirmed its job subscription,
            # so that nobody reads it ready (and publishes to it) before jobs reach it.
            return "starting"
        down = self.link.state != "up" or any(
            ch.health().get("state") in _DOWN for ch in self.channels.values()
        )
        return "degraded" if down else "ready"

    def publish_health(self) -> None:
        extra: dict[str, object] = {}
        other = self.presence.other
        if other is not None and self.state() == "conflict":
            extra["conflict"] = {"node": other.node, "boot_id": other.boot_id}
        if self._failure is not None:
            extra["failure"] = self._failure
        self.status.health(
            self.state(),
            self.links(),
            self.scheduler.queue_depths(),
            counters={**self.intake.counters, **self.scheduler.counters},
            **extra,
        )

    def _offline_health(self) -> bytes:
        """The health a monitor reads once this process is gone (the health link's will)."""
        return dumps(
            {
                "node": self.config.node,
                "state": "offline",
                "version": __version__,
                "boot_id": self.status.boot_id,
                "started_at": iso(self.status.started),
            }
        )

    async def _adopt(self, client_id: str) -> int:
        """Several nodes: take the jobs the broker queued for a dead node's session."""
        subscriptions = [_jobs_subscription(self.config, self.topics), self.topics.cancel_filter]
        return await adopt_session(self.config.mqtt, client_id, subscriptions, self.intake.handle)

    def _share(self, nodes: int) -> None:
        """Several nodes: each takes its share of the provider limits (gateway.cluster)."""
        self.scheduler.set_nodes(nodes)
        for channel in self.channels.values():
            if isinstance(channel, SharedLimits):
                channel.share(nodes)

    def _presence_changed(self) -> None:
        role = self.presence.role
        if role is Role.DUPLICATE:
            self.link.allowed.clear()  # the same client id would take the other's session
        elif role is not Role.CLAIMING:
            self.link.allowed.set()
        if role is not Role.CLAIMING:  # a claim keeps the intake as it is
            self.link.set_intake(role is Role.SERVING and not self._stopping)
        self.publish_health()

    async def _on_connect(self) -> None:
        # Health first, confirmed; the job link then says `online` itself, beside its will
        # (MqttLink): a monitor that sees `online` reads this start's health, not an older one.
        self.publish_health()
        await self.presence.sent(2)
        if self.discovery is not None:
            # Retained, on the health link like the topics they read (a duplicate process
            # of this node sends none); again at each connect, for a broker that lost them.
            for topic, payload in self.discovery.messages():
                self.presence.publish(topic, payload)
        for row in await self.store.run(self.store.store.active_jobs):
            self.status.job_dirty(row.id)
        for hook in self.ready_hooks:
            hook()
        if not self._ready_sent:
            # systemd: started once the store is open (it is) and the broker connected.
            self._ready_sent = True
            self.notifier.ready(self.status_line())

    # -- service manager and metrics -----------------------------------------------------
    def _metered(self, channels: dict[str, Channel]) -> dict[str, Channel]:
        """What the scheduler drives: the channels, timed per attempt when metrics are on."""
        if self.metrics is None:
            return channels
        return {name: MeteredChannel(ch, self.metrics) for name, ch in channels.items()}

    def status_line(self) -> str:
        """One line for `systemctl status`: state and each link's state."""
        links = ", ".join(
            f"{name} {health.get('state', '?') if isinstance(health, dict) else '?'}"
            for name, health in self.links().items()
        )
        return f"{self.state()}: {links}"

    def _alive(self) -> bool:
        # The watchdog task runs on the loop: a blocked loop stops the pings by itself. Also
        # stop them when a task the gateway cannot work without has died (while stopping,
        # tasks end on purpose and the pings must go on until the stop timeout).
        return self._stopping or not any(t.done() for t in self._background)

    def _scrape(self, metrics: Metrics) -> None:
        links = {k: v for k, v in self.links().items() if isinstance(v, dict)}
        metrics.set_health(
            self.state(), links, self.scheduler.queue_depths(), self.scheduler.queue_waiting()
        )

    async def _start_metrics(self) -> None:
        if self.metrics is None:
            return
        server = MetricsServer.from_config(self.metrics, self.config.metrics)
        server.pages = StatusPage(
            self.store,
            lambda: (self.state(), self.links(), self.scheduler.queue_depths()),
            self.config.node,
        )
        try:
            await server.start()
        except OSError as exc:
            # Alerts matter more than graphs: run on without the endpoint.
            log.error(
                "metrics endpoint not started, %s:%d: %s",
                self.config.metrics.host,
                self.config.metrics.port,
                exc.strerror or exc,
            )
            return
        self.metrics_server = server

    def _reloaded(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.reload(ok)
        if self._ready_sent:
            note = "" if ok else " (reload refused: previous configuration in force)"
            self.notifier.ready(self.status_line() + note)

    async def _health_loop(self) -> None:
        last = ""
        last_line = ""
        next_periodic = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            state = self.state() + repr(self.links())
            now = time.monotonic()
            line = self.status_line()
            if line != last_line:
                last_line = line
                self.notifier.status(line)
            if state != last or now >= next_periodic:
                last = state
                next_periodic = now + self.config.status.health_interval
                self.publish_health()
                other = self.presence.other
                if other is not None and self.state() == "conflict":
                    log.error(
                        "not taking jobs: gateway %s (boot %s) serves prefix %s",
                        other.node,
                        other.boot_id,
                        self.config.mqtt.topic_prefix,
                    )

    async def _reports_loop(self) -> None:
        while True:
            batch = [await self.reports.get()]
            while len(batch) < REPORT_BATCH and not self.reports.empty():
                batch.append(self.reports.get_nowait())
            try:
                await self.scheduler.reports(batch)
            except Exception:
                log.exception("could not apply %d reports", len(batch))
                applied = False
            else:
                applied = True
            for report in batch:
                settle(report, applied)

    async def _purge_loop(self) -> None:
        while True:
            cutoff = time.time() - self.config.store.retention_days * 86400
            forget_audio = getattr(self.channels.get("voice"), "forget_audio", None)
            if forget_audio is not None:
                voice_jobs = await self.store.run(self.store.store.voice_jobs, cutoff)
            purged = await self.store.run(self.store.store.purge, cutoff)
            if purged:
                log.info("retention: purged %d finished jobs and their personal data", purged)
                if forget_audio is not None:
                    await self._forget_audio(forget_audio, *voice_jobs)
            try:
                await self._clear_retained()
            except Exception:
                log.exception("retention: clearing retained job statuses failed")
            for name, channel in self.channels.items():
                housekeeping = getattr(channel, "housekeeping", None)
                if housekeeping is None:
                    continue
                try:
                    removed = await housekeeping()
                except Exception:
                    log.exception("retention: %s housekeeping failed", name)
                else:
                    if removed:
                        log.info("retention: %s removed %d old files", name, removed)
            await asyncio.sleep(self.config.store.purge_interval)

    async def _forget_audio(
        self,
        forget: Callable[[list[Job], list[Job]], Awaitable[int]],
        purged: list[Job],
        running: list[Job],
    ) -> None:
        """The alert audio of purged jobs goes with them (not files running jobs play)."""
        try:
            removed = await forget(purged, running)
        except Exception:
            log.exception("retention: removing the audio of purged jobs failed")
        else:
            if removed:
                log.info("retention: removed %d audio file(s) of purged jobs", removed)

    async def _clear_retained(self) -> None:
        """Empty the retained status of purged jobs and of rejections past retention (also
        those queued by `plp-gateway purge`, which has no broker connection). They leave
        the store's queue once the broker has confirmed them; otherwise the next pass
        publishes them again (harmless)."""
        while True:
            ids = await self.store.run(self.store.store.due_retained_clears, time.time())
            if not ids:
                return
            for job_id in ids:
                try:
                    self.status.clear_job(job_id)
                except ValueError:  # no topic can be built from it: nothing retained there
                    log.warning("retention: no status topic for job id %r", job_id)
            if not await self.link.flush(CLEAR_CONFIRM_S):
                return
            await self.store.run(self.store.store.retained_cleared, ids)
            log.info("retention: cleared %d retained job status(es)", len(ids))

    # -- reload ----------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the configuration; keep the old one when the new one is invalid."""
        if self.config_path is None:
            return False
        if self._ready_sent:
            self.notifier.reloading("reloading configuration")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, configuration unchanged: %s", exc)
            self._reloaded(False)
            return False
        if (
            new.mqtt != self.config.mqtt
            or new.store != self.config.store
            or new.node != self.config.node
        ):
            log.warning("reload: [mqtt], [store] and node changes need a restart; ignored")
        if new.metrics != self.config.metrics:
            log.warning("reload: [metrics] changes need a restart; ignored")
        if new.homeassistant != self.config.homeassistant:
            log.warning("reload: [homeassistant] changes need a restart; ignored")
        self.intake.limits = new.jobs
        self.intake.numbers = number_policies(new, self.channels)
        self.intake.directory = self.scheduler.directory = new.directory
        self.verifier.reconfigure(new.security)
        for name in ("email", "sms", "voice"):
            old_section, new_section = getattr(self.config, name), getattr(new, name)
            if new_section.enabled != old_section.enabled:
                log.warning("reload: enabling or disabling [%s] needs a restart; ignored", name)
            elif name in self.channels and new_section != old_section:
                # Each channel applies its own section; slow work (rebinding a link, logging
                # in again) runs in the channel's background, not in the signal handler.
                self.channels[name].reconfigure(new_section)
        self.config = new.model_copy(
            update={
                "mqtt": self.config.mqtt,
                "store": self.config.store,
                "node": self.config.node,
                "metrics": self.config.metrics,
                "homeassistant": self.config.homeassistant,
            }
        )
        self.scheduler.link_down_fallback_after = new.jobs.link_down_fallback_after
        self.scheduler.reload_limits()
        log.info("configuration reloaded from %s", self.config_path)
        self._reloaded(True)
        return True

    # -- lifecycle -------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Serve until a requested stop (ExitCode.OK) or a task's unexpected end (FAILURE)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        background: list[asyncio.Task[None]] = []
        code = ExitCode.OK
        try:
            for ch in self.channels.values():
                await ch.start()
            if self.cluster is not None:
                await self.cluster.join()
            await self.scheduler.start()
            # Signatures seen before a restart stay refused as replays for their window.
            nonces = await self.store.run(self.store.store.seen_nonces)
            self.verifier.restore(nonces, datetime.now(UTC))
            await self._start_metrics()
            background = self._background = [
                asyncio.create_task(self.presence.run(), name="presence"),
                asyncio.create_task(self.link.run(), name="mqtt"),
                asyncio.create_task(self.status.run(), name="status"),
                asyncio.create_task(self._health_loop(), name="health"),
                asyncio.create_task(self._reports_loop(), name="reports"),
                asyncio.create_task(self._purge_loop(), name="purge"),
                asyncio.create_task(self.store.watch(), name="store"),
            ]
            if self.cluster is not None:
                background.append(asyncio.create_task(self.cluster.run(), name="cluster"))
            self.watchdog.start()
            log.info(
                "gateway %s started: channels=%s broker=%s:%d prefix=%s",
                self.config.node,
                ",".join(self.channels) or "none",
                self.config.mqtt.host,
                self.config.mqtt.port,
                self.config.mqtt.topic_prefix,
            )
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait([stop, *background], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            for task in background:
                if task.done():
                    self._task_ended(task)
                    code = ExitCode.FAILURE
        except Exception as exc:
            log.exception("gateway failed while starting")
            self._failure = {"task": "start", "error": repr(exc)}
            code = ExitCode.FAILURE
        finally:
            await self._shutdown(background)
        return code

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A background task never ends by itself: whatever ended it is a failure."""
        exc = None if task.cancelled() else task.exception()
        error = repr(exc) if exc is not None else "cancelled" if task.cancelled() else "returned"
        log.error(
            "task %s ended unexpectedly: %s; stopping (exit %d)",
            task.get_name(),
            error,
            ExitCode.FAILURE,
            exc_info=exc,
        )
        if self._failure is None:
            self._failure = {"task": task.get_name(), "error": error}

    async def _shutdown(self, background: list[asyncio.Task[None]]) -> None:
        log.info("stopping: no new jobs; finishing attempts in flight")
        self._stopping = True
        self.notifier.stopping("stopping: finishing attempts in flight")
        self.link.pause_intake()
        self.publish_health()
        if self._failure is not None:
            # Tell the world at once, before the (bounded) stop of the attempts in flight.
            await self.link.say_offline(2)
        # Each step is bounded and may fail (a broken store is one reason to be here): the
        # stop goes on, so the last health and `offline` are still published.
        await _step("scheduler", self.scheduler.stop(STOP_GRACE), STOP_GRACE + 5)
        if self.cluster is not None:
            await _step("cluster", self.cluster.leave(), 5)
        for name, ch in reversed(list(self.channels.items())):
            await _step(f"channel {name}", ch.stop(), 5)
        await _step("status", self.status.flush(), 5)
        self._final = "failed" if self._failure is not None else "stopped"
        self.publish_health()
        # On the job link, where the will is: a clean stop sends no will.
        await self.link.say_offline(5)
        if self.link.connected.is_set():
            await self.link.flush(5)
        await self.presence.close()
        for name in await cancel_all(background):
            log.error("stopping: task %s ignored its cancellation", name)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.watchdog.stop()
        self.store.close()
        log.info("stopped")
        self.notifier.close()


def _jobs_subscription(config: Config, topics: Topics) -> str:
    """Several nodes share the jobs: the broker hands each to one member of the group."""
    group = config.mqtt.shared_group
    return topics.jobs if group is None else f"$share/{group}/{topics.jobs}"


async def _step(what: str, aw: Awaitable[object], timeout: float) -> None:
    try:
        await asyncio.wait_for(aw, timeout)
    except Exception:
        log.exception("stopping: %s did not stop cleanly", what)
