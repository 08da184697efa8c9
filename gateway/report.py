"""A job's report for people, read from the store: `plp-gateway status ID` (a text table on the
gateway's server) and `plp-gateway report ID --format html|csv` (a file a coordinator opens or
mails; the HTML is gateway/report_html.py). Members appear by ref and masked address only.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .config import Config
from .errors import StoreError
from .outcomes import Delivery, MemberCounts, MemberOutcome, member_counts, members
from .reasons import describe as describe_reason
from .rows import JobRow
from .status import iso
from .store import describe, open_store
from .store_contract import StoreContract


@dataclass(frozen=True)
class JobReport:
    job: JobRow
    members: list[MemberOutcome]
    counts: MemberCounts


def read_report(store: StoreContract, job_id: str) -> JobReport | None:
    row = store.job_row(job_id)
    if row is None:
        return None
    outcomes = members(Delivery.from_row(d) for d in store.deliveries(job_id))
    return JobReport(row, outcomes, member_counts(outcomes))


CSV_FIELDS = (
    "job_id", "ref", "channel", "address", "state", "attempts", "reason", "reason_text",
    "updated_at", "member", "member_reached_by", "member_reached_at",
)  # fmt: skip


def render_csv(report: JobReport, lang: str = "en") -> str:
    """One row per member and channel; times in RFC 3339 UTC; a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_FIELDS)
    for m in report.members:
        for d in m.deliveries:
            writer.writerow(
                (
                    report.job.id,
                    m.ref,
                    d.channel,
                    d.address,
                    d.state.value,
                    d.attempts,
                    d.reason or "",
                    describe_reason(d.reason, lang),
                    iso(d.time) or "",
                    m.status.value,
                    m.reached_by.channel if m.reached_by else "",
                    (iso(m.reached_by.time) or "") if m.reached_by else "",
                )
            )
    return out.getvalue()


def _open_store(config: Config) -> StoreContract | None:
    where = describe(config.store)
    if config.store.url is None and not config.store.path.exists():
        print(f"no store at {where}", file=sys.stderr)
        return None
    try:
        return open_store(config.store)
    except StoreError as exc:
        print(f"cannot open the store at {where}: {exc}", file=sys.stderr)
        return None


def write_report(
    config: Config, job_id: str, fmt: str, output: Path | None, lang: str = "en"
) -> int:
    """`plp-gateway report`: 0 written, 1 no such job, 2 no store."""
    from .report_html import render_html

    store = _open_store(config)
    if store is None:
        return 2
    try:
        report = read_report(store, job_id)
    finally:
        store.close()
    if report is None:
        print(f"no job {job_id} in {describe(config.store)}", file=sys.stderr)
        return 1
    text = render_html(report, lang) if fmt == "html" else render_csv(report, lang)
    if output is None:
        sys.stdout.write(text)
    else:
        # newline="": the CSV's own CRLF row ends stay as they are (RFC 4180).
        output.write_text(text, encoding="utf-8", newline="")
        print(f"wrote {output}", file=sys.stderr)
    return 0


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
    outcomes = members(Delivery.from_row(d) for d in rows)
    per_member = member_counts(outcomes)
    if as_json:
        print(
            json.dumps(
                {
                    "id": row.id,
                    "state": row.state.value,
                    "counts": counts,
                    "members": per_member.as_dict(),
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
    print(members_line(per_member))
    return 0


def members_line(c: MemberCounts) -> str:
    """`members: reached 20 of 20, 4 acknowledged, 0 not reached` (the demo, `status`)."""
    pending = f", {c.pending} in progress" if c.pending else ""
    return (
        f"members: reached {c.reached} of {c.total}, {c.acknowledged} acknowledged, "
        f"{c.not_reached} not reached{pending}"
    )
