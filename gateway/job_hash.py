"""A job's content hash: SHA-256 of its canonical JSON (sorted keys, no spaces, ASCII), so
that a re-send with another key order or spacing is the same job (`duplicate`), and other
content under the same id is not (`duplicate_id`).

A large job's members are written into the hash a slice at a time, never as a second copy of
a 10 MB payload; while the job is validated, each slice once it is valid (`JobDigest`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

SLICE = 256  # members written (and validated, gateway.jobs) at a time
_KEY = "recipients"


def hash_of(data: Any) -> str:
    """The content hash of a parsed payload, whatever it holds."""
    recipients = data.get(_KEY) if isinstance(data, dict) else None
    if not isinstance(recipients, list) or len(recipients) <= SLICE:
        return hashlib.sha256(canonical(data).encode()).hexdigest()
    digest = JobDigest(data)
    for start in range(0, len(recipients), SLICE):
        digest.add(recipients[start : start + SLICE])
    return digest.hexdigest()


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


class JobDigest:
    """The hash of a job object whose members are written by slices, in order (`add`): what
    `canonical` writes for the whole object, without it."""

    def __init__(self, data: dict[str, Any]) -> None:
        keys = sorted(data)
        head = [f"{canonical(k)}:{canonical(data[k])}" for k in keys if k < _KEY]
        tail = [f",{canonical(k)}:{canonical(data[k])}" for k in keys if k > _KEY]
        opening = "{" + "".join(f"{h}," for h in head) + '"recipients":['
        self._sha = hashlib.sha256(opening.encode())
        self._tail = ("]" + "".join(tail) + "}").encode()
        self._first = True

    def add(self, members: list[Any], valid: bool = False) -> None:
        """Write the next members. `valid`: each a valid member (gateway.jobs.RecipientIn)."""
        part = _valid_members(members) if valid else canonical(members).encode()
        if len(part) > 2:  # "[a,b]": its members
            self._sha.update(part[1:-1] if self._first else b"," + part[1:-1])
            self._first = False

    def hexdigest(self) -> str:
        self._sha.update(self._tail)
        return self._sha.hexdigest()


def _valid_members(members: list[Any]) -> bytes:
    """`canonical(members)`, encoded, of valid members: objects of strings, null and lists of
    strings, which orjson writes as `json` does where every character is printable ASCII
    (`json` escapes 0x7f, orjson does not). Measured, 100,000 members: 15 ms, not 90 ms."""
    fast = orjson.dumps(members, option=orjson.OPT_SORT_KEYS)
    if fast.isascii() and b"\x7f" not in fast:
        return fast
    return canonical(members).encode()
