"""Shared pieces for the TTS tests and bench: a local stand-in for gTTS's HTTP service,
an MP3 made with espeak-ng + ffmpeg, audio measurements and small builders.
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import math
import subprocess
import threading
import time
import urllib.parse
import wave
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import gtts.tts

from gateway.domain import Job, Priority, Recipient

T = TypeVar("T")
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def gtts_parts(text: str, lang: str) -> list[str]:
    """The text parts gTTS sends, one request each (it splits at about 100 characters)."""
    parts: list[str] = gtts.tts.gTTS(text, lang=lang, lang_check=False)._tokenize(text)
    return parts


def make_mp3(text: str = "This is the stub speaking.", voice: str = "en-gb") -> bytes:
    """An MP3 of real speech (espeak-ng piped through ffmpeg), as gTTS's service returns."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True, timeout=30
    ).stdout
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "mp3", "pipe:1"],
        input=wav,
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout


class GttsStub:
    """A threaded HTTP server answering gTTS's batchexecute POSTs on 127.0.0.1:<free port>.

    `mode`: "ok" (serves `mp3`, or `parts[text]` for the text part gTTS asked for),
    "slow" (answers only after `release` or 30 s), "error" (HTTP 500).
    Counts requests in `requests`; the text parts received are in `texts`.
    """

    def __init__(self, mp3: bytes, mode: str = "ok", parts: dict[str, bytes] | None = None) -> None:
        self.mp3 = mp3
        self.mode = mode
        self.parts = parts or {}
        self.texts: list[str] = []
        self.requests = 0
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                rpc = json.loads(form["f.req"][0])
                text = json.loads(rpc[0][0][1])[0]
                stub.texts.append(text)
                stub.requests += 1
                if stub.mode == "slow":
                    stub.release.wait(30)
                if stub.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    return
                mp3 = stub.parts.get(text, stub.mp3)
                payload = json.dumps([base64.b64encode(mp3).decode("ascii")])
                rpc = ["wrb.fr", "jQ1olc", payload, None, None, None, "generic"]
                line = json.dumps(rpc, separators=(",", ":"))
                body = f")]}}'\n\n[{line}]\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def gtts_pointed_at(stub: GttsStub) -> Iterator[None]:
    """Send gTTS's requests to `stub` (the seam: `gtts.tts._translate_url`), no proxies."""
    saved = gtts.tts._translate_url
    gtts.tts._translate_url = lambda tld="com", path="": f"{stub.url}/{path}"
    try:
        yield
    finally:
        gtts.tts._translate_url = saved


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    width: int
    samples: array.array[int]

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate

    def rms_dbfs(self, start_s: float = 0.0, end_s: float | None = None) -> float:
        lo = int(start_s * self.rate)
        hi = len(self.samples) if end_s is None else int(end_s * self.rate)
        part = self.samples[lo:hi]
        if not part:
            return -math.inf
        mean = sum(s * s for s in part) / len(part)
        return -math.inf if mean == 0 else 20 * math.log10(math.sqrt(mean) / 32768)

    def leading_silence(self, threshold: int = 64) -> float:
        """Seconds before the first sample louder than `threshold`."""
        for i, s in enumerate(self.samples):
            if abs(s) > threshold:
                return i / self.rate
        return self.duration


def read_wav(path: Path) -> WavInfo:
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        frames = w.readframes(w.getnframes())
    samples = array.array("h")
    samples.frombytes(frames)
    return WavInfo(rate, channels, width, samples)


def voice_job(
    job_id: str, counts: dict[str, int], *, others: int = 0, test: bool = False, **options: Any
) -> Job:
    """A job with `counts[lang]` voice recipients per language and `others` e-mail-only ones."""
    recipients: list[Recipient] = []
    for lang, n in counts.items():
        for _ in range(n):
            i = len(recipients)
            phone = f"+3247{i:07d}"
            recipients.append(Recipient(i, f"m{i}", lang, ("voice",), phone, None))
    for _ in range(others):
        i = len(recipients)
        recipients.append(Recipient(i, f"m{i}", "de", ("email",), None, f"m{i}@example.be"))
    message = {
        "fr": "Cambriolage en cours rue de la Loi 16. Fermez portes et fenêtres.",
        "nl": "Inbraak bezig in de Wetstraat 16. Sluit deuren en ramen.",
        "de": "Einbruch in der Gesetzstraße 16. Schließen Sie Türen und Fenster.",
        "en": "Burglary in progress at 16 Law Street. Close doors and windows.",
    }
    return Job(
        id=job_id,
        priority=Priority.HOT,
        test=test,
        message=message,
        subject={},
        channels=("voice", "email"),
        recipients=tuple(recipients),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        options={"voice": options} if options else {},
    )


async def with_loop_lag(work: Awaitable[T], tick: float = 0.005) -> tuple[T, float, float]:
    """Run `work` while a ticker measures the event loop: (result, max lag, seconds taken)."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.monotonic()
            await asyncio.sleep(tick)
            lags.append(time.monotonic() - before - tick)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        result = await work
    finally:
        took = time.monotonic() - started
        done.set()
        await task
    return result, max(lags, default=0.0), took
