"""The job id rule: the one check made before any topic, file name or log line is built from
a job id that came from outside.

An id is 1-128 characters of ASCII letters, digits and `. _ : -`, starting with a letter or a
digit. So it is always exactly one MQTT topic level with no wildcard (`+`, `#`), no `/`, no
`$`, no control, space or bidi character; never `.` or `..` or an option-like `-x`; and as a
file name it needs no quoting on any system the gateway runs on.
"""

from __future__ import annotations

import re

from .errors import InvalidJobId

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"  # the JSON Schema's spelling
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # fullmatch: `$` allows a "\n"


def valid_job_id(value: object) -> bool:
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


def checked_job_id(value: str) -> str:
    """`value` when it keeps the rule; else InvalidJobId (a bug upstream let it through)."""
    if not valid_job_id(value):
        raise InvalidJobId(f"job id breaks the id rule ({len(value)} characters)")
    return value
