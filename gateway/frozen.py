"""An audience or follow-up job's members, frozen with its header (issue 14 item 3).

Such a job is stored in chunks like any large job, and a redelivery after a crash mid-intake
resumes after the members already stored, by position. Its members come from the store (the
directory, or the deliveries of the job it follows), which may change between the crash and
the redelivery: resolved again, the positions would shift (a member lost, another doubled). So
the members' keys are stored with the header (`begin_job`), and a resumption takes its members
from them, in their order: the members the job was accepted with, their addresses as the store
has them now. A member gone from the store in between (erased, removed) keeps their place,
under the pseudonym of an erased member and with no address: their deliveries fail with
`member_gone` rather than vanish.
Runs on the store's thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from itertools import groupby
from operator import itemgetter
from typing import Any

from .directory import MEMBER_GONE, Audience, Member
from .domain import Job, Recipient
from .jobs import JobIn, Resolved
from .privacy import erased_ref
from .rows import AddResult
from .store_contract import StoreContract


@dataclass(frozen=True)
class Begun:
    """`begin_job`'s answer, and the header and members a resumed job goes on with."""

    result: AddResult
    stored: int  # members already stored: where the intake resumes
    header: Job
    resolved: Resolved


def begin_job(
    store: StoreContract, header: Job, digest: str, spec: JobIn, resolved: Resolved
) -> Begun:
    """Store a large job's header with its frozen members (`StoreContract.begin_job`); when
    it resumes, the header as first stored and its members from the frozen keys."""
    result, stored = store.begin_job(header, digest, frozen=keys_of(spec, resolved))
    if result is not AddResult.NEW or not stored:
        return Begun(result, stored, header, resolved)
    frozen = store.frozen_members(header.id)
    first = store.job(header.id)
    if frozen is None or first is None:  # a job of its own recipients: they are the payload's
        return Begun(result, stored, header, resolved)
    # The header as accepted: its expiry, its PLP's code word and sender id.
    header = replace(header, options=first.options, expires_at=first.expires_at)
    return Begun(result, stored, header, thaw(store, json.loads(frozen), spec, resolved))


def keys_of(spec: JobIn, resolved: Resolved) -> str | None:
    """The keys of the job's members that come from the store, in the job's order (None: none
    do): a follow-up's refs and the channel that reached each; an audience's refs, in runs of
    one PLP (as they are resolved, by PLP then ref: a third of the cost of pairs)."""
    if spec.follows is not None and resolved.followed is not None:
        followed = resolved.followed
        return _dumps(
            {"refs": [r.ref for r in followed], "channels": [r.channels[0] for r in followed]}
        )
    if spec.audience is not None and resolved.audience is not None:
        runs = groupby(resolved.audience.members, key=itemgetter(0))  # Member.plp
        return _dumps({"plps": [[plp, [m.ref for m in run]] for plp, run in runs]})
    return None


def thaw(store: StoreContract, keys: dict[str, Any], spec: JobIn, resolved: Resolved) -> Resolved:
    """The job's members from its frozen `keys` (`keys_of`), in their order, as the store has
    them now (`resolved`: the store's answer at the redelivery, for what is not frozen)."""
    if spec.follows is not None:
        now = {r.ref: r for r in resolved.followed or ()}
        followed = tuple(
            replace(now[ref], channels=(channel,))
            if ref in now
            else Recipient(0, erased_ref(ref), "", (channel,), None, None, MEMBER_GONE, MEMBER_GONE)
            for ref, channel in zip(keys["refs"], keys["channels"], strict=True)
        )
        return replace(resolved, followed=followed)
    pairs = [(plp, ref) for plp, refs in keys["plps"] for ref in refs]
    found = store.members_by_key(pairs)
    members = tuple(
        m if m is not None else Member(plp, erased_ref(f"{plp}:{ref}"), "")
        for m, (plp, ref) in zip(found, pairs, strict=True)
    )
    gone = frozenset(i for i, m in enumerate(found) if m is None)
    plps = resolved.audience.plps if resolved.audience is not None else {}
    return replace(resolved, audience=Audience(members, plps=plps, departed=gone))


def _dumps(keys: dict[str, Any]) -> str:
    return json.dumps(keys, ensure_ascii=False, separators=(",", ":"))
