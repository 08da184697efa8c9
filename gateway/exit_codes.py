"""The daemon's exit statuses: what systemd (and an operator) reads when it ends."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # a requested stop (SIGTERM, SIGINT)
    FAILURE = 1  # a task of the daemon ended unexpectedly: the unit restarts it
    CONFIG = 2  # invalid configuration: a restart would not help (RestartPreventExitStatus=2)
