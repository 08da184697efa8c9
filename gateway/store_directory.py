"""The PLP directory in the store (both engines): PLPs, members and their groups, an audience
resolved in one read, and a member's erasure (from the directory and from stored jobs)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .directory import Audience, Coordinator, Member, Plp
from .privacy import erased_ref
from .store_db import Row
from .store_tx import Transactions


@dataclass(frozen=True)
class ImportResult:
    added: int
    updated: int
    removed: int


_MEMBER_COLUMNS = (
    "plp_id, ref, phone, phone_kind, email, lang, no_voice, quiet_hours, consent_at,"
    " cold_unsubscribed, updated_at"
)


# A `Member`'s fields in its order, without its groups (`resolve_audience`).
_AUDIENCE_COLUMNS = (
    "m.plp_id, m.ref, m.lang, m.phone, m.email, m.no_voice, m.quiet_hours, m.consent_at,"
    " m.cold_unsubscribed, m.phone_kind"
)


class DirectoryStore(Transactions):
    # -- PLPs -------------------------------------------------------------------------------
    def set_plp(self, plp: Plp, now: float | None = None) -> None:
        """Create or replace a PLP's own metadata (its members stay)."""
        self._tx(lambda: self._put_plp(plp, now or time.time()))

    def _put_plp(self, plp: Plp, now: float) -> None:
        self._db.execute(
            "INSERT INTO plps(id, names, zone, code_word, sender_id, coordinators, updated_at)"
            " VALUES (?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET names=excluded.names,"
            " zone=excluded.zone, code_word=excluded.code_word, sender_id=excluded.sender_id,"
            " coordinators=excluded.coordinators, updated_at=excluded.updated_at",
            (
                plp.id,
                json.dumps(plp.names, ensure_ascii=False),
                plp.zone,
                plp.code_word,
                plp.sender_id,
                json.dumps([c.as_dict() for c in plp.coordinators]),
                now,
            ),
        )

    def plp(self, plp_id: str) -> Plp | None:
        row = self._read(
            lambda: self._db.execute("SELECT * FROM plps WHERE id = ?", (plp_id,)).fetchone()
        )
        return None if row is None else _plp(row)

    def plps(self) -> list[tuple[Plp, int]]:
        """Every PLP with its number of members."""
        rows = self._read(
            lambda: self._db.execute(
                "SELECT p.*, (SELECT count(*) FROM members m WHERE m.plp_id = p.id) AS n"
                " FROM plps p ORDER BY p.id"
            ).fetchall()
        )
        return [(_plp(r), int(r["n"])) for r in rows]

    # -- members ----------------------------------------------------------------------------
    def import_members(
        self,
        plp_id: str,
        members: Sequence[Member],
        replace: bool = False,
        plp: Plp | None = None,
        now: float | None = None,
    ) -> ImportResult:
        """Merge `members` into the PLP (created if new), all or nothing; with `replace`, the
        PLP's members not in `members` are removed."""
        now = now or time.time()

        def work() -> ImportResult:
            if plp is not None:
                self._put_plp(plp, now)
            else:
                self._db.execute(
                    "INSERT INTO plps(id, updated_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                    (plp_id, now),
                )
            known = {
                r["ref"]
                for r in self._db.execute(
                    "SELECT ref FROM members WHERE plp_id = ?", (plp_id,)
                ).fetchall()
            }
            refs = {m.ref for m in members}
            removed = known - refs if replace else set()
            self._db.executemany(
                "DELETE FROM members WHERE plp_id = ? AND ref = ?",
                [(plp_id, r) for r in sorted(removed)],
            )
            self._db.executemany(
                f"INSERT INTO members({_MEMBER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
                " ON CONFLICT (plp_id, ref) DO UPDATE SET phone=excluded.phone,"
                " phone_kind=excluded.phone_kind, email=excluded.email, lang=excluded.lang,"
                " no_voice=excluded.no_voice, quiet_hours=excluded.quiet_hours,"
                " consent_at=excluded.consent_at, updated_at=excluded.updated_at",
                [
                    (
                        plp_id,
                        m.ref,
                        m.phone,
                        m.phone_kind,
                        m.email,
                        m.lang,
                        int(m.no_voice),
                        m.quiet_hours,
                        m.consent_at,
                        0,
                        now,
                    )
                    for m in members
                ],
            )
            self._db.executemany(
                "DELETE FROM member_groups WHERE plp_id = ? AND ref = ?",
                [(plp_id, m.ref) for m in members if m.ref in known],
            )
            self._db.executemany(
                "INSERT INTO member_groups(plp_id, ref, grp) VALUES (?,?,?)",
                [(plp_id, m.ref, g) for m in members for g in m.groups],
            )
            updated = len(refs & known)
            return ImportResult(len(refs) - updated, updated, len(removed))

        result: ImportResult = self._tx(work)
        if result.removed:
            self._read(self._db.after_purge)
        return result

    def members(self, plp_id: str, groups: Sequence[str] = ()) -> list[Member]:
        """A PLP's members (in any of `groups` when given), with their groups."""

        def read() -> list[Member]:
            refs = {m.ref for m in self.resolve_audience([plp_id], groups).members}
            rows = self._db.execute(
                "SELECT * FROM members WHERE plp_id = ? ORDER BY ref", (plp_id,)
            ).fetchall()
            return self._with_groups([r for r in rows if r["ref"] in refs], [plp_id])

        return self._read(read)

    def find_members(self, ref: str | None = None, phone: str | None = None) -> list[Member]:
        """Members by ref (in any PLP) or by E.164 number."""
        column, value = ("ref", ref) if ref is not None else ("phone", phone)

        def read() -> list[Member]:
            rows = self._db.execute(
                f"SELECT * FROM members WHERE {column} = ? ORDER BY plp_id",  # noqa: S608
                (value,),
            ).fetchall()
            return self._with_groups(rows)

        return self._read(read)

    def set_cold_unsubscribed(self, plp_id: str, ref: str, value: bool) -> bool:
        cur = self._tx(
            lambda: self._db.execute(
                "UPDATE members SET cold_unsubscribed = ?, updated_at = ?"
                " WHERE plp_id = ? AND ref = ?",
                (int(value), time.time(), plp_id, ref),
            )
        )
        return bool(cur.rowcount)

    def resolve_audience(self, plps: Sequence[str], groups: Sequence[str] = ()) -> Audience:
        """The members of `plps` (in any of `groups` when given), or which PLPs and groups the
        directory does not know (a group is known when a member of one of the PLPs is in it)."""

        def read() -> Audience:
            found = {
                r["id"]: _plp(r)
                for r in self._db.execute(
                    f"SELECT * FROM plps WHERE id IN ({_marks(plps)})",  # noqa: S608
                    list(plps),
                ).fetchall()
            }
            unknown_plps = tuple(i for i, p in enumerate(plps) if p not in found)
            if unknown_plps:
                return Audience((), unknown_plps)
            where, params = f"m.plp_id IN ({_marks(plps)})", list(plps)
            if groups:
                known = {
                    r["grp"]
                    for r in self._db.execute(
                        f"SELECT DISTINCT grp FROM member_groups WHERE plp_id IN ({_marks(plps)})"  # noqa: S608
                        f" AND grp IN ({_marks(groups)})",
                        [*plps, *groups],
                    ).fetchall()
                }
                unknown = tuple(i for i, g in enumerate(groups) if g not in known)
                if unknown:
                    return Audience((), (), unknown)
                where += (
                    " AND EXISTS (SELECT 1 FROM member_groups g WHERE g.plp_id = m.plp_id"  # noqa: S608
                    f" AND g.ref = m.ref AND g.grp IN ({_marks(groups)}))"
                )
                params += list(groups)
            # Only what a recipient needs, as tuples straight into `Member`s, without their
            # groups (a job needs none): the intake's hot path (docs/benchmarks.md).
            rows = self._db.tuples(
                f"SELECT {_AUDIENCE_COLUMNS} FROM members m WHERE {where}"  # noqa: S608
                " ORDER BY m.plp_id, m.ref",
                params,
            )
            return Audience(tuple(Member(*r) for r in rows), plps=found)

        return self._read(read)

    def members_by_key(self, keys: Sequence[tuple[str, str]]) -> list[Member | None]:
        """The members `(plp, ref)` as the directory has them now, in `keys`' order (None
        for one it no longer has): a job's frozen members when its intake resumes."""
        plps = sorted({plp for plp, _ in keys})

        def read() -> list[Member | None]:
            rows = self._db.tuples(
                f"SELECT {_AUDIENCE_COLUMNS} FROM members m"  # noqa: S608
                f" WHERE m.plp_id IN ({_marks(plps)})",
                plps,
            )
            found = {(r[0], r[1]): Member(*r) for r in rows}
            return [found.get((plp, ref)) for plp, ref in keys]

        return self._read(read)

    def _with_groups(self, rows: list[Row], plps: Sequence[str] | None = None) -> list[Member]:
        if not rows:
            return []
        scope = plps if plps is not None else sorted({r["plp_id"] for r in rows})
        found: dict[tuple[str, str], list[str]] = {}
        for g in self._db.execute(
            f"SELECT plp_id, ref, grp FROM member_groups WHERE plp_id IN ({_marks(scope)})"  # noqa: S608
            " ORDER BY grp",
            list(scope),
        ).fetchall():
            found.setdefault((g["plp_id"], g["ref"]), []).append(g["grp"])
        return [
            Member(
                plp=r["plp_id"],
                ref=r["ref"],
                lang=r["lang"],
                phone=r["phone"],
                email=r["email"],
                groups=tuple(found.get((r["plp_id"], r["ref"]), ())),
                no_voice=bool(r["no_voice"]),
                quiet_hours=r["quiet_hours"],
                consent_at=r["consent_at"],
                cold_unsubscribed=bool(r["cold_unsubscribed"]),
                phone_kind=r["phone_kind"],
            )
            for r in rows
        ]

    def cold_counts_since(self, since: float, except_job: str) -> dict[str, int]:
        """Per address: the cold jobs since `since` that were (or will be) sent to it (the
        daily cap); `except_job` (the new one) not counted."""
        rows = self._read(
            lambda: self._db.execute(
                "SELECT d.address, count(DISTINCT d.job_id) AS n FROM deliveries d"
                " JOIN jobs j ON j.id = d.job_id WHERE j.priority = 1 AND j.created_at >= ?"
                " AND j.id <> ? AND d.address IS NOT NULL AND d.state IN"
                " ('queued','sending','retrying','held','sent','delivered','acknowledged')"
                " GROUP BY d.address",
                (since, except_job),
            ).fetchall()
        )
        return {r["address"]: int(r["n"]) for r in rows}

    # -- erasure ----------------------------------------------------------------------------
    def remove_member(self, ref: str, plp_id: str | None = None) -> int:
        """Erase a member: their directory rows, and in stored jobs their number and address
        (deliveries keep a pseudonym, for the counts). Returns how many members went."""

        def work() -> int:
            where, params = "ref = ?", [ref]
            if plp_id is not None:
                where, params = "plp_id = ? AND ref = ?", [plp_id, ref]
            rows = self._db.execute(
                f"SELECT plp_id, ref, phone, email FROM members WHERE {where}",  # noqa: S608
                params,
            ).fetchall()
            for r in rows:
                self._db.execute(
                    "DELETE FROM members WHERE plp_id = ? AND ref = ?", (r["plp_id"], r["ref"])
                )
                # One pseudonym per member: their deliveries still count as one member.
                pseudonym = erased_ref(f"{r['plp_id']}:{r['ref']}")
                for address in (r["phone"], r["email"]):
                    if address:
                        self._forget_address(address, pseudonym)
            return len(rows)

        removed: int = self._tx(work)
        if removed:
            self._read(self._db.after_purge)
        return removed

    def _forget_address(self, address: str, pseudonym: str) -> None:
        self._db.execute(
            "UPDATE deliveries SET address = NULL, masked = ?, ref = ? WHERE address = ?",
            ("erased", pseudonym, address),
        )
        for row in self._db.execute(
            "SELECT id, body FROM jobs WHERE body LIKE ?", (f"%{json.dumps(address)[1:-1]}%",)
        ).fetchall():
            body = json.loads(row["body"])
            for r in body["recipients"]:
                if address in (r[3], r[4]):
                    r[0] = pseudonym
                    r[3] = None if r[3] == address else r[3]
                    r[4] = None if r[4] == address else r[4]
            self._db.execute(
                "UPDATE jobs SET body = ? WHERE id = ?",
                (json.dumps(body, ensure_ascii=False, separators=(",", ":")), row["id"]),
            )


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values)) or "NULL"


def _plp(r: Row) -> Plp:
    return Plp(
        id=r["id"],
        names=json.loads(r["names"]),
        zone=r["zone"],
        code_word=r["code_word"],
        sender_id=r["sender_id"],
        coordinators=tuple(Coordinator(**c) for c in json.loads(r["coordinators"])),
    )
