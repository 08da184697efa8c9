"""Directory sync over MQTT: a central PLP database publishes a PLP's member list, signed, on
`<prefix>/directory/<plp>/sync`; the result (counts, bad rows by position and reason, never a
member's data) goes to `<prefix>/directory/<plp>/result`.

The payload carries personal data: only the `directory-sync` role may publish it and only the
gateway may read it (configs/mosquitto/acl). It must be signed (gateway.signing), whatever
`[security] require_signatures` says, and it names its PLP in `plp`, which the MAC covers: a
list signed for one PLP cannot be replayed onto another PLP's topic.

    {"plp": "zone5344-tilleuls", "request": "sync-2026-11-29", "replace": true,
     "info": {"names": {...}, "zone": "5344", "code_word": "...", "sender_id": "...",
              "coordinators": [{"email": "..."}]},
     "members": [{"ref": "...", "phone": "...", "email": "...", "lang": "fr",
                  "groups": ["shopkeepers"], "no_voice": false}],
     "sig": {...}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .directory_import import ImportError_, plp_from_json, read_members
from .jobs import PLP_ID_PATTERN
from .numbers import NumberPolicy
from .payload import read_json
from .signing import SignatureError, Verifier
from .store_contract import StoreContract

_PLP = re.compile(PLP_ID_PATTERN)
_REQUEST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_PROBLEMS = 100  # bad rows listed in a result; all are counted


@dataclass(frozen=True)
class SyncRequest:
    plp: str
    body: dict[str, Any]
    request: str | None


def check(
    verifier: Verifier, payload: bytes, plp_id: str, max_members: int = 100_000
) -> SyncRequest:
    """The verified sync for `plp_id`, or SignatureError (unsigned, bad MAC, replay, another
    PLP's list). Read within bounds (about 16 JSON values a member), as jobs are."""
    try:
        body = read_json(payload, 16 * max_members + 1000)
    except ValueError:  # PayloadError too
        raise SignatureError("unsigned", "a directory sync is a signed JSON object") from None
    if not isinstance(body, dict) or "sig" not in body:
        raise SignatureError("unsigned", "a directory sync must be signed")
    verified = verifier.verify(body, datetime.now(UTC))
    if verified.job.get("plp") != plp_id:
        raise SignatureError(
            "wrong_plp",
            f"the list names {verified.job.get('plp')!r}, not {plp_id!r}",
            None,
            "$.plp",
        )
    request = verified.job.get("request")
    valid = isinstance(request, str) and _REQUEST.match(request)
    return SyncRequest(plp_id, verified.job, request if valid else None)


def valid_plp(plp_id: str) -> bool:
    return _PLP.match(plp_id) is not None


def apply(
    store: StoreContract, sync: SyncRequest, numbers: Mapping[str, NumberPolicy]
) -> dict[str, Any]:
    """Import the list (on the store's thread); the result to publish (no personal data)."""
    body = sync.body
    result: dict[str, Any] = {"plp": sync.plp, "request": sync.request}
    try:
        plp = plp_from_json(sync.plp, body["info"]) if body.get("info") is not None else None
        members = body.get("members")
        if not isinstance(members, list):
            raise ImportError_("`members` is a list")
        parsed = read_members(members, sync.plp, numbers)
    except ImportError_ as exc:
        return {**result, "ok": False, "error": str(exc)}
    replace = body.get("replace") is True
    done = store.import_members(sync.plp, parsed.members, replace, plp)
    return {
        **result,
        "ok": True,
        "added": done.added,
        "updated": done.updated,
        "removed": done.removed,
        "bad_rows": len(parsed.problems),
        # Positions (1-based) and reasons only: a detail could quote the member's data.
        "problems": [{"item": p.line, "reason": p.reason} for p in parsed.problems][:MAX_PROBLEMS],
    }
