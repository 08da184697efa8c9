"""Seeded hostile payloads for the intake fuzz test and its soak (bench/bench_hostile.py).

Every payload is invalid, so the gateway must answer each exactly once on
`<prefix>/jobs/rejected`: raw bytes, deep nesting, ids with `/ + # $ ..` and control or bidi
characters, huge and non-finite numbers, control characters in texts, long error lists, and
cancels with hostile ids and bodies. The gateway under test runs e-mail only, and a payload
with a `sig` goes through the signature check (`[security]` configured, not required).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

from gateway.job_id import valid_job_id
from tests.fixtures import email_job, members

Hostile = tuple[str, bytes]  # (topic, payload)

ID_PIECES = ["/", "+", "#", "$", "..", ".", "-", "\x00", "\n", "\r", "\x1b[2J", "\x7f", "\x85",
             "\u202e", "\u2066", "\u2028", " ", "é", "../", "\\", "\"", "'", "*", "%00", "ä"]  # fmt: skip
# A cancel's id is a topic level: mosquitto drops control characters and a client may not
# publish wildcards or add levels, so these are what reaches the gateway.
CANCEL_ID_PIECES = ["$", "..", ".", " ", "é", "\u202e", "\u2066", "\u2028", "\\", "'", "*", ""]
TEXT_CONTROLS = [*(chr(c) for c in range(32) if c not in (9, 10)), "\x7f", "\x85", "\x9b",
                 *(chr(c) for c in range(0x202A, 0x202F)), *(chr(c) for c in range(0x2066, 0x206A))]  # fmt: skip
LINE_CONTROLS = [*TEXT_CONTROLS, "\t", "\n", "\u2028", "\u2029"]
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 400, "1" + "0" * 5000,
               str(2**53 + 1), "-" + str(2**63)]  # fmt: skip
NUMBER = "@@number@@"  # a placeholder: the raw number replaces it, quotes and all


def hostile_payloads(seed: int, count: int, prefix: str = "plp") -> Iterator[Hostile]:
    rng = random.Random(seed)
    makers: list[Callable[[random.Random, int], bytes | Hostile]] = [
        _raw_bytes, _token_soup, _deep, _bad_id, _bad_number, _control_character,
        _many_errors, _mutated, _cancel, _cancel,
    ]  # fmt: skip
    for i in range(count):
        made = rng.choice(makers)(rng, i)
        if isinstance(made, tuple):
            yield f"{prefix}/{made[0]}", made[1]
        else:
            yield f"{prefix}/jobs", made


def _job(i: int, **changes: Any) -> dict[str, Any]:
    job = email_job(f"fuzz-{i}", members(2, domain="fuzz.example.be"))
    job.update(changes)
    return {k: v for k, v in job.items() if v is not None}


def _dump(job: dict[str, Any], number: str | None = None) -> bytes:
    text = json.dumps(job)
    return (text.replace(f'"{NUMBER}"', number) if number is not None else text).encode()


def _raw_bytes(rng: random.Random, i: int) -> bytes:
    return rng.randbytes(rng.randrange(0, 300))


def _token_soup(rng: random.Random, i: int) -> bytes:
    tokens = ["{", "}", "[", "]", '"', ":", ",", "1", "-0", "1e5", "NaN", "true", "null",
              '"id"', '"a+b"', "\\", "\\u", "\\ud800", " ", "\n", '"recipients"']  # fmt: skip
    return "".join(rng.choice(tokens) for _ in range(rng.randrange(1, 80))).encode()


def _deep(rng: random.Random, i: int) -> bytes:
    depth = rng.choice([33, 100, 999, 1000, 5000, 50_000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}"), ('[{"b":', "}]")])
    inner = opener * depth + "1" + closer * rng.choice([depth, depth // 2, 0])
    if rng.random() < 0.5:
        return inner.encode()
    return _dump(_job(i, voice={"plp_name": NUMBER}), inner)


def _hostile_id(rng: random.Random, pieces: list[str]) -> str:
    parts = [rng.choice(pieces) for _ in range(rng.randrange(1, 4))]
    parts.insert(rng.randrange(len(parts) + 1), rng.choice(["", "job", "victim-1", "42"]))
    job_id = "".join(parts)
    if rng.random() < 0.1:
        job_id = job_id * rng.randrange(20, 200)
    return job_id


def _bad_id(rng: random.Random, i: int) -> bytes:
    job_id = _hostile_id(rng, ID_PIECES)
    if valid_job_id(job_id):
        job_id += "+"
    return _dump(_job(i, id=job_id))


def _bad_number(rng: random.Random, i: int) -> bytes:
    number: str | None = rng.choice(BAD_NUMBERS)
    job = _job(i)
    place = rng.randrange(5)
    if place == 0:
        job["ttl"] = NUMBER
    elif place == 1:
        job["voice"] = {"repeat": NUMBER}
    elif place == 2:
        job["recipients"][0]["lang"] = NUMBER
    elif place == 3:  # a forged signature
        job["sig"] = {"v": NUMBER, "alg": "hmac-sha256", "kid": "dispatch-1",
                      "ts": "2026-11-23T14:00:00Z", "nonce": "n" * 22, "mac": "A" * 44}  # fmt: skip
    else:
        job["ttl"] = rng.choice([1e300, 1e20, -5.0, 0])
        number = None
    return _dump(job, number)


def _control_character(rng: random.Random, i: int) -> bytes:
    job = _job(i)
    field = rng.choice(["message", "subject", "plp_name", "code_word"])
    pool = TEXT_CONTROLS if field == "message" else LINE_CONTROLS
    text = "Alerte " + rng.choice(pool) + " fin"
    if field in ("message", "subject"):
        job[field]["fr"] = text
    else:
        job["voice"] = {field: text}
    return _dump(job)


def _many_errors(rng: random.Random, i: int) -> bytes:
    n = rng.choice([21, 200, 2000, 5000])
    bad: list[Any] = [1, "x", None, [], {"colour": 1}, {"lang": 5, "channels": ["fax"]}]
    recipients = [rng.choice(bad) for _ in range(n)]
    if rng.random() < 0.2:
        return _dump(_job(i, message={f"k{j}": "x" for j in range(65 + n // 10)}))
    return _dump(_job(i, recipients=recipients))


def _mutated(rng: random.Random, i: int) -> bytes:
    job = _job(i)
    change = rng.randrange(8)
    if change == 0:
        del job[rng.choice(["priority", "message", "channels", "recipients"])]
    elif change == 1:
        job["test"] = "yes"
    elif change == 2:
        job[rng.choice(["colour", "\x1b[31m", "\u202eid", "a" * 1000])] = 1
    elif change == 3:
        job["recipients"] = []
    elif change == 4:
        job["channels"] = [rng.choice(["fax", "sms", "voice"])]
    elif change == 5:
        job["channels"] = ["email", "email"]
    elif change == 6:
        job["expires_at"] = rng.choice(["2020-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00",
                                        "9999-12-31T23:59:59-12:00", "not a date"])  # fmt: skip
        job.pop("ttl")
    else:
        job["id"] = None if rng.random() < 0.5 else 12
    return _dump(job)


def _cancel(rng: random.Random, i: int) -> Hostile:
    job_id = _hostile_id(rng, CANCEL_ID_PIECES) if rng.random() < 0.6 else f"unknown-{i}"
    body = rng.choice([
        b"",
        rng.randbytes(rng.randrange(1, 200)),
        b"[" * rng.choice([100, 5000]),
        b'{"reason": ' + rng.choice(BAD_NUMBERS).encode() + b"}",
        json.dumps({"reason": "Alerte \u202e\x1b[2J" + "x" * 500}).encode(),
        b'{"reason": "\\ud800"}',
        json.dumps({"reason": [1] * 100}).encode(),
    ])  # fmt: skip
    return f"jobs/{job_id}/cancel", body
