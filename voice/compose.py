"""What a member hears: the spoken frame around the alert text, per language.

Pure functions: per-language templates (introduction with the PLP's name and code word,
repetition, press-1 prompt, end of a drill) and a modest rewrite of abbreviations, times and
dialled numbers so that a speech engine reads them as a person would.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from .config import TemplateConfig, TtsConfig


@dataclass(frozen=True)
class Templates:
    intro: str
    default_plp_name: str
    code: str
    repeat: str
    ack: str
    test_end: str


DEFAULT_TEMPLATES: dict[str, Templates] = {
    "fr": Templates(
        intro="Bonjour, ici {plp_name}, avec un message d'alerte.",
        default_plp_name="votre partenariat local de prévention",
        code="Le mot de code est : {code_word}.",
        repeat="Je répète.",
        ack="Pour confirmer que vous avez bien reçu ce message, appuyez sur la touche 1.",
        test_end="Fin de l'exercice. Aucune action n'est requise.",
    ),
    "nl": Templates(
        intro="Goedendag, hier {plp_name}, met een waarschuwing.",
        default_plp_name="uw buurtinformatienetwerk",
        code="Het codewoord is: {code_word}.",
        repeat="Ik herhaal.",
        ack="Druk op de toets 1 om te bevestigen dat u dit bericht hebt ontvangen.",
        test_end="Einde van de oefening. U hoeft niets te doen.",
    ),
    "de": Templates(
        intro="Guten Tag, hier spricht {plp_name} mit einer Warnmeldung.",
        default_plp_name="Ihre kommunale Präventionspartnerschaft",
        code="Das Codewort lautet: {code_word}.",
        repeat="Ich wiederhole.",
        ack="Bitte drücken Sie die Taste 1, um den Empfang dieser Nachricht zu bestätigen.",
        test_end="Ende der Übung. Keine Maßnahme erforderlich.",
    ),
    "en": Templates(
        intro="Hello, this is {plp_name} with an alert.",
        default_plp_name="your local prevention partnership",
        code="The code word is: {code_word}.",
        repeat="I repeat.",
        ack="To confirm that you received this message, press 1.",
        test_end="End of the drill. No action is needed.",
    ),
}


@dataclass(frozen=True)
class SpokenOptions:
    """The per-job choices that change the audio (from `options["voice"]` and config)."""

    plp_name: str
    code_word: str
    repeat: int
    ack: bool


def spoken_options(options: Mapping[str, object], config: TtsConfig) -> SpokenOptions:
    """Read `options["voice"]` (the job's voice options); missing or None keys use config."""
    raw = options.get("voice")
    voice: Mapping[str, object] = raw if isinstance(raw, Mapping) else {}
    plp_name = voice.get("plp_name")
    code_word = voice.get("code_word")
    repeat = voice.get("repeat", 0)
    return SpokenOptions(
        plp_name=plp_name.strip() if isinstance(plp_name, str) else config.plp_name,
        code_word=code_word.strip() if isinstance(code_word, str) else config.code_word,
        repeat=max(0, min(3, repeat)) if isinstance(repeat, int) else 0,
        ack=voice.get("ack") is True,
    )


def templates_for(lang: str, overrides: Mapping[str, TemplateConfig]) -> Templates:
    """Default templates of `lang` with the configured overrides applied."""
    base = DEFAULT_TEMPLATES.get(lang, DEFAULT_TEMPLATES["en"])
    override = overrides.get(lang)
    if override is None:
        return base
    changes = {k: v for k, v in override.model_dump().items() if v is not None}
    return replace(base, **changes)


def compose(text: str, lang: str, opts: SpokenOptions, templates: Templates, *, test: bool) -> str:
    """The exact text spoken to a member. `text` already carries a drill's prefix."""
    name = opts.plp_name or templates.default_plp_name
    parts = [templates.intro.replace("{plp_name}", name).replace("{code_word}", opts.code_word)]
    if opts.code_word:
        parts.append(templates.code.replace("{code_word}", opts.code_word))
    body = speakable(text, lang)
    parts.append(body)
    for _ in range(opts.repeat):
        parts += [templates.repeat, body]
    if opts.ack:
        parts.append(templates.ack)
    if test:
        parts.append(templates.test_end)
    return " ".join(_sentence(p) for p in parts if p.strip())


def _sentence(part: str) -> str:
    """Make sure each piece ends a sentence, so the engine pauses between them."""
    part = part.strip()
    return part if part[-1] in ".!?:;" else part + "."


# --- reading the text aloud ---------------------------------------------------------------

_Rule = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]

_TIME_WORD = {"fr": "heures", "nl": "uur", "de": "Uhr", "en": ""}
_TIME_LETTER = {"fr": "[hH]", "nl": "[uU]"}  # "20h30", "20u30", "20h"
_NUMBER_SIGN = {"fr": "numéro", "nl": "nummer", "de": "Nummer", "en": "number"}


