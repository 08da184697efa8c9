"""`plp-gateway directory ...`: import a PLP's member list, list, export a member's own data
(GDPR access), erase a member (GDPR erasure), set a PLP's own metadata."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .directory import Coordinator, Plp, valid_sender_id
from .directory_import import ImportError_, read_file
from .domain import LANGUAGES
from .privacy import mask_email, mask_phone

if TYPE_CHECKING:
    from .config import Config
    from .store import SqlStore

CONFIG_DEFAULT = "/etc/plp-gateway/gateway.toml"


def _store(args: argparse.Namespace) -> tuple[Config, SqlStore]:
    from .cli import _load_without_secrets
    from .store import open_store

    config, _unread = _load_without_secrets(args.config)
    return config, open_store(config.store)


def cmd_import(args: argparse.Namespace) -> int:
    config, store = _store(args)
    try:
        data = Path(args.file).read_bytes()
        numbers = {"sms": config.sms.number_policy, "voice": config.voice.number_policy}
        parsed = read_file(data, args.plp, args.file, numbers)
    except (OSError, ImportError_) as exc:
        store.close()
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    for problem in parsed.problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    for warning in parsed.warnings:
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    try:
        if args.dry_run:
            known = {m.ref for m in store.members(args.plp)}
            refs = {m.ref for m in parsed.members}
            removed = len(known - refs) if args.replace else 0
            print(
                f"dry run: {len(parsed.members)} good rows ({len(refs - known)} new,"
                f" {len(refs & known)} updated), {removed} to remove,"
                f" {len(parsed.problems)} bad rows; nothing written"
            )
        else:
            result = store.import_members(args.plp, parsed.members, args.replace, parsed.plp)
            print(
                f"imported into {args.plp}: {result.added} added, {result.updated} updated,"
                f" {result.removed} removed; {len(parsed.problems)} bad rows not imported"
            )
    finally:
        store.close()
    return 1 if parsed.problems else 0


def cmd_list(args: argparse.Namespace) -> int:
    _config, store = _store(args)
    try:
        if args.plp is None:
            for plp, n in store.plps():
                name = " / ".join(plp.names.values()) or "-"
                print(f"{plp.id}\t{n} members\t{name}\tzone {plp.zone or '-'}")
            return 0
        if store.plp(args.plp) is None:
            print(f"no PLP {args.plp}", file=sys.stderr)
            return 1
        for m in store.members(args.plp):
            # Masked: a list is shown on screens and pasted in tickets.
            print(
                f"{m.ref}\t{mask_phone(m.phone) if m.phone else '-'}"
                f"\t{mask_email(m.email) if m.email else '-'}\t{m.lang}"
                f"\t{';'.join(m.groups) or '-'}\t{'no_voice' if m.no_voice else '-'}"
                f"\t{'unsubscribed' if m.cold_unsubscribed else '-'}"
            )
    finally:
        store.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _config, store = _store(args)
    try:
        found = [m for m in store.find_members(ref=args.member) if args.plp in (None, m.plp)]
    finally:
        store.close()
    if not found:
        print(f"no member {args.member}", file=sys.stderr)
        return 1
    json.dump([m.export() for m in found], sys.stdout, ensure_ascii=False, indent=2)
    print()
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    _config, store = _store(args)
    try:
        n = store.remove_member(args.ref, args.plp)
    finally:
        store.close()
    if not n:
        print(f"no member {args.ref}", file=sys.stderr)
        return 1
    print(f"removed member {args.ref} ({n} PLP(s)); their stored deliveries are pseudonymised")
    return 0


def cmd_set_plp(args: argparse.Namespace) -> int:
    _config, store = _store(args)
    try:
        old = store.plp(args.id) or Plp(args.id)
        names = dict(old.names)
        for lang in LANGUAGES:
            value = getattr(args, f"name_{lang}")
            if value is not None:
                names[lang] = value
        coordinators = old.coordinators
        if args.coordinator_email or args.coordinator_phone:
            from .email_address import normalise_email
            from .jobs import normalise_phone

            coordinators = tuple(
                [Coordinator(email=normalise_email(e)) for e in args.coordinator_email or []]
                + [Coordinator(phone=normalise_phone(p)) for p in args.coordinator_phone or []]
            )
        if args.sender_id is not None and not valid_sender_id(args.sender_id):
            raise ValueError("--sender-id: a number, or at most 11 letters and digits")
        store.set_plp(
            Plp(
                id=args.id,
                names=names,
                zone=args.zone if args.zone is not None else old.zone,
                code_word=args.code_word if args.code_word is not None else old.code_word,
                sender_id=args.sender_id if args.sender_id is not None else old.sender_id,
                coordinators=coordinators,
            )
        )
    except ValueError as exc:
        print(f"not saved: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"PLP {args.id} saved")
    return 0


def add_parser(sub: Any, config_help: str) -> None:
    d = sub.add_parser(
        "directory",
        help="the PLP directory: import members, list, export or erase a member",
        description="The PLP directory in the store: who belongs to which PLP and group, and "
        "what members asked for. Jobs address it with `audience`.",
    )
    dsub = d.add_subparsers(dest="directory_command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", default=CONFIG_DEFAULT, help=config_help)
        return p

    imp = with_config(
        dsub.add_parser(
            "import",
            help="import a PLP's member list (CSV or JSON)",
            description="CSV: UTF-8, header row, columns ref,phone,email,lang,groups,no_voice "
            "(more allowed: quiet_hours, consent_at); groups separated by ';'; no_voice yes/no. "
            "JSON: a list of members, or {plp: {...}, members: [...]}. Every bad row is reported "
            "with its line and reason; the good rows are applied together. Exit status 1 when "
            "a row was bad.",
        )
    )
    imp.add_argument("file", help="the member list")
    imp.add_argument("--plp", required=True, help="the PLP's id, e.g. zone5344-tilleuls")
    imp.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    imp.add_argument(
        "--replace", action="store_true", help="the file is the whole list: others are removed"
    )
    imp.set_defaults(func=cmd_import)

    lst = with_config(dsub.add_parser("list", help="PLPs, or one PLP's members (masked)"))
    lst.add_argument("--plp", help="list this PLP's members")
    lst.set_defaults(func=cmd_list)

    exp = with_config(
        dsub.add_parser("export", help="a member's own data as JSON (GDPR access request)")
    )
    exp.add_argument("--member", required=True, metavar="REF", help="the member's ref")
    exp.add_argument("--plp", help="only in this PLP")
    exp.set_defaults(func=cmd_export)

    rm = with_config(
        dsub.add_parser(
            "remove-member",
            help="erase a member (GDPR): from the directory and from stored deliveries",
        )
    )
    rm.add_argument("ref", help="the member's ref")
    rm.add_argument("--plp", help="only in this PLP (default: every PLP)")
    rm.set_defaults(func=cmd_remove)

    sp = with_config(dsub.add_parser("set-plp", help="set a PLP's own metadata"))
    sp.add_argument("id", help="the PLP's id")
    for lang in LANGUAGES:
        sp.add_argument(f"--name-{lang}", help=f"its name in {lang}")
    sp.add_argument("--zone", help="its police zone")
    sp.add_argument("--code-word", help="the word its members know (in every message)")
    sp.add_argument("--sender-id", help="SMS source address and e-mail From name")
    sp.add_argument("--coordinator-email", action="append", help="a coordinator (repeatable)")
    sp.add_argument("--coordinator-phone", action="append", help="a coordinator (repeatable)")
    sp.set_defaults(func=cmd_set_plp)
