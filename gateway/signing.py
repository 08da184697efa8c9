"""Job authenticity: HMAC-SHA256 signatures over a canonical job, with timestamp and nonce.

Wire format (docs/operations.md, "Signed jobs", has a worked example and test vector): the job
stays as it is, plus one top-level member
`"sig": {"v": 1, "alg": "hmac-sha256", "kid": ..., "ts": ..., "nonce": ..., "mac": ...}`.
`mac` = base64(HMAC-SHA256(key, "plp-sig-v1\n" alg "\n" kid "\n" ts "\n" nonce "\n" JCS(job)))
where JCS is RFC 8785 canonical JSON of the job without `sig`. Only HMAC is offered: the
`cryptography` package (for Ed25519) is not a dependency of the gateway.

A cancel is signed the same way; its body names the job it cancels,
`{"cancel": "<job id>", "reason": ...}`, so its signature cannot be moved to another job's
cancel topic, and (jobs refuse unknown members) a signed cancel is never a valid job, nor a
signed job a valid cancel.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import heapq
import hmac
import json
import math
import re
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import GatewayError
from .payload import read_json
from .security_config import SecurityConfig

ALG = "hmac-sha256"
VERSION = 1
DOMAIN = "plp-sig-v1"
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SIG_FIELDS = {"v", "alg", "kid", "ts", "nonce", "mac"}
_SIG_NAME = b'"sig"'
_ESCAPED_SIG_LETTER = re.compile(rb"\\u00(?:67|69|73)")  # g, i or s as a JSON escape

REASONS = ("unsigned", "malformed_signature", "unknown_key", "bad_signature", "stale", "replayed")
WRONG_JOB = "wrong_job"  # a cancel whose `cancel` member is not the job id of its topic


class SignatureError(GatewayError, ValueError):
    """A job's signature is missing or not acceptable. `reason` is one of REASONS."""

    def __init__(
        self, reason: str, detail: str = "", job_id: str | None = None, path: str = "sig"
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.job_id = job_id  # when the refused payload had a readable id
        self.path = path  # where in the payload the problem is, for the rejection
        super().__init__(f"{reason}: {detail}" if detail else reason)


# -- RFC 8785 (JSON Canonicalization Scheme) ----------------------------------------------


def _jcs_number(x: float) -> str:
    """ECMAScript Number.prototype.toString, as RFC 8785 prescribes."""
    if not math.isfinite(x):
        raise ValueError("NaN and Infinity are not JSON")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")  # repr: shortest round-trip digits
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    n = len(whole) + int(exp or 0)  # value = 0.<digits> * 10**n
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    exp_text = ("+" if e > 0 else "-") + str(abs(e))
    body = digits if k == 1 else digits[0] + "." + digits[1:]
    return sign + body + "e" + exp_text


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _jcs_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _jcs(value: Any, parts: list[str]) -> None:
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(str(value) if abs(value) <= 2**53 else _jcs_number(float(value)))
    elif isinstance(value, float):
        parts.append(_jcs_number(value))
    elif isinstance(value, str):
        parts.append(_jcs_string(value))
    elif isinstance(value, list | tuple):
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _jcs(item, parts)
        parts.append("]")
    elif isinstance(value, Mapping):
        parts.append("{")
        # RFC 8785 sorts member names by their UTF-16 code units.
        for i, key in enumerate(sorted(value, key=lambda k: str(k).encode("utf-16-be"))):
            if not isinstance(key, str):
                raise TypeError("object member names must be strings")
            if i:
                parts.append(",")
            parts.append(_jcs_string(key))
            parts.append(":")
            _jcs(value[key], parts)
        parts.append("}")
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical form, UTF-8 encoded."""
    parts: list[str] = []
    _jcs(value, parts)
    return "".join(parts).encode("utf-8")


# -- signing --------------------------------------------------------------------------------


def format_ts(now: datetime) -> str:
    """RFC 3339 UTC, whole seconds: `2026-11-22T19:00:00Z`."""
    if now.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signing_input(job: Mapping[str, Any], kid: str, ts: str, nonce: str, alg: str = ALG) -> bytes:
    """The exact bytes the MAC covers."""
    header = f"{DOMAIN}\n{alg}\n{kid}\n{ts}\n{nonce}\n".encode()
    return header + canonical_json({k: v for k, v in job.items() if k != "sig"})


def compute_mac(key: bytes, data: bytes) -> str:
    return base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode("ascii")


def sign(
    job: Mapping[str, Any], kid: str, key: bytes, now: datetime, nonce: str | None = None
) -> dict[str, Any]:
    """Return a copy of `job` with a `sig` member (an existing one is replaced)."""
    ts = format_ts(now)
    nonce = nonce or secrets.token_urlsafe(16)
    if not _NONCE_RE.match(nonce):
        raise ValueError("nonce must be 16-64 characters of base64url")
    mac = compute_mac(key, signing_input(job, kid, ts, nonce))
    body = {k: v for k, v in job.items() if k != "sig"}
    sig = {"v": VERSION, "alg": ALG, "kid": kid, "ts": ts, "nonce": nonce, "mac": mac}
    return {"sig": sig, **body}


def sign_cancel(
    job_id: str,
    kid: str,
    key: bytes,
    now: datetime,
    reason: str | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """A signed cancel payload for `<prefix>/jobs/<job_id>/cancel`."""
    body: dict[str, Any] = {"cancel": job_id}
    if reason is not None:
        body["reason"] = reason
    return sign(body, kid, key, now, nonce)


# -- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenNonce:
    """A nonce accepted recently: must be remembered until `expires_at` to refuse replays."""

    kid: str
    nonce: str
    expires_at: datetime


@dataclass(frozen=True)
class VerifiedJob:
    """An accepted payload. `job` is the payload without `sig`; `seen` is None when unsigned."""

    job: dict[str, Any]
    kid: str | None = None
    signed_at: datetime | None = None
    seen: SeenNonce | None = None

    @property
    def signed(self) -> bool:
        return self.kid is not None


def _parse_sig(sig: object) -> tuple[str, str, str, str, datetime, bytes]:
    if not isinstance(sig, dict):
        raise SignatureError("malformed_signature", "sig must be an object")
    if set(sig) != _SIG_FIELDS:
        missing = sorted(_SIG_FIELDS - set(sig))
        extra = sorted(set(sig) - _SIG_FIELDS)
        raise SignatureError("malformed_signature", f"missing {missing}, unknown {extra}")
    if sig["v"] != VERSION or isinstance(sig["v"], bool):
        raise SignatureError("malformed_signature", f"unsupported version {sig['v']!r}")
    alg, kid, ts, nonce, mac = (sig[k] for k in ("alg", "kid", "ts", "nonce", "mac"))
    if not all(isinstance(x, str) for x in (alg, kid, ts, nonce, mac)):
        raise SignatureError("malformed_signature", "alg, kid, ts, nonce and mac are strings")
    if alg != ALG:
        raise SignatureError("malformed_signature", f"unsupported alg {alg!r}")
    if not _NONCE_RE.match(nonce):
        raise SignatureError("malformed_signature", "nonce must be 16-64 base64url characters")
    if not _TS_RE.match(ts):
        raise SignatureError("malformed_signature", "ts must be RFC 3339 with a time zone")
    try:
        signed_at = datetime.fromisoformat(ts)
        raw_mac = base64.b64decode(mac, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise SignatureError("malformed_signature", str(exc)) from None
    if len(raw_mac) != hashlib.sha256().digest_size:
        raise SignatureError("malformed_signature", "mac must be 32 bytes in base64")
    return alg, kid, ts, nonce, signed_at, raw_mac


#: A cancel is `{"cancel", "reason", "sig": {6 members}}`: a few values. Anything far larger
#: is read as no JSON at all (refused when signatures are required).
CANCEL_MAX_VALUES = 64


@dataclass(frozen=True)
class CancelRequest:
    """An accepted cancel: dispatch's free-text reason (None when it gave none)."""

    reason: str | None = None
    signed: bool = False


def parse_cancel(payload: bytes) -> CancelRequest:
    """An unsigned cancel as accepted when signatures are not required: empty, or any
    payload; a `reason` string is kept when it is a JSON object with one."""
    try:
        body = read_json(payload, CANCEL_MAX_VALUES) if payload.strip() else None
    except ValueError:  # PayloadError too: bounded depth, size and numbers
        body = None
    if isinstance(body, dict) and isinstance(body.get("reason"), str):
        return CancelRequest(body["reason"])
    return CancelRequest()


class Verifier:
    """Checks signatures and refuses replays; remembers nonces for `window_s` seconds.

    A payload with a `sig` that does not verify is always refused, even when signatures are
    not required: a wrong signature means tampering or a misconfigured sender.
    """

    def __init__(
        self, keys: Mapping[str, bytes], window_s: float = 300.0, require: bool = False
    ) -> None:
        self.keys = dict(keys)
        self.window_s = window_s
        self.require = require
        self._seen: dict[tuple[str, str], datetime] = {}
        self._expiry: list[tuple[datetime, str, str]] = []  # heap, to forget old nonces
        self._unsaved: list[SeenNonce] = []  # accepted since the last `take_unsaved()`

    @classmethod
    def from_config(cls, config: SecurityConfig) -> Verifier:
        return cls(config.key_bytes(), config.replay_window, config.require_signature)

    def reconfigure(self, config: SecurityConfig) -> None:
        """Apply a reloaded [security] section; the nonces seen so far stay remembered."""
        self.keys = config.key_bytes()
        self.window_s = config.replay_window
        self.require = config.require_signature

    def verify(self, payload: Mapping[str, Any], now: datetime) -> VerifiedJob:
        """Return the job without `sig`, or raise SignatureError(reason)."""
        self._forget(now)
        job = {k: v for k, v in payload.items() if k != "sig"}
        if "sig" not in payload:
            if self.require:
                raise SignatureError("unsigned", "this gateway requires signed jobs")
            return VerifiedJob(job)
        alg, kid, ts, nonce, signed_at, raw_mac = _parse_sig(payload["sig"])
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError("unknown_key", f"no key with id {kid!r}")
        expected = hmac.new(key, signing_input(job, kid, ts, nonce, alg), hashlib.sha256)
        if not hmac.compare_digest(expected.digest(), raw_mac):
            raise SignatureError("bad_signature", f"signature by {kid!r} does not match")
        age = (now - signed_at).total_seconds()
        if abs(age) > self.window_s:
            raise SignatureError(
                "stale", f"signed {age:+.0f} s from now, window is ±{self.window_s:.0f} s"
            )
        if (kid, nonce) in self._seen:
            raise SignatureError("replayed", f"nonce already used by {kid!r}")
        seen = SeenNonce(kid, nonce, signed_at + timedelta(seconds=self.window_s))
        self._remember(seen)
        self._unsaved.append(seen)
        return VerifiedJob(job, kid, signed_at, seen)

    # -- the intake's payload check (gateway.intake.PayloadCheck) ----------------------------

    def reads(self, payload: bytes) -> bool:
        """Whether `check` must read the payload: signatures are required, or it may carry a
        `sig` member (its name plain, or a letter of it as a `\\u` escape: then perhaps).
        When not, `check` would give it back as it is: the intake skips it (and its bounded
        read before it), so `check` does not scan a 10 MB payload for it a second time."""
        return (
            self.require or _SIG_NAME in payload or _ESCAPED_SIG_LETTER.search(payload) is not None
        )

    def check(self, payload: bytes) -> bytes:
        """Verify a job payload as received on MQTT; return what the intake should parse.

        A payload that is not a JSON object is returned as it is: the job parser rejects it
        with its own precise error. A signed job comes back as the RFC 8785 form of the job
        without `sig`, so that re-signing the same job (new nonce) still reads as the same
        content to the store's duplicate detection.
        """
        try:
            body = json.loads(payload)
        except ValueError:
            return payload
        if not isinstance(body, dict):
            return payload
        try:
            verified = self.verify(body, datetime.now(UTC))
        except SignatureError as exc:
            job_id = body.get("id")
            exc.job_id = job_id if isinstance(job_id, str) else None
            raise
        return canonical_json(verified.job) if verified.signed else payload

    def check_cancel(self, payload: bytes, job_id: str) -> CancelRequest:
        """Verify a cancel received on `<prefix>/jobs/<job_id>/cancel`, or raise SignatureError.

        Unsigned cancels (empty, or `{"reason": ...}`) pass only when signatures are not
        required. A signed one must name `job_id` in its `cancel` member: the MAC covers it,
        so a cancel signed for one job cannot be replayed onto another job's topic.
        """
        try:
            body = read_json(payload, CANCEL_MAX_VALUES) if payload.strip() else None
        except ValueError:  # PayloadError too: bounded depth, size and numbers
            body = None
        if not isinstance(body, dict):
            if self.require:
                raise SignatureError("unsigned", "this gateway requires signed cancels", job_id)
            return parse_cancel(payload)
        try:
            verified = self.verify(body, datetime.now(UTC))
        except SignatureError as exc:
            exc.job_id = job_id
            raise
        named = verified.job.get("cancel")
        if (verified.signed or named is not None) and named != job_id:
            raise SignatureError(
                WRONG_JOB, f"the cancel names job {named!r}, not {job_id!r}", job_id, "$.cancel"
            )
        reason = verified.job.get("reason")
        return CancelRequest(reason if isinstance(reason, str) else None, verified.signed)

    def discard(self, payload: bytes) -> None:
        """Forget the nonce of a checked payload that was not stored after all (store failure):
        the broker delivers it again, and that copy must not be refused as a replay."""
        try:
            sig = json.loads(payload).get("sig")
            key = (sig["kid"], sig["nonce"])
        except (ValueError, AttributeError, TypeError, KeyError):
            return
        self._seen.pop(key, None)
        self._unsaved = [s for s in self._unsaved if (s.kid, s.nonce) != key]

    # -- replay cache (the intake persists `take_unsaved()`; the daemon `restore()`s it) ------

    def seen(self) -> list[SeenNonce]:
        return [SeenNonce(k, n, exp) for (k, n), exp in self._seen.items()]

    def take_unsaved(self) -> list[SeenNonce]:
        """Nonces accepted since the last call, for the store (they must outlive a restart)."""
        out, self._unsaved = self._unsaved, []
        return out

    def restore(self, entries: Iterable[SeenNonce], now: datetime) -> None:
        for entry in entries:
            if entry.expires_at > now:
                self._remember(entry)

    def _remember(self, entry: SeenNonce) -> None:
        self._seen[(entry.kid, entry.nonce)] = entry.expires_at
        heapq.heappush(self._expiry, (entry.expires_at, entry.kid, entry.nonce))

    def _forget(self, now: datetime) -> None:
        # Past `expires_at` a replay is refused as stale anyway: the nonce can be forgotten.
        while self._expiry and self._expiry[0][0] < now:
            _, kid, nonce = heapq.heappop(self._expiry)
            self._seen.pop((kid, nonce), None)


# -- command line: `plp-gateway sign` (lets a dispatch integrator check their implementation) --


def main(argv: list[str] | None = None) -> int:
    """Sign a job file and print it: `sign --kid ID --key-file FILE JOB.json` (`-` = stdin);
    or print a signed cancel: `sign --kid ID --key-file FILE --cancel JOB_ID [--reason TEXT]`."""
    parser = argparse.ArgumentParser(prog="plp-gateway sign", description=main.__doc__)
    parser.add_argument("job", nargs="?", help="job JSON file, or - for standard input")
    parser.add_argument("--kid", required=True, help="key id, as in [security.keys]")
    parser.add_argument("--key-file", required=True, help="file holding the key (one line)")
    parser.add_argument("--cancel", metavar="JOB_ID", help="sign a cancel of this job instead")
    parser.add_argument("--reason", help="the cancel's reason (with --cancel)")
    parser.add_argument("--nonce", help="fixed nonce (test vectors only)")
    parser.add_argument("--ts", help="signing time, RFC 3339 (test vectors only)")
    args = parser.parse_args(argv)
    if (args.job is None) == (args.cancel is None):
        parser.error("give either a job file or --cancel JOB_ID")
    key = Path(args.key_file).read_text(encoding="utf-8").strip().encode()
    now = datetime.fromisoformat(args.ts) if args.ts else datetime.now(UTC)
    if args.cancel is not None:
        signed = sign_cancel(args.cancel, args.kid, key, now, args.reason, args.nonce)
        print(json.dumps(signed, ensure_ascii=False))
        return 0
    text = sys.stdin.read() if args.job == "-" else Path(args.job).read_text(encoding="utf-8")
    job = json.loads(text)
    if not isinstance(job, dict):
        print("the job must be a JSON object", file=sys.stderr)
        return 2
    print(json.dumps(sign(job, args.kid, key, now, args.nonce), ensure_ascii=False))
    return 0
