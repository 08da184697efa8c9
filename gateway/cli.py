"""`plp-gateway` command line: run, check-config, send, sign, status, report, purge, schema,
simulate, tts, demo, init, directory."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiomqtt

from . import (
    __version__,
    allocator,
    gc_tuning,
    schemas,  # light: the models are imported only to print a schema
)
from .config import Config, UnreadSecret, load_config, load_config_deferring_secrets
from .domain import Job
from .errors import ConfigError, SchemaTooNew, StoreError
from .exit_codes import ExitCode
from .logs import setup_logging
from .secret import service_only

DEFAULT_CONFIG = "/etc/plp-gateway/gateway.toml"
_CONFIG_HELP = "gateway configuration file (default: %(default)s)"


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help without breaking paths at their hyphens (/etc/plp-gateway stays whole)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_problems(exc)
        raise SystemExit(ExitCode.CONFIG) from None


def _load_without_secrets(path: str) -> tuple[Config, list[UnreadSecret]]:
    """For commands that need no secret: a systemd credential is readable only inside the
    service, and `status` or `purge` must work in an operator's shell too."""
    try:
        return load_config_deferring_secrets(path)
    except ConfigError as exc:
        _print_problems(exc)
        raise SystemExit(2) from None


def _print_problems(exc: ConfigError) -> None:
    for file, key, reason in exc.problems:
        print(f"{file}: {key}: {reason}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Gateway

    config = _load(args.config)
    setup_logging(config.log.level, config.log.format)
    allocator.fix_mmap_threshold()  # a large job's buffers go back to the system once freed
    gc_tuning.tune()  # fewer garbage collections, none walking what was imported

    async def main() -> int:
        try:
            gateway = Gateway(config, Path(args.config))
        except SchemaTooNew as exc:
            # Written by a newer gateway: restarting this one would not help.
            logging.getLogger("gateway").error("cannot start: %s", exc)
            return ExitCode.CONFIG
        except StoreError as exc:  # e.g. PostgreSQL still down: systemd tries again
            logging.getLogger("gateway").error("cannot start: %s", exc)
            return ExitCode.FAILURE
        return await gateway.run()

    return asyncio.run(main())


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.strict:
        config = _load(args.file)  # every secret must be readable here, as for `run`
    else:
        config, unread = _load_without_secrets(args.file)
        for secret in unread:
            if service_only(secret.reference):
                problem = (
                    f"{secret.reference} is readable only inside the service (a systemd "
                    "credential); check it there with `check-config --strict`"
                )
            else:
                problem = f"{secret.reason}; `run` needs it (`check-config --strict` checks it)"
            print(f"{args.file}: {secret.key}: warning: {problem}", file=sys.stderr)
        unchecked = f", {len(unread)} secrets not checked here" if unread else ""
    from .store import describe

    channels = [n for n in ("email", "sms", "voice") if getattr(config, n).enabled]
    backend = "sqlite" if config.store.url is None else "postgresql"
    print(
        f"{args.file}: OK (node {config.node}, channels: {', '.join(channels) or 'none'},"
        f" store: {backend} {describe(config.store)}{unchecked if not args.strict else ''})"
    )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    if args.list:
        for entry in schemas.CATALOGUE:
            print(f"{entry.name:<15} {entry.topic:<38} {entry.summary}")
        return 0
    sys.stdout.write(schemas.render(args.name))
    return 0


def _job_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        data: dict[str, Any] = json.loads(Path(args.file).read_text(encoding="utf-8"))
        return data
    if not args.text or not args.to:
        print("send: give a job file, or --text LANG=TEXT and --to ADDRESS", file=sys.stderr)
        raise SystemExit(2)
    message = dict(t.split("=", 1) for t in args.text)
    recipients = []
    for i, to in enumerate(args.to):
        key = "email" if "@" in to else "phone"
        recipients.append({"ref": f"cli-{i + 1}", key: to})
    job: dict[str, Any] = {
        "id": args.id or f"cli-{uuid.uuid4().hex[:12]}",
        "priority": args.priority,
        "test": args.test,
        "message": message,
        "channels": args.channel or ["email"],
        "recipients": recipients,
    }
    if args.ttl:
        job["ttl"] = args.ttl
    return job


SEND_EXIT_CODES = (
    "Exit status: 0 the job ended and every member was reached on some channel; 1 it ended "
    "and some members were not reached; 2 bad usage or configuration; 3 the gateway "
    "rejected the job; 4 stopped following before the job ended (--timeout, or the output "
    "was closed, e.g. `| head`)."
)


def cmd_send(args: argparse.Namespace) -> int:
    from .follow import follow_job

    config = _load(args.config)
    job = _job_from_args(args)
    if args.id:
        job["id"] = args.id
    kid = config.security.sign_with
    if kid is not None:
        from datetime import UTC, datetime

        from .signing import sign

        job = sign(job, kid, config.security.key_bytes()[kid], datetime.now(UTC))
    mode = "json" if args.json else "quiet" if args.quiet else "auto"
    return asyncio.run(
        follow_job(config, job, follow=not args.no_follow, timeout=args.timeout, mode=mode)
    )


def cmd_sign(args: argparse.Namespace) -> int:
    from .signing import main as sign_main

    return sign_main(args.rest)


def cmd_status(args: argparse.Namespace) -> int:
    from .report import print_report

    config, _unread = _load_without_secrets(args.config)
    if args.job_id is None:
        from .cluster import print_cluster

        return print_cluster(config, as_json=args.json)
    return print_report(config, args.job_id, as_json=args.json)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    config, _unread = _load_without_secrets(args.config)
    output = Path(args.output) if args.output else None
    return write_report(config, args.job_id, args.format, output, args.lang)


def cmd_purge(args: argparse.Namespace) -> int:
    from .store import open_store

    config, _unread = _load_without_secrets(args.config)
    days = args.older_than_days if args.older_than_days is not None else config.store.retention_days
    cutoff = time.time() - days * 86400
    store = open_store(config.store)
    try:
        voice_jobs = store.voice_jobs(cutoff) if config.voice.enabled else ([], [])
        n = store.purge(cutoff)
    finally:
        store.close()
    print(f"purged {n} finished jobs older than {days:g} days (with their personal data)")
    if n and voice_jobs[0]:
        removed = asyncio.run(_forget_audio(config, *voice_jobs))
        print(f"removed {removed} audio file(s) of purged jobs")
    if n:
        # This command has no broker connection: the running gateway empties their
        # retained statuses at its next purge pass (`[store] purge_interval`) or start.
        print("their retained statuses are cleared by the gateway at its next purge pass")
    return 0


async def _forget_audio(config: Config, purged: list[Job], running: list[Job]) -> int:
    from voice.synthesis import Synthesizer

    synthesizer = Synthesizer(config.voice)
    try:
        return await synthesizer.forget(purged, running)
    finally:
        await synthesizer.stop()


def cmd_simulate(args: argparse.Namespace) -> int:
    rest: list[str] = args.rest
    import importlib

    module = {"smsc": "sms.simulator", "asterisk": "voice.simulator"}[args.what]
    try:
        entry = importlib.import_module(module).main
    except ModuleNotFoundError:
        print(f"simulate {args.what}: not available in this build", file=sys.stderr)
        return 2
    result: int = entry(rest)
    return result


def cmd_tts(args: argparse.Namespace) -> int:
    from voice.tts_cli import main as tts_main

    return tts_main(args.rest)


def cmd_init(args: argparse.Namespace) -> int:
    from .init import main as init_main

    return init_main(Path(args.dir), force=args.force)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    extra = ["--nodes", str(args.nodes)]
    if args.store_url:
        extra += ["--store-url", args.store_url]
    return demo_main([*args.rest, *extra])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plp-gateway",
        description="The PLP alert gateway: takes alert jobs from MQTT and delivers them to the "
        "members of a PLP by e-mail, SMS and voice call.",
        epilog=f"`plp-gateway COMMAND --help` describes a command. The configuration file is "
        f"{DEFAULT_CONFIG} unless --config says otherwise.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=_CONFIG_HELP)
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate a configuration file")
    chk.add_argument("file", help="the configuration file to check, e.g. " + DEFAULT_CONFIG)
    chk.add_argument(
        "--strict",
        action="store_true",
        help="every secret must be readable here (run it where the daemon runs)",
    )
    chk.set_defaults(func=cmd_check_config)

    sch = sub.add_parser(
        "schema",
        help="print the JSON Schema of an MQTT payload (default: the job)",
        description="Print the JSON Schema (draft 2020-12) of a payload the gateway reads or "
        "writes on MQTT; docs/schemas/ holds the same files.",
    )
    sch.add_argument(
        "name",
        nargs="?",
        default=schemas.DEFAULT,
        choices=schemas.NAMES,
        metavar="NAME",
        help=f"the payload: {', '.join(schemas.NAMES)} (default: %(default)s)",
    )
    sch.add_argument(
        "--list", action="store_true", help="list the payloads with their topics and exit"
    )
    sch.set_defaults(func=cmd_schema)

    snd = sub.add_parser(
        "send",
        help="publish a job and follow it until it is done",
        description="Publish a job and follow it live: members reached on any channel, per "
        "channel delivered, acknowledged, failed and retrying, then a table of every member. "
        "On a pipe or a dumb terminal, plain lines.",
        epilog=SEND_EXIT_CODES,
    )
    snd.add_argument("file", nargs="?", help="job JSON file")
    snd.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=_CONFIG_HELP)
    snd.add_argument("--id", help="job id (default: the file's, else a new cli-... id)")
    snd.add_argument(
        "--priority",
        choices=["hot", "cold"],
        default="hot",
        help="hot alerts go before cold ones (default: %(default)s)",
    )
    snd.add_argument(
        "--text",
        action="append",
        metavar="LANG=TEXT",
        help='the message in one language, e.g. fr="Alerte ..." (repeat per language)',
    )
    snd.add_argument(
        "--to",
        action="append",
        metavar="ADDRESS",
        help="a recipient: e-mail address or phone number in +32... form (repeatable)",
    )
    snd.add_argument(
        "--channel",
        action="append",
        choices=["email", "sms", "voice"],
        help="how to reach the recipients (repeatable; default: email)",
    )
    snd.add_argument("--ttl", type=float, help="seconds after which the job expires")
    snd.add_argument("--test", action="store_true", help="mark the job as a drill")
    snd.add_argument("--no-follow", action="store_true", help="publish the job and return at once")
    out = snd.add_mutually_exclusive_group()
    out.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="print nothing; the exit status tells the outcome",
    )
    out.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object at the end (counts and every member), for scripts",
    )
    snd.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="stop following after this many seconds (default: %(default)s)",
    )
    snd.set_defaults(func=cmd_send)

    sig = sub.add_parser("sign", help="sign a job file or a cancel (for dispatch integrators)")
    sig.add_argument(
        "rest", nargs=argparse.REMAINDER, help="--kid ID --key-file FILE (JOB.json | --cancel ID)"
    )
    sig.set_defaults(func=cmd_sign)

    st = sub.add_parser(
        "status",
        help="per-recipient report of a job from the store; without a job: the cluster's nodes",
    )
    st.add_argument(
        "job_id", nargs="?", help="the job's id, as published (none: live nodes, leases, holds)"
    )
    st.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=_CONFIG_HELP)
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    st.set_defaults(func=cmd_status)

    rep = sub.add_parser(
        "report",
        help="a job's report for people: HTML (one file to open or mail) or CSV",
        description="Write a job's per-member report from the store: who was reached, on which "
        "channel and when, who confirmed, and why the others were not, in plain words. "
        "Exit status: 0 written, 1 no such job, 2 no store or bad configuration.",
    )
    rep.add_argument("job_id", help="the job's id, as published")
    rep.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=_CONFIG_HELP)
    rep.add_argument(
        "--format",
        choices=["html", "csv"],
        default="html",
        help="html: one self-contained page; csv: one row per member and channel "
        "(default: %(default)s)",
    )
    rep.add_argument("-o", "--output", metavar="FILE", help="write here (default: standard output)")
    rep.add_argument(
        "--lang",
        choices=["fr", "nl", "de", "en"],
        default="en",
        help="language of the texts and reasons (default: %(default)s)",
    )
    rep.set_defaults(func=cmd_report)

    pg = sub.add_parser("purge", help="delete finished jobs past retention now")
    pg.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=_CONFIG_HELP)
    pg.add_argument(
        "--older-than-days",
        type=float,
        help="delete finished jobs older than this (default: [store] retention_days)",
    )
    pg.set_defaults(func=cmd_purge)

    sim = sub.add_parser("simulate", help="run a protocol simulator (smsc, asterisk)")
    sim.add_argument(
        "what",
        choices=["smsc", "asterisk"],
        help="smsc: a pretend SMS operator; asterisk: a pretend telephone exchange "
        "(`simulate smsc --help` for its options)",
    )
    sim.add_argument("rest", nargs=argparse.REMAINDER, help="the simulator's options")
    sim.set_defaults(func=cmd_simulate)

    tts = sub.add_parser("tts", help="write what a member would hear to a file")
    tts.add_argument(
        "rest", nargs=argparse.REMAINDER, help='"TEXT" --lang LANG -o FILE (`tts --help`)'
    )
    tts.set_defaults(func=cmd_tts)
    ini = sub.add_parser(
        "init",
        help="write the example configuration, dialplan, unit and broker files into DIR",
    )
    ini.add_argument("dir", metavar="DIR", help="folder to write into (created if missing)")
    ini.add_argument("--force", action="store_true", help="overwrite files that exist")
    ini.set_defaults(func=cmd_init)
    demo = sub.add_parser("demo", help="run the main job end to end on this machine")
    demo.add_argument("rest", nargs="*", help="work directory (default ./demo-state)")
    demo.add_argument(
        "--nodes", type=int, default=1, help="gateway nodes sharing the alert, one killed"
    )
    demo.add_argument(
        "--store-url", help="PostgreSQL for --nodes 2+ (default: $PLP_DEMO_STORE_URL)"
    )
    demo.set_defaults(func=cmd_demo)
    from .directory_cli import add_parser as add_directory

    add_directory(sub, _CONFIG_HELP)
    p.formatter_class = _HelpFormatter
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sign"]:
        # Its options go to gateway.signing.main as they are (argparse would take them here).
        return cmd_sign(argparse.Namespace(rest=argv[1:]))
    if argv[:1] == ["tts"]:
        # Likewise, so that `tts --help` shows the tts options.
        return cmd_tts(argparse.Namespace(rest=argv[1:]))
    args = parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except aiomqtt.MqttError as exc:
        # A command that talks to the broker (send, cancel, watch...) and cannot reach it:
        # one line, no traceback, exit 1 (the broker may come back: worth trying again).
        print(f"plp-gateway {argv[0]}: MQTT broker unreachable: {exc}", file=sys.stderr)
        return int(ExitCode.FAILURE)
    return result


if __name__ == "__main__":
    sys.exit(main())
