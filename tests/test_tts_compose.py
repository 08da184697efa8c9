"""What a member hears: the spoken frame per language and the text read like a person would."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.domain import compose_text
from gateway.errors import ConfigError
from voice.compose import (
    DEFAULT_TEMPLATES,
    SpokenOptions,
    compose,
    speakable,
    spoken_options,
    templates_for,
)
from voice.config import TemplateConfig, TtsConfig


def _opts(**kw: object) -> SpokenOptions:
    base = {"plp_name": "", "code_word": "", "repeat": 0, "ack": False}
    return SpokenOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_frame_in_order_with_name_code_repeat_ack_and_drill() -> None:
    text = compose_text({"fr": "Cambriolage rue Neuve."}, "fr", test=True)
    opts = _opts(plp_name="PLP Ixelles", code_word="tournesol", repeat=1, ack=True)
    said = compose(text, "fr", opts, DEFAULT_TEMPLATES["fr"], test=True)
    assert said == (
        "Bonjour, ici PLP Ixelles, avec un message d'alerte. "
        "Le mot de code est : tournesol. "
        "EXERCICE, ceci est un message de test, aucune action requise. Cambriolage rue Neuve. "
        "Je répète. "
        "EXERCICE, ceci est un message de test, aucune action requise. Cambriolage rue Neuve. "
        "Pour confirmer que vous avez bien reçu ce message, appuyez sur la touche 1. "
        "Fin de l'exercice. Aucune action n'est requise."
    )


@pytest.mark.parametrize("lang", ["fr", "nl", "de", "en"])
def test_minimal_frame_in_each_language(lang: str) -> None:
    t = DEFAULT_TEMPLATES[lang]
    said = compose("Alert", lang, _opts(), t, test=False)
    assert said.startswith(t.intro.replace("{plp_name}", t.default_plp_name))
    assert said.endswith("Alert.")
    assert t.ack not in said and t.test_end not in said and t.repeat not in said
    assert "1" in t.ack


def test_repeat_is_capped_and_options_fall_back_to_config() -> None:
    config = TtsConfig(plp_name="BIN Gent-Centrum", code_word="reiger")
    opts = spoken_options({"voice": {"ack": True, "repeat": 9, "plp_name": None}}, config)
    assert opts == SpokenOptions("BIN Gent-Centrum", "reiger", 3, True)
    job = spoken_options({"voice": {"plp_name": "BIN Wetteren", "code_word": "uil"}}, config)
    assert (job.plp_name, job.code_word, job.repeat, job.ack) == ("BIN Wetteren", "uil", 0, False)
    assert spoken_options({}, TtsConfig()) == SpokenOptions("", "", 0, False)
    said = compose("Tekst.", "nl", opts, DEFAULT_TEMPLATES["nl"], test=False)
    assert said.count("Tekst.") == 4 and said.count("Ik herhaal.") == 3


def test_templates_are_configurable_per_language() -> None:
    overrides = {"nl": TemplateConfig(intro="Hier {plp_name}.", ack="Toets 1.")}
    t = templates_for("nl", overrides)
    assert t.intro == "Hier {plp_name}." and t.ack == "Toets 1."
    assert t.repeat == DEFAULT_TEMPLATES["nl"].repeat
    assert templates_for("fr", overrides) == DEFAULT_TEMPLATES["fr"]
    said = compose("X", "nl", _opts(plp_name="BIN Aalst", ack=True), t, test=False)
    assert said == "Hier BIN Aalst. X. Toets 1."


@pytest.mark.parametrize(
    ("lang", "text", "expected"),
    [
        ("fr", "av. Louise n° 16 à 20h30", "avenue Louise numéro 16 à 20 heures 30"),
        ("fr", "bd Anspach, ch. de Waterloo", "boulevard Anspach, chaussée de Waterloo"),
        ("fr", "vers 21:00 ou 1h15", "vers 21 heures ou 1 heure 15"),
        ("fr", "à 2 km, dans 15 min", "à 2 kilomètres, dans 15 minutes"),
        ("fr", "appelez le 0470 12 34 56", "appelez le 0 4 7 0, 1 2, 3 4, 5 6"),
        ("fr", "Le 05/06/2024, note 5: ok, 3,5 km", "Le 05/06/2024, note 5: ok, 3,5 kilomètres"),
        ("nl", "Kerkstr. 5, nr. 7 om 20u30", "Kerkstraat 5, nummer 7 om 20 uur 30"),
        ("nl", "bel 02/555.12.12 z.s.m.", "bel 0 2, 5 5 5, 1 2, 1 2 zo snel mogelijk"),
        ("de", "Hauptstr. 5, Nr. 7 um 20:30 Uhr", "Hauptstraße 5, Nummer 7 um 20 Uhr 30"),
        ("en", "5 Main St. at 20:30, No. 7", "5 Main Street at 20 30, number 7"),
        ("en", "call +32 470 12 34 56", "call plus 3 2, 4 7 0, 1 2, 3 4, 5 6"),
        ("en", "DRILL - this is a test", "DRILL, this is a test"),
    ],
)
def test_text_is_read_sensibly(lang: str, text: str, expected: str) -> None:
    assert speakable(text, lang) == expected


def test_tts_config_keys_through_the_gateway_config() -> None:
    config = parse_config(
        {
            "voice": {
                "sounds_dir": "/srv/sounds/plp",
                "tts": {
                    "engines": ["gtts", "espeak"],
                    "engines_by_lang": {"nl": ["espeak"]},
                    "plp_name": "PLP Namur",
                    "espeak": {"voices": {"fr": "fr"}},
                    "templates": {"de": {"ack": "Taste 1."}},
                },
            }
        }
    )
    tts = config.voice.tts
    assert str(config.voice.sounds_dir) == "/srv/sounds/plp"
    assert tts.engines_for("fr") == ("gtts", "espeak") and tts.engines_for("nl") == ("espeak",)
    assert tts.espeak.voices["fr"] == "fr" and tts.espeak.voices["nl"] == "nl"
    bad_sections: list[dict[str, object]] = [
        {"engines": ["festival"]},
        {"engines": ["espeak", "espeak"]},
        {"engines": []},
        {"templates": {"xx": {}}},
        {"templates": {"fr": {"intro": "{oops}"}}},
        {"leading_silence_ms": -1},
    ]
    for bad in bad_sections:
        with pytest.raises(ConfigError):
            parse_config({"voice": {"tts": bad}})
