"""The gateway's error tree.

`TemporaryError` vs `PermanentError` decides everywhere whether a delivery is retried.
Like aiosmtplib's errors, they also inherit the builtin they resemble where one fits.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """The configuration is invalid. `problems` lists (file, key, reason)."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {k}: {r}" for f, k, r in problems))


class ChannelError(GatewayError):
    """A channel could not deliver. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TemporaryError(ChannelError):
    """Worth retrying later (4xx SMTP, SMSC throttling, link down, busy line...)."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class PermanentError(ChannelError):
    """Retrying will not help (5xx SMTP, invalid destination...)."""


class LinkDown(TemporaryError, ConnectionError):
    """The channel's link (SMTP server, SMSC bind, AMI) is not usable right now."""


class NotSent(TemporaryError):
    """The attempt certainly never reached the provider (nothing was written to a bound
    link). It does not use up one of the member's attempts: the scheduler queues the
    delivery again, bounded by the job's expiry."""


class LinkUnavailable(NotSent, LinkDown):
    """No link could take the attempt (none bound, or it went down before the request left):
    wait for one. A flapping link must not fail members who never reached the provider."""


class StoreError(GatewayError):
    """The durable store failed."""


class StoreBusy(StoreError):
    """Another process holds the SQLite store's write lock (an admin command writing), and
    the caller asked not to wait for it (`Transactions.at_once`)."""


class InvalidJobId(GatewayError, ValueError):
    """A job id that breaks the id rule (gateway.job_id) reached a place that builds a topic
    or a path from it."""


class StoreUnavailable(StoreError, ConnectionError):
    """The store's server cannot be reached (PostgreSQL restarting, network cut): the store
    reconnects and runs the transaction again, for `[store] reconnect_timeout` at most."""


class SchemaTooNew(StoreError):
    """The store was written by a newer gateway (a higher schema version): refused, never
    downgraded."""
