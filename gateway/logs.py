"""Logging to stderr (the journal under systemd): one line per event, text or JSON."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping

from .privacy import scrub


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),  # masked by MaskPersonalData, the handler's filter
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(self.formatException(record.exc_info))
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class MaskPersonalData(logging.Filter):
    """A net under every handler: each record, of any logger (panoramisk logs raw AMI traffic,
    numbers included, at DEBUG) and any level, leaves with its numbers and addresses masked,
    whatever formatter follows."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


class _TextFormatter(logging.Formatter):
    """The record arrives masked (MaskPersonalData runs before any formatter): no second
    scan here, where the line's own date would cost the number matcher ~80 us a line."""


# sd-daemon(3) priority prefixes: journald strips them and files the line at that priority.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}


class _JournalFormatter(logging.Formatter):
    """Each line of a record with its syslog priority prefix (`<3>` error ... `<7>` debug),
    so `journalctl -p err` finds errors; the journal adds the time itself."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        # A traceback's lines become entries of their own: each needs the prefix too.
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


def _priority(levelno: int) -> int:
    for level, priority in _PRIORITY.items():
        if levelno >= level:
            return priority
    return 7


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when systemd connected stderr to the journal: `JOURNAL_STREAM` names its device
    and inode (systemd.exec(5)); a redirected stderr keeps the variable but not the file."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError):
        return False


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    journal = stderr_is_journal()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif journal:
        handler.setFormatter(_TextFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskPersonalData())
    if journal:
        handler.setFormatter(_JournalFormatter(handler.formatter or logging.Formatter()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # paho/aiomqtt log every packet at DEBUG; keep them quiet unless asked.
    logging.getLogger("mqtt").setLevel(max(logging.INFO, root.level))
    logging.getLogger("aiosmtplib").setLevel(logging.WARNING)
