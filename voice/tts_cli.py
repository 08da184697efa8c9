"""`plp-gateway tts "text" --lang nl -o out.wav`: write exactly what a member would hear.

Uses the same composition, engines, fallback and telephone conversion as the daemon, so a
coordinator can listen before sending. Nothing is written into the shared sounds directory.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from gateway.config import load_config
from gateway.domain import LANGUAGES, compose_text
from gateway.errors import ConfigError

from .config import VoiceConfig
from .synthesis import Synthesizer
from .tts import TtsFailed

_FORMATS = {
    "wav": "WAV 8000 Hz mono 16-bit",
    "sln": "raw signed linear 8000 Hz mono 16-bit",
    "alaw": "raw A-law 8000 Hz mono",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plp-gateway tts", description="Write the audio a member would hear to a file."
    )
    p.add_argument("text", help="the alert text, as in the job's message")
    p.add_argument("--lang", choices=LANGUAGES, required=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    p.add_argument("--config", help="gateway TOML file (its [voice] section is used)")
    p.add_argument(
        "--engine",
        action="append",
        choices=("espeak", "gtts"),
        help="engine to try (repeat for a fallback order); default: the configuration's",
    )
    p.add_argument("--format", choices=("wav", "sln", "alaw"), help="default: configuration's")
    p.add_argument("--ack", action="store_true", help="add the press-1 prompt")
    p.add_argument("--repeat", type=int, choices=range(4), default=0, metavar="{0..3}")
    p.add_argument("--test", action="store_true", help="a drill: say it is a test")
    p.add_argument("--plp-name", help="who calls (default: configuration's)")
    p.add_argument("--code-word", help="the members' code word (default: configuration's)")
    p.add_argument("--show-text", action="store_true", help="print the exact text spoken")
    return p


def _voice_config(args: argparse.Namespace, sounds_dir: Path) -> VoiceConfig:
    base = load_config(args.config).voice if args.config else VoiceConfig()
    tts_changes: dict[str, object] = {}
    if args.engine:
        tts_changes["engines"] = tuple(dict.fromkeys(args.engine))
        tts_changes["engines_by_lang"] = {}
    if args.format:
        tts_changes["format"] = args.format
    tts = base.tts.model_copy(update=tts_changes)
    return base.model_copy(update={"sounds_dir": sounds_dir, "tts": tts})


async def _render(args: argparse.Namespace, config: VoiceConfig) -> int:
    voice: dict[str, object] = {"ack": args.ack, "repeat": args.repeat}
    if args.plp_name is not None:
        voice["plp_name"] = args.plp_name
    if args.code_word is not None:
        voice["code_word"] = args.code_word
    options = {"voice": voice}
    text = compose_text({args.lang: args.text}, args.lang, test=args.test)
    synth = Synthesizer(config)
    await synth.start()
    try:
        if args.show_text:
            spoken = synth.composed_text(text=text, lang=args.lang, options=options, test=args.test)
            print(spoken)
        rendered = await synth.render(text=text, lang=args.lang, options=options, test=args.test)
    except TtsFailed as exc:
        print(f"tts: no engine could produce the audio: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        await synth.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    shutil.copyfile(rendered.path, tmp)
    tmp.replace(args.output)
    note = " (fallback)" if rendered.fallback_used else ""
    print(
        f"wrote {args.output}: {rendered.duration_s:.1f} s, {_FORMATS[config.tts.format]}, "
        f"engine {rendered.engine}{note}, voice {rendered.voice}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.text.strip():
        print("tts: the text is empty", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="plp-tts-") as workdir:
        try:
            config = _voice_config(args, Path(workdir))
        except ConfigError as exc:
            for file, key, reason in exc.problems:
                print(f"{file}: {key}: {reason}", file=sys.stderr)
            return 2
        return asyncio.run(_render(args, config))


if __name__ == "__main__":
    raise SystemExit(main())
