"""Benchmark: time to make the telephone audio of a ~300-character alert, per engine and
language, cold (synthesis + conversion + write) and cached (in memory; on disk after a restart).

gTTS runs against a local HTTP stand-in for its service (serving espeak-made MP3), so its
figures are the gateway's own overhead (threads, HTTP, MP3 decode), not Google's latency.

    .venv/bin/python bench/bench_tts.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tts_fixtures import GttsStub, gtts_parts, gtts_pointed_at, make_mp3
from voice.compose import compose, spoken_options, templates_for
from voice.config import TtsConfig, VoiceConfig
from voice.synthesis import Synthesizer

ALERTS = {
    "fr": (
        "Alerte de votre PLP : un cambriolage est en cours avenue Louise n° 16 à Ixelles. "
        "Deux individus en veste sombre, l'un avec un sac à dos rouge, ont été vus vers 20h30 "
        "près du parc. Fermez vos portes et fenêtres, ne sortez pas et appelez le 101 si vous "
        "voyez quelque chose de suspect. Merci de votre vigilance."
    ),
    "nl": (
        "Waarschuwing van uw BIN: er is een inbraak bezig in de Kerkstr. 16 in Zonnebeke. "
        "Twee personen in donkere jassen, een van hen met een rode rugzak, werden rond 20u30 "
        "gezien bij het park. Sluit deuren en ramen, blijf binnen en bel 101 als u iets "
        "verdachts ziet. Bedankt voor uw waakzaamheid."
    ),
    "de": (
        "Warnung Ihrer KPP: In der Hauptstr. 16 in Eupen findet gerade ein Einbruch statt. "
        "Zwei Personen in dunklen Jacken, eine davon mit rotem Rucksack, wurden gegen 20:30 Uhr "
        "am Park gesehen. Schließen Sie Türen und Fenster, bleiben Sie im Haus und rufen Sie "
        "bei Verdacht die 101 an. Danke."
    ),
    "en": (
        "Alert from your local prevention partnership: a burglary is in progress at 16 Louise "
        "Ave. in Ixelles. Two people in dark jackets, one with a red backpack, were seen near "
        "the park around 20:30. Close doors and windows, stay inside and call 101 if you see "
        "anything suspicious. Thank you for your vigilance."
    ),
}
ESPEAK_VOICES = {"fr": "fr-be", "nl": "nl", "de": "de", "en": "en-gb"}


async def measure(engine: str, lang: str, rounds: int, tmp: Path) -> dict[str, list[float]]:
    """One running synthesizer; each round a new alert (cold), then the same again (cached)."""
    times: dict[str, list[float]] = {"engine": [], "cold": [], "memory": [], "disk": []}
    config = VoiceConfig(sounds_dir=tmp, tts=TtsConfig(engines=(engine,)))
    texts = [f"{ALERTS[lang]} ({i + 1})" for i in range(rounds)]
    synth = Synthesizer(config)
    audio_s = 0.0
    try:
        await synth.render(text="Warm-up.", lang=lang, options={}, test=False)
        for text in texts:
            t0 = time.perf_counter()
            got = await synth.render(text=text, lang=lang, options={}, test=False)
            times["cold"].append(time.perf_counter() - t0)
            assert got.engine == engine and not got.cached
            audio_s = got.duration_s
            t0 = time.perf_counter()
            await synth.render(text=text, lang=lang, options={}, test=False)
            times["memory"].append(time.perf_counter() - t0)
            spoken = synth.composed_text(text=text, lang=lang, options={}, test=False)
            t0 = time.perf_counter()
            await synth._engines[engine].synthesize(spoken, lang)
            times["engine"].append(time.perf_counter() - t0)
    finally:
        await synth.stop()
    restarted = Synthesizer(config)
    try:
        for text in texts:
            t0 = time.perf_counter()
            again = await restarted.render(text=text, lang=lang, options={}, test=False)
            times["disk"].append(time.perf_counter() - t0)
            assert again.cached
        assert restarted.stats()["syntheses"] == 0
    finally:
        await restarted.stop()
    times["audio_s"] = [audio_s]
    return times


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"alert lengths: {', '.join(f'{k}={len(v)}' for k, v in ALERTS.items())} characters")
    print(f"median of {args.rounds} alerts, milliseconds; 'engine' = the engine's part of 'cold'")
    columns = ("audio s", "engine", "cold", "memory", "disk")
    print(f"{'engine':7} {'lang':4} " + " ".join(f"{c:>8}" for c in columns))
    for engine in ("espeak", "gtts"):
        for lang, alert in ALERTS.items():
            stub = None
            if engine == "gtts":
                voice = ESPEAK_VOICES[lang]
                # Each part gTTS asks for gets speech of that part, as the real service does.
                texts = [f"{alert} ({i + 1})" for i in range(args.rounds)] + ["Warm-up."]
                parts: dict[str, bytes] = {}
                for text in texts:
                    spoken = compose(
                        text,
                        lang,
                        spoken_options({}, TtsConfig()),
                        templates_for(lang, {}),
                        test=False,
                    )
                    for part in gtts_parts(spoken, lang):
                        parts.setdefault(part, make_mp3(part, voice))
                stub = GttsStub(make_mp3("stub", voice), parts=parts)
                stub.start()
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    if stub is not None:
                        with gtts_pointed_at(stub):
                            t = await measure(engine, lang, args.rounds, Path(tmp))
                    else:
                        t = await measure(engine, lang, args.rounds, Path(tmp))
                finally:
                    if stub is not None:
                        stub.stop()
            print(
                f"{engine:7} {lang:4} {t['audio_s'][0]:8.1f} {ms(t['engine'])} {ms(t['cold'])} "
                f"{ms(t['memory'])} {ms(t['disk'])}"
            )


if __name__ == "__main__":
    asyncio.run(main())