def _time_rule(lang: str) -> _Rule:
    word = _TIME_WORD[lang]
    letter = _TIME_LETTER.get(lang)
    alternatives = r":([0-5]\d)" + (rf"|{letter}([0-5]\d)?" if letter else "")
    # de: "20:30 Uhr" must not become "20 Uhr 30 Uhr".
    tail = r"(?:\s*Uhr\b)?" if lang == "de" else ""
    pattern = re.compile(rf"\b([01]?\d|2[0-3])(?:{alternatives})\b{tail}")

    def say(m: re.Match[str]) -> str:
        hours = m.group(1)
        minutes = m.group(2) or (m.group(3) if letter else None)
        if not word:  # English: "20:30" -> "20 30", "20:00" -> "20 hundred"
            return f"{hours} {minutes}" if minutes and minutes != "00" else f"{hours} hundred"
        unit = "heure" if lang == "fr" and int(hours) <= 1 else word
        if not minutes or minutes == "00":
            return f"{hours} {unit}"
        return f"{hours} {unit} {minutes}"

    return pattern, say


def _word(abbrev: str, full: str, *, flags: int = re.IGNORECASE) -> _Rule:
    """An abbreviation standing as a word of its own (a trailing '.' is part of it)."""
    end = "" if abbrev.endswith(".") else r"\b"
    return re.compile(rf"(?<![\w.]){re.escape(abbrev)}{end}", flags), full


def _unit(abbrev: str, full: str) -> _Rule:
    """A unit right after a number: "15 min" -> "15 minutes"."""
    return re.compile(rf"(\d)\s?{re.escape(abbrev)}\b\.?"), rf"\1 {full}"


_RULES: dict[str, list[_Rule]] = {
    "fr": [
        _word("av.", "avenue"),
        _word("bd", "boulevard"),
        _word("bld", "boulevard"),
        _word("boul.", "boulevard"),
        _word("ch.", "chaussée"),
        _word("chée", "chaussée"),
        _word("pl.", "place"),
        _word("sq.", "square"),
        _word("tél.", "téléphone"),
        _word("env.", "environ"),
        (re.compile(r"\bSte-"), "Sainte-"),
        (re.compile(r"\bSt-"), "Saint-"),
        _unit("min", "minutes"),
        _unit("km", "kilomètres"),
    ],
    "nl": [
        (re.compile(r"(\w)str\.", re.IGNORECASE), r"\1straat"),
        (re.compile(r"(\w)stwg\.?", re.IGNORECASE), r"\1steenweg"),
        _word("str.", "straat"),
        _word("stwg.", "steenweg"),
        _word("nr.", "nummer"),
        _word("tel.", "telefoon"),
        _word("bv.", "bijvoorbeeld"),
        _word("z.s.m.", "zo snel mogelijk"),
        _unit("min", "minuten"),
        _unit("km", "kilometer"),
    ],
    "de": [
        (re.compile(r"(\w)str\.", re.IGNORECASE), r"\1straße"),
        _word("Str.", "Straße"),
        _word("Nr.", "Nummer"),
        _word("Tel.", "Telefon"),
        _word("z.B.", "zum Beispiel"),
        _word("ca.", "circa"),
        _word("usw.", "und so weiter"),
        _unit("min", "Minuten"),
        _unit("km", "Kilometer"),
    ],
    "en": [
        (re.compile(r"(?<=[a-z] )St\.", re.IGNORECASE), "Street"),
        _word("Ave.", "Avenue"),
        _word("Rd.", "Road"),
        (re.compile(r"\bNo\.(?=\s*\d)"), "number"),
        _word("tel.", "telephone"),
        _word("approx.", "approximately"),
        _unit("min", "minutes"),
        _unit("km", "kilometres"),
    ],
}

# "0470 12 34 56", "02/555.12.12": a dialled number is read digit by digit.
_DIALLED = re.compile(
    r"(?<!\d)(?<!\d,)(?:(?:\+\d{2} ?|0)\d{1,3}(?:[ ./]\d{2,3}){2,4}|0\d{8,9})(?!,?\d)"
)
_NUMERO = re.compile(r"\bn°\s*", re.IGNORECASE)
_DASH = re.compile(r"\s+[-\u2013\u2014]\s+")  # hyphen, en dash, em dash


def _digits(m: re.Match[str]) -> str:
    number = m.group(0)
    groups = re.split(r"[ ./]", number.lstrip("+"))
    said = ", ".join(" ".join(g) for g in groups)
    return "plus " + said if number.startswith("+") else said


def speakable(text: str, lang: str) -> str:
    """Rewrite `text` so the engine reads it well in `lang` (unknown languages: unchanged)."""
    if lang not in _RULES:
        return text.strip()
    out = _DASH.sub(", ", text.strip())
    out = _DIALLED.sub(_digits, out)
    out = _NUMERO.sub(_NUMBER_SIGN[lang] + " ", out)
    pattern, say = _time_rule(lang)
    out = pattern.sub(say, out)
    for rule, repl in _RULES[lang]:
        out = rule.sub(repl, out)
    return re.sub(r"\s{2,}", " ", out)
