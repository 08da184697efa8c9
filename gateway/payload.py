"""Reading untrusted JSON from the broker: bounded before anything is built.

Every raw payload (a job, a cancel, a signed job's check) is read through `read_json()`. Before
`json.loads` builds a single object it bounds the number of values (memory) and the nesting
depth (Python's parser recurses: 5,000 levels raise RecursionError); while parsing it refuses
what JSON cannot carry exactly: NaN and Infinity (a Python extension), numbers beyond a double
(`1e400`), integers beyond ±2**53 (RFC 7493, I-JSON), and lone UTF-16 surrogates (`"\\ud800"`,
which no UTF-8 encoder, database or MQTT client accepts later).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import GatewayError

MAX_DEPTH = 32  # a job needs 4 levels (job, recipients, recipient, channels)
MAX_SAFE_INTEGER = 2**53 - 1

_ESCAPES = ((b"\\\\", b""), (b'\\"', b""))  # in this order: `\\"` ends a string
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_BRACKET_OR_QUOTE = bytes(b for b in range(256) if b not in b'[]{}"')
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_VALUE_MARK = bytes(b for b in range(256) if b not in b"{[,:")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # a quick look first: rare in real jobs
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_UNSAFE_DISPLAY = re.compile(r"[^\x20-\x7e]")


class PayloadError(GatewayError, ValueError):
    """A payload that is not acceptable JSON. `code` is its reason code on jobs/rejected."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


def value_bound(payload: bytes) -> int:
    """An upper bound on the values in a JSON text, counted without parsing it: each value
    but the first of a container follows a `,`, each member value a `:`, and each container
    has its bracket (the ones inside strings only make the bound looser). One pass that
    keeps only those four bytes (a copy of at most the payload's size, freed at once): a
    10 MB job in 5 ms, where four `count`s took 15 ms."""
    return len(payload.translate(None, _NOT_VALUE_MARK)) + 1


def nesting_depth(payload: bytes, limit: int = MAX_DEPTH) -> int:
    """Depth of the deepest array or object, or PayloadError: `too_deep` past `limit`,
    `invalid_json` when brackets do not pair. Runs at C speed (a 10 MB job in ~20 ms):
    quotes inside strings go first (escaped ones, after escaped backslashes), then all but
    quotes and brackets. Two adjacent quotes then enclose nothing, or separate two strings by
    nothing: removing them keeps every other quote's parity. What is left of strings holds
    brackets (rare) and goes by regular expression. Then each pass removes the innermost
    pairs, one level per pass."""
    data = payload
    for old, new in _ESCAPES:
        data = data.replace(old, new)
    data = data.translate(None, _NOT_BRACKET_OR_QUOTE).replace(b'""', b"")
    data = _STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    for depth in range(limit + 1):
        if not data:
            return depth
        reduced = _INNERMOST.sub(b"", data)
        if reduced == data:
            raise PayloadError("invalid_json", "brackets do not pair")
        data = reduced
    raise PayloadError("too_deep", f"nested deeper than {limit} levels")


def read_json(payload: bytes, max_values: int | None = None, depth: bool = True) -> Any:
    """Parse `payload` (UTF-8 JSON) or raise PayloadError (a ValueError).

    `depth=False` leaves out the bound on nesting (`nesting_depth`, 30 ms of a 10 MB job),
    for a caller that bounds it otherwise and reads the payload again with it to name its
    errors (a job, `gateway.jobs`): nesting then goes up to Python's recursion limit
    (a RecursionError is `too_deep`)."""
    if max_values is not None:
        bound = value_bound(payload)
        if bound > max_values:
            raise PayloadError(
                "too_many_values", f"about {bound} JSON values, more than the limit {max_values}"
            )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("invalid_json", f"not UTF-8 at byte {exc.start}") from None
    if depth:
        nesting_depth(payload)
    if _SURROGATE.search(text) and _LONE_SURROGATE.search(text):
        raise PayloadError("invalid_json", "a \\u escape is half of a UTF-16 surrogate pair")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise PayloadError("invalid_json", f"{exc.msg} at character {exc.pos}") from None
    except RecursionError:  # only without the bound on depth
        raise PayloadError("too_deep", "nested deeper than the parser goes") from None


def display(text: str, limit: int = 120) -> str:
    """`text` fit for a log line or an error message: non-printable-ASCII characters escaped
    (no line breaks, terminal escapes or bidi overrides from outside), length bounded."""
    cut = text[:limit]
    shown = _UNSAFE_DISPLAY.sub(lambda m: f"\\u{ord(m.group()):04x}", cut)
    return shown + ("..." if len(text) > limit else "")


def _no_constant(name: str) -> Any:
    raise PayloadError("invalid_number", f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PayloadError("out_of_range", f"a number beyond a double ({display(text, 24)})")
    return value


def _safe_int(text: str) -> int:
    # Length first: int() of a 400,000-digit text is slow, and past 4,300 digits it raises.
    if len(text) > 17 or abs(value := int(text)) > MAX_SAFE_INTEGER:
        raise PayloadError("out_of_range", f"an integer beyond ±2**53 ({display(text, 24)})")
    return value


# One decoder: json.loads with hooks builds a new one per call (~10 us of a hot job's budget).
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite, parse_int=_safe_int)
