"""Reason codes in plain words, in the members' languages (fr, nl, de, en), for people.

The gateway reports machine codes (`smtp_550`, `number_not_allowed`, `UNDELIV:005`, ...) on
MQTT and in the store; the report and the status page show these sentences instead, with the
code beside them. A code not in the table is shown as it is.
"""

from __future__ import annotations

import re

LANGS = ("fr", "nl", "de", "en")

# code -> (fr, nl, de, en). Every code a delivery can end or retry with (grep the channels).
TEXTS: dict[str, tuple[str, str, str, str]] = {
    # whichever channel
    "link_down": (
        "liaison avec l'opérateur interrompue",
        "verbinding met de operator onderbroken",
        "Verbindung zum Anbieter unterbrochen",
        "connection to the provider was down",
    ),
    "possibly_sent": (
        "peut-être envoyé (pas de confirmation de l'opérateur)",
        "mogelijk verzonden (geen bevestiging van de operator)",
        "möglicherweise gesendet (keine Bestätigung des Anbieters)",
        "possibly sent (no confirmation from the provider)",
    ),
    "interrupted": (
        "interrompu par un redémarrage de la passerelle",
        "onderbroken door een herstart van de gateway",
        "durch einen Neustart des Gateways unterbrochen",
        "interrupted by a gateway restart",
    ),
    "expired": (
        "alerte expirée avant l'envoi",
        "alarm verlopen vóór verzending",
        "Alarm vor dem Versand abgelaufen",
        "the alert expired before it could be sent",
    ),
    "cancelled": (
        "alerte annulée",
        "alarm geannuleerd",
        "Alarm widerrufen",
        "the alert was cancelled",
    ),
    "acknowledged": (
        "plus nécessaire : le membre a confirmé par un autre canal",
        "niet meer nodig: het lid bevestigde via een ander kanaal",
        "nicht mehr nötig: das Mitglied hat über einen anderen Kanal bestätigt",
        "no longer needed: the member confirmed on another channel",
    ),
    "internal_error": (
        "erreur interne de la passerelle",
        "interne fout van de gateway",
        "interner Fehler des Gateways",
        "internal gateway error",
    ),
    "prepare_failed": (
        "préparation du message impossible",
        "bericht kon niet worden voorbereid",
        "Nachricht konnte nicht vorbereitet werden",
        "the message could not be prepared",
    ),
    "channel_disabled": (
        "canal désactivé sur cette passerelle",
        "kanaal uitgeschakeld op deze gateway",
        "Kanal auf diesem Gateway deaktiviert",
        "channel disabled on this gateway",
    ),
    # members' own choices (the PLP directory)
    "quiet_hours": (
        "en attente de la fin des heures calmes du membre",
        "wacht op het einde van de rusturen van het lid",
        "wartet auf das Ende der Ruhezeit des Mitglieds",
        "waiting for the end of the member's quiet hours",
    ),
    "daily_cap": (
        "plafond quotidien de messages non urgents atteint",
        "dagelijks maximum aan niet-dringende berichten bereikt",
        "Tageshöchstzahl nicht dringender Nachrichten erreicht",
        "the member's daily cap of non-urgent messages was reached",
    ),
    "unsubscribed": (
        "le membre s'est désinscrit (STOP)",
        "het lid heeft zich afgemeld (STOP)",
        "das Mitglied hat sich abgemeldet (STOP)",
        "the member unsubscribed (STOP)",
    ),
    # addresses
    "missing_email": (
        "pas d'adresse e-mail",
        "geen e-mailadres",
        "keine E-Mail-Adresse",
        "no e-mail address",
    ),
    "missing_phone": (
        "pas de numéro de téléphone",
        "geen telefoonnummer",
        "keine Telefonnummer",
        "no phone number",
    ),
    "invalid_email": (
        "adresse e-mail invalide",
        "ongeldig e-mailadres",
        "ungültige E-Mail-Adresse",
        "invalid e-mail address",
    ),
    "invalid_phone": (
        "numéro de téléphone invalide",
        "ongeldig telefoonnummer",
        "ungültige Telefonnummer",
        "invalid phone number",
    ),
    "invalid_number": (
        "numéro inexistant selon l'opérateur",
        "nummer bestaat niet volgens de operator",
        "Nummer existiert laut Anbieter nicht",
        "the network says the number does not exist",
    ),
    "number_not_allowed": (
        "numéro non autorisé pour ce canal (ex. un fixe pour un SMS)",
        "nummer niet toegestaan voor dit kanaal (bv. een vaste lijn voor sms)",
        "Nummer für diesen Kanal nicht erlaubt (z. B. Festnetz für SMS)",
        "number not allowed on this channel (e.g. a landline for SMS)",
    ),
    "not_mobile": (
        "pas un numéro de GSM",
        "geen gsm-nummer",
        "keine Mobilnummer",
        "not a mobile number",
    ),
    # e-mail
    "smtp_4xx": (
        "serveur de messagerie temporairement indisponible",
        "mailserver tijdelijk niet beschikbaar",
        "Mailserver vorübergehend nicht verfügbar",
        "mail server temporarily unavailable",
    ),
    "smtp_5xx": (
        "refusé par le serveur de messagerie (adresse inconnue ou bloquée)",
        "geweigerd door de mailserver (onbekend of geblokkeerd adres)",
        "vom Mailserver abgelehnt (unbekannte oder gesperrte Adresse)",
        "refused by the mail server (unknown or blocked address)",
    ),
    "smtp_timeout": (
        "le serveur de messagerie ne répond pas",
        "de mailserver antwoordt niet",
        "der Mailserver antwortet nicht",
        "the mail server did not answer in time",
    ),
    "smtp_unreachable": (
        "serveur de messagerie injoignable",
        "mailserver onbereikbaar",
        "Mailserver nicht erreichbar",
        "mail server unreachable",
    ),
    "smtp_auth_failed": (
        "connexion au serveur de messagerie refusée (identifiants)",
        "aanmelding bij de mailserver geweigerd",
        "Anmeldung am Mailserver abgelehnt",
        "the mail server refused the gateway's login",
    ),
    "smtp_error": (
        "erreur du serveur de messagerie",
        "fout van de mailserver",
        "Fehler des Mailservers",
        "mail server error",
    ),
    # SMS
    "too_long": (
        "SMS trop long",
        "sms te lang",
        "SMS zu lang",
        "SMS too long",
    ),
    "partially_sent": (
        "SMS envoyé en partie seulement",
        "sms slechts gedeeltelijk verzonden",
        "SMS nur teilweise gesendet",
        "SMS only partly sent",
    ),
    "sms_undelivered": (
        "SMS non remis selon l'opérateur",
        "sms niet afgeleverd volgens de operator",
        "SMS laut Anbieter nicht zugestellt",
        "the operator could not deliver the SMS",
    ),
    "sms_refused": (
        "SMS refusé par l'opérateur",
        "sms geweigerd door de operator",
        "SMS vom Anbieter abgelehnt",
        "the operator refused the SMS",
    ),
    "sms_expired": (
        "SMS expiré chez l'opérateur (téléphone éteint ?)",
        "sms verlopen bij de operator (telefoon uit?)",
        "SMS beim Anbieter abgelaufen (Telefon aus?)",
        "the SMS expired at the operator (phone off?)",
    ),
    "ESME_RTHROTTLED": (
        "opérateur SMS saturé, nouvel essai",
        "sms-operator overbelast, nieuwe poging",
        "SMS-Anbieter überlastet, neuer Versuch",
        "SMS operator busy, trying again",
    ),
    "ESME_RINVDSTADR": (
        "numéro refusé par l'opérateur SMS",
        "nummer geweigerd door de sms-operator",
        "Nummer vom SMS-Anbieter abgelehnt",
        "the SMS operator refused the number",
    ),
    "esme": (
        "refusé par l'opérateur SMS",
        "geweigerd door de sms-operator",
        "vom SMS-Anbieter abgelehnt",
        "refused by the SMS operator",
    ),
    # voice
    "busy": ("ligne occupée", "lijn bezet", "besetzt", "line busy"),
    "no_answer": ("pas de réponse", "niet opgenomen", "keine Antwort", "no answer"),
    "congestion": (
        "réseau téléphonique saturé",
        "telefoonnet overbelast",
        "Telefonnetz überlastet",
        "phone network congested",
    ),
    "unreachable": (
        "injoignable (éteint ou hors couverture)",
        "onbereikbaar (uitgeschakeld of geen bereik)",
        "nicht erreichbar (ausgeschaltet oder kein Netz)",
        "unreachable (switched off or no coverage)",
    ),
    "hung_up_early": (
        "a raccroché avant la fin du message",
        "hing op vóór het einde van het bericht",
        "hat vor dem Ende der Nachricht aufgelegt",
        "hung up before the end of the message",
    ),
    "not_acknowledged": (
        "a écouté sans appuyer sur 1",
        "luisterde zonder op 1 te drukken",
        "hat zugehört, ohne 1 zu drücken",
        "listened without pressing 1",
    ),
    "call_lost": (
        "appel perdu (liaison avec le central interrompue)",
        "oproep verloren (verbinding met de centrale onderbroken)",
        "Anruf verloren (Verbindung zur Telefonanlage unterbrochen)",
        "call lost (connection to the exchange was down)",
    ),
    "failed": ("échec de l'appel", "oproep mislukt", "Anruf fehlgeschlagen", "the call failed"),
    "ami_down": (
        "central téléphonique injoignable",
        "telefooncentrale onbereikbaar",
        "Telefonanlage nicht erreichbar",
        "telephone exchange unreachable",
    ),
    "tts_failed": (
        "synthèse vocale impossible",
        "spraaksynthese mislukt",
        "Sprachsynthese fehlgeschlagen",
        "text-to-speech failed",
    ),
    "no_voice": (
        "pas de voix pour cette langue",
        "geen stem voor deze taal",
        "keine Stimme für diese Sprache",
        "no voice for this language",
    ),
    "timeout": ("délai dépassé", "time-out", "Zeitüberschreitung", "timed out"),
    "unavailable": (
        "service indisponible",
        "dienst niet beschikbaar",
        "Dienst nicht verfügbar",
        "service unavailable",
    ),
    "http_error": (
        "erreur du service de synthèse vocale",
        "fout van de spraakdienst",
        "Fehler des Sprachdienstes",
        "text-to-speech service error",
    ),
}

# SMSC delivery receipt statuses (`UNDELIV`, `UNDELIV:005`, ...) and their table entry.
_RECEIPTS = {
    "UNDELIV": "sms_undelivered",
    "REJECTD": "sms_refused",
    "EXPIRED": "sms_expired",
    "DELETED": "sms_refused",
    "UNKNOWN": "sms_undelivered",
}
_SMTP = re.compile(r"^smtp_([45])\d\d$")


def table_key(code: str) -> str | None:
    """The entry of TEXTS that explains `code`, or None."""
    base = code.split(":", 1)[0].strip()  # `prepare_failed: OSError`, `UNDELIV:005`
    if base in TEXTS:
        return base
    smtp = _SMTP.match(base)
    if smtp:
        return f"smtp_{smtp.group(1)}xx"
    if base in _RECEIPTS:
        return _RECEIPTS[base]
    if base.startswith("ESME_"):
        return "esme"
    return None


def describe(code: str | None, lang: str = "en") -> str:
    """`code` in plain words in `lang` (fr, nl, de, en); an unknown code as it is."""
    if not code:
        return ""
    key = table_key(code)
    if key is None:
        return code
    return TEXTS[key][LANGS.index(lang) if lang in LANGS else LANGS.index("en")]
