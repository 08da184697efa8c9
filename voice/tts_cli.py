"""`plp-gateway tts "text" --lang nl -o out.wav`: write exactly what a member would hear.

Uses the same composition, engines, fallback and telephone conversion as the daemon, so a
coordinator can listen before sending. Nothing is written into the shared sounds directory.
The output's extension picks the file type: the telephone formats Asterisk plays, or MP3 (the
same telephone-quality audio) for listening on any computer or phone.
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

from .audio import AudioError, encode_mp3
from .config import VoiceConfig
from .synthesis import Synthesizer
from .tts import TtsFailed

_FORMATS = {
    "wav": "WAV 8000 Hz mono 16-bit",
    "sln": "raw signed linear 8000 Hz mono 16-bit",
    "alaw": "raw A-law 8000 Hz mono",
}
_MP3 = ".mp3"
# Output extension -> the telephone format rendered (an MP3 is made from the WAV).
_BY_SUFFIX = {".wav": "wav", ".sln": "sln", ".alaw": "alaw", _MP3: "wav"}


class _Refused(ValueError):
    """The command line asks for something this command cannot write."""


def _output_format(output: Path, requested: str | None) -> str | None:
    """The telephone format to render for `output`, or None for the configuration's."""
    suffix = output.suffix.lower()
    if not suffix:
        return requested
    if suffix not in _BY_SUFFIX:
        known = ", ".join(_BY_SUFFIX)
        raise _Refused(f"cannot write {suffix} files: use one of {known}")
    implied = _BY_SUFFIX[suffix]
    if requested is not None and (suffix == _MP3 or requested != implied):
        raise _Refused(f"--format {requested} does not match -o {output.name}: give one of the two")
    return implied


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plp-gateway tts", description="Write the audio a member would hear to a file."
    )
    p.add_argument("text", help="the alert text, as in the job's message")
    p.add_argument("--lang", choices=LANGUAGES, required=True, help="language of the text")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="file to write; its extension picks the type: .mp3 to listen on any computer, "
        ".wav, .sln or .alaw as Asterisk plays them (no extension: --format)",
    )
    p.add_argument("--config", help="gateway TOML file (its [voice] section is used)")
    p.add_argument(
        "--engine",
        action="append",
        choices=("espeak", "gtts"),
        help="engine to try (repeat for a fallback order); default: the configuration's",
    )
    p.add_argument(
        "--format",
        choices=("wav", "sln", "alaw"),
        help="telephone format for an output without extension (default: configuration's)",
    )
    p.add_argument("--ack", action="store_true", help="add the press-1 prompt")
    p.add_argument(
        "--repeat",
        type=int,
        choices=range(4),
        default=0,
        metavar="{0..3}",
        help="say the message again this many times (default: 0)",
    )
    p.add_argument("--test", action="store_true", help="a drill: say it is a test")
    p.add_argument("--plp-name", help="who calls (default: configuration's)")
    p.add_argument("--code-word", help="the members' code word (default: configuration's)")
    p.add_argument("--show-text", action="store_true", help="print the exact text spoken")
    return p


def _voice_config(args: argparse.Namespace, sounds_dir: Path, fmt: str | None) -> VoiceConfig:
    base = load_config(args.config).voice if args.config else VoiceConfig()
    tts_changes: dict[str, object] = {}
    if args.engine:
        tts_changes["engines"] = tuple(dict.fromkeys(args.engine))
        tts_changes["engines_by_lang"] = {}
    if fmt:
        tts_changes["format"] = fmt
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
    kind = _FORMATS[config.tts.format]
    if args.output.suffix.lower() == _MP3:
        kind = "MP3 (telephone audio: 8000 Hz mono)"
        try:
            tmp.write_bytes(
                await encode_mp3(rendered.path.read_bytes(), limit_s=config.tts.convert_timeout)
            )
        except AudioError as exc:
            print(f"tts: cannot write MP3: {exc}", file=sys.stderr)
            tmp.unlink(missing_ok=True)
            return 1
    else:
        shutil.copyfile(rendered.path, tmp)
    tmp.replace(args.output)
    note = " (fallback)" if rendered.fallback_used else ""
    print(
        f"wrote {args.output}: {rendered.duration_s:.1f} s, {kind}, "
        f"engine {rendered.engine}{note}, voice {rendered.voice}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.text.strip():
        print("tts: the text is empty", file=sys.stderr)
        return 2
    try:
        fmt = _output_format(args.output, args.format)
    except _Refused as exc:
        print(f"tts: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="plp-tts-") as workdir:
        try:
            config = _voice_config(args, Path(workdir), fmt)
        except ConfigError as exc:
            for file, key, reason in exc.problems:
                print(f"{file}: {key}: {reason}", file=sys.stderr)
            return 2
        return asyncio.run(_render(args, config))


if __name__ == "__main__":
    raise SystemExit(main())
