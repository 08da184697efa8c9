"""`plp-gateway status ID`: a job's per-recipient report, read from the store."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from .config import Config
from .errors import StoreError
from .store import describe, open_store


def print_report(config: Config, job_id: str, *, as_json: bool = False) -> int:
    where = describe(config.store)
    if config.store.url is None and not config.store.path.exists():
        print(f"no store at {where}")
        return 2
    try:
        store = open_store(config.store)
    except StoreError as exc:
        print(f"cannot open the store at {where}: {exc}")
        return 2
    try:
        row = store.job_row(job_id)
        if row is None:
            print(f"no job {job_id} in {where}")
            return 1
        rows = store.deliveries(job_id)
        counts = store.counts(job_id)
    finally:
        store.close()
    if as_json:
        print(
            json.dumps(
                {
                    "id": row.id,
                    "state": row.state.value,
                    "counts": counts,
                    "deliveries": [
                        {
                            "ref": d.ref,
                            "channel": d.channel,
                            "address": d.masked,
                            "lang": d.lang,
                            "state": d.state.value,
                            "attempts": d.attempts,
                            "reason": d.last_error,
                        }
                        for d in rows
                    ],
                },
                indent=2,
            )
        )
        return 0
    created = datetime.fromtimestamp(row.created_at, UTC).isoformat(timespec="seconds")
    print(f"job {row.id}  priority {row.priority.label}  state {row.state.value}  since {created}")
    print(f"{'ref':<16}{'channel':<8}{'address':<28}{'lang':<5}{'state':<14}{'tries':<6}reason")
    for d in rows:
        print(
            f"{d.ref:<16}{d.channel:<8}{d.masked:<28}{d.lang:<5}{d.state.value:<14}"
            f"{d.attempts:<6}{d.last_error or ''}"
        )
    for channel, per_state in counts.items():
        summary = ", ".join(f"{s}={n}" for s, n in sorted(per_state.items()))
        print(f"{channel}: {summary}")
    return 0
