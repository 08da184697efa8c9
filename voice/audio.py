"""Telephone audio: decode any engine output to 8 kHz mono 16-bit, level it, write it atomically.

ffmpeg decodes and resamples (with a proper anti-alias filter); pydub levels the loudness and
adds the silences; files are named by a content hash and removed by `cleanup` after retention.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Collection
from pathlib import Path

from pydub import AudioSegment

from .pipe import run_piped

with warnings.catch_warnings():
    # Deprecated in 3.11, gone in 3.13 (then: the audioop-lts package); pydub needs it too.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger(__name__)

RATE = 8000
SAMPLE_WIDTH = 2
EXTENSIONS: dict[str, str] = {"wav": ".wav", "sln": ".sln", "alaw": ".alaw"}
PREFIX = "plp-"
_WAV_HEADER = 44
_MIN_DURATION_MS = 200


class AudioError(ValueError):
    """The engine's output could not be turned into telephone audio."""


def audio_name(*, engine: str, voice: str, lang: str, text: str, fmt: str, profile: str) -> str:
    """File stem for this audio: `plp-<lang>-<hash>`; `profile` covers processing settings."""
    key = "\x00".join((engine, voice, lang, fmt, profile, text))
    return f"{PREFIX}{lang}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


async def decode(data: bytes, *, limit_s: float, ffmpeg: str | None = None) -> bytes:
    """Any audio container (WAV, MP3...) -> raw 8 kHz mono s16le PCM, through ffmpeg."""
    binary = ffmpeg or str(AudioSegment.converter)
    argv = [binary, "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-vn"]
    argv += ["-ac", "1", "-ar", str(RATE), "-acodec", "pcm_s16le", "-f", "s16le", "pipe:1"]
    try:
        status, out, err = await run_piped(argv, data, limit_s)
    except TimeoutError:
        raise AudioError(f"ffmpeg took longer than {limit_s:g} s") from None
    except OSError as exc:
        raise AudioError(f"cannot run {binary}: {exc.strerror or exc}") from exc
    if status != 0:
        raise AudioError(f"ffmpeg exit {status}: {err.decode(errors='replace')[:200]}")
    return out


async def encode_mp3(wav: bytes, *, limit_s: float, ffmpeg: str | None = None) -> bytes:
    """A WAV file -> the same audio as MP3, through ffmpeg (for listening, not for Asterisk)."""
    binary = ffmpeg or str(AudioSegment.converter)
    argv = [binary, "-hide_banner", "-loglevel", "error", "-f", "wav", "-i", "pipe:0", "-vn"]
    argv += ["-codec:a", "libmp3lame", "-q:a", "4", "-f", "mp3", "pipe:1"]
    try:
        status, out, err = await run_piped(argv, wav, limit_s)
    except TimeoutError:
        raise AudioError(f"ffmpeg took longer than {limit_s:g} s") from None
    except OSError as exc:
        raise AudioError(f"cannot run {binary}: {exc.strerror or exc}") from exc
    if status != 0 or not out:
        raise AudioError(f"ffmpeg exit {status}: {err.decode(errors='replace')[:200]}")
    return out


def telephone_segment(
    pcm: bytes,
    *,
    leading_silence_ms: int,
    trailing_silence_ms: int,
    target_dbfs: float,
    peak_dbfs: float,
) -> AudioSegment:
    """Level raw 8 kHz PCM to `target_dbfs` RMS (peaks capped) and frame it with silence."""
    pcm = pcm[: len(pcm) - len(pcm) % SAMPLE_WIDTH]
    seg = AudioSegment(data=pcm, sample_width=SAMPLE_WIDTH, frame_rate=RATE, channels=1)
    if len(seg) < _MIN_DURATION_MS or seg.rms == 0:
        raise AudioError(f"no speech in the engine's output ({len(seg)} ms)")
    gain = min(target_dbfs - seg.dBFS, peak_dbfs - seg.max_dBFS)
    seg = seg.apply_gain(gain)
    lead = AudioSegment.silent(duration=leading_silence_ms, frame_rate=RATE)
    trail = AudioSegment.silent(duration=trailing_silence_ms, frame_rate=RATE)
    out: AudioSegment = (lead + seg + trail).set_sample_width(SAMPLE_WIDTH)
    return out


def encode(seg: AudioSegment, fmt: str) -> bytes:
    """Bytes of the file Asterisk plays: WAV (slin in RIFF), raw `.sln`, or raw A-law."""
    raw: bytes = seg.raw_data
    if fmt == "sln":
        return raw
    if fmt == "alaw":
        return audioop.lin2alaw(raw, SAMPLE_WIDTH)
    if fmt == "wav":
        buf = io.BytesIO()
        seg.export(buf, format="wav")
        return buf.getvalue()
    raise AudioError(f"unknown audio format {fmt!r}")


def duration_of(size: int, fmt: str) -> float:
    """Seconds of audio in a file of `size` bytes written by `encode`."""
    if fmt == "alaw":
        return size / RATE
    payload = size - _WAV_HEADER if fmt == "wav" else size
    return max(0, payload) / (RATE * SAMPLE_WIDTH)


#: Audio files: the service user and, by group, the local Asterisk; no one else.
FILE_MODE = 0o640
#: A sounds directory the gateway creates itself (an existing one, e.g. 2750 of group
#: asterisk as operations.md shows, keeps its mode and group).
DIR_MODE = 0o750


def remove(paths: Collection[Path]) -> int:
    """Delete these audio files (those of purged jobs); count the ones that were there."""
    removed = 0
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader (Asterisk) never sees a partial file."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # Asterisk runs as another user: it reads by group (a setgid directory of group
        # asterisk gives the file that group). The alert text is personal: never 0644,
        # whatever the umask.
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cleanup(
    directory: Path, *, max_age_s: float, keep: Collection[Path] = (), now: float | None = None
) -> int:
    """Delete our audio files not modified for `max_age_s` and not in `keep`; count them.

    Leftover temporary files older than an hour (a crash mid-write) go as well.
    """
    now = time.time() if now is None else now
    kept = {p.resolve() for p in keep}
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        ours = entry.name.startswith(PREFIX) and Path(entry.name).suffix in EXTENSIONS.values()
        temp = entry.name.startswith(".tmp-")
        if not (ours or temp):
            continue
        limit = 3600.0 if temp else max_age_s
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age <= limit or Path(entry.path).resolve() in kept:
                continue
            os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("tts: retention removed %d audio file(s) from %s", removed, directory)
    return removed
