"""A job's report as one self-contained HTML page (inline CSS, no script, nothing fetched) in
fr, nl, de or en: the summary first, then each member. `plp-gateway report --format html` and
the status page's `/jobs/<id>` serve it. Everything shown is HTML-escaped.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .outcomes import Delivery, MemberCounts, MemberOutcome, MemberStatus
from .reasons import LANGS, describe
from .report import JobReport

LOCAL: ZoneInfo | None
try:
    LOCAL = ZoneInfo("Europe/Brussels")  # the coordinators' time, whatever the server's
except ZoneInfoNotFoundError:  # no tzdata on this system: the server's time
    LOCAL = None

# key -> (fr, nl, de, en)
LABELS: dict[str, tuple[str, str, str, str]] = {
    "title": ("Rapport d'alerte", "Alarmrapport", "Alarmbericht", "Alert report"),
    "summary": (
        "{reached} membres sur {total} atteints ; {ack} ont confirmé (touche 1 ou réponse)",
        "{reached} van {total} leden bereikt; {ack} bevestigden (toets 1 of antwoord)",
        "{reached} von {total} Mitgliedern erreicht; {ack} haben bestätigt (Taste 1 oder Antwort)",
        "reached {reached} of {total} members; {ack} confirmed by pressing 1 or replying",
    ),
    "not_reached_n": (
        "{n} non atteints",
        "{n} niet bereikt",
        "{n} nicht erreicht",
        "{n} not reached",
    ),
    "pending_n": ("{n} en cours", "{n} nog bezig", "{n} laufen noch", "{n} still in progress"),
    "job": ("Alerte", "Alarm", "Alarm", "Alert"),
    "state": ("État", "Status", "Status", "State"),
    "priority": ("Priorité", "Prioriteit", "Priorität", "Priority"),
    "created": ("Créée", "Aangemaakt", "Erstellt", "Created"),
    "finished": ("Terminée", "Beëindigd", "Beendet", "Finished"),
    "member": ("Membre", "Lid", "Mitglied", "Member"),
    "outcome": ("Résultat", "Resultaat", "Ergebnis", "Outcome"),
    "reached_by": ("Atteint par", "Bereikt via", "Erreicht über", "Reached by"),
    "confirmed": ("Confirmé", "Bevestigd", "Bestätigt", "Confirmed"),
    "channels": ("Canaux", "Kanalen", "Kanäle", "Channels"),
    "yes": ("oui", "ja", "ja", "yes"),
    "no": ("non", "nee", "nein", "no"),
    "attempts": ("essais", "pogingen", "Versuche", "attempts"),
    "times": (
        "Heures : heure belge",
        "Tijden: Belgische tijd",
        "Zeiten: belgische Zeit",
        "Times: Belgian time",
    ),
    # member outcomes
    "reached": ("atteint", "bereikt", "erreicht", "reached"),
    "acknowledged": ("confirmé", "bevestigd", "bestätigt", "confirmed"),
    "not_reached": ("non atteint", "niet bereikt", "nicht erreicht", "not reached"),
    "pending": ("en cours", "bezig", "läuft", "in progress"),
    # channels
    "email": ("e-mail", "e-mail", "E-Mail", "e-mail"),
    "sms": ("SMS", "sms", "SMS", "SMS"),
    "voice": ("appel", "oproep", "Anruf", "call"),
    # delivery states
    "st_queued": ("en attente", "in wachtrij", "wartet", "queued"),
    "st_sending": ("envoi", "verzenden", "wird gesendet", "sending"),
    "st_sent": ("envoyé", "verzonden", "gesendet", "sent"),
    "st_retrying": ("nouvel essai prévu", "nieuwe poging gepland", "neuer Versuch", "retrying"),
    "st_delivered": ("remis", "afgeleverd", "zugestellt", "delivered"),
    "st_acknowledged": ("confirmé", "bevestigd", "bestätigt", "confirmed"),
    "st_failed": ("échec", "mislukt", "fehlgeschlagen", "failed"),
    "st_expired": ("expiré", "verlopen", "abgelaufen", "expired"),
    "st_cancelled": ("arrêté", "gestopt", "gestoppt", "stopped"),
    "st_held": ("retenu (heures calmes)", "uitgesteld (rusturen)", "zurückgehalten", "held"),
    "st_capped": ("non envoyé (plafond)", "niet verzonden (maximum)", "nicht gesendet", "capped"),
    "st_unsubscribed": ("désinscrit", "afgemeld", "abgemeldet", "unsubscribed"),
    # job states
    "job_accepted": ("acceptée", "aanvaard", "angenommen", "accepted"),
    "job_running": ("en cours", "bezig", "läuft", "running"),
    "job_done": ("terminée", "afgerond", "abgeschlossen", "done"),
    "job_cancelled": ("annulée", "geannuleerd", "widerrufen", "cancelled"),
    "job_expired": ("expirée", "verlopen", "abgelaufen", "expired"),
    "job_rejected": ("refusée", "geweigerd", "abgelehnt", "rejected"),
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem;color:#1b1f24;
background:#fff;max-width:70rem}
h1{font-size:1.4rem;margin:0 0 .4rem}
.summary{font-size:1.2rem;padding:.8rem 1rem;border-radius:.4rem;background:#eef6ee;
border-left:.4rem solid #2e7d32;margin:.8rem 0}
.summary.partial{background:#fff4e5;border-left-color:#e67e00}
dl.job{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.6rem 0 1rem}
dl.job dt{font-weight:600}dl.job dd{margin:0}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.35rem .5rem;border-bottom:1px solid #d8dee4}
th{background:#f3f5f7}
.acknowledged,.reached{color:#1b5e20}.not_reached{color:#b71c1c;font-weight:600}
.pending{color:#8a6d00}
ul.ch{list-style:none;margin:0;padding:0}ul.ch li{margin:.1rem 0}
.code{color:#57606a;font-size:.85em}.note{color:#57606a;font-size:.85rem;margin-top:1rem}
"""


def label(key: str, lang: str) -> str:
    return LABELS[key][LANGS.index(lang) if lang in LANGS else LANGS.index("en")]


def local_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, LOCAL).strftime("%Y-%m-%d %H:%M:%S")


def summary_text(counts: MemberCounts, lang: str) -> str:
    text = label("summary", lang).format(
        reached=counts.reached, total=counts.total, ack=counts.acknowledged
    )
    if counts.not_reached:
        text += "; " + label("not_reached_n", lang).format(n=counts.not_reached)
    if counts.pending:
        text += "; " + label("pending_n", lang).format(n=counts.pending)
    return text


def _delivery(d: Delivery, lang: str) -> str:
    key = f"st_{d.state.value}"
    state = label(key, lang) if key in LABELS else d.state.value
    parts = [
        f"<b>{escape(label(d.channel, lang) if d.channel in LABELS else d.channel)}</b>",
        escape(d.address),
        escape(state),
    ]
    if d.time is not None:
        parts.append(escape(local_time(d.time)))
    if d.attempts > 1:
        parts.append(f"{d.attempts} {escape(label('attempts', lang))}")
    line = " · ".join(parts)
    if d.reason:
        code = f'<span class="code">({escape(d.reason)})</span>'
        line += f" — {escape(describe(d.reason, lang))} {code}"
    return f"<li>{line}</li>"


def _member(m: MemberOutcome, lang: str) -> str:
    by = ""
    if m.reached_by is not None:
        channel = m.reached_by.channel
        by = f"{escape(label(channel, lang) if channel in LABELS else channel)}, "
        by += escape(local_time(m.reached_by.time))
    confirmed = label("yes" if m.status is MemberStatus.ACKNOWLEDGED else "no", lang)
    channels = "".join(_delivery(d, lang) for d in m.deliveries)
    return (
        f"<tr><td>{escape(m.ref)}</td>"
        f'<td class="{m.status.value}">{escape(label(m.status.value, lang))}</td>'
        f"<td>{by}</td><td>{escape(confirmed)}</td>"
        f'<td><ul class="ch">{channels}</ul></td></tr>'
    )


def render_html(report: JobReport, lang: str = "en") -> str:
    lang = lang if lang in LANGS else "en"
    job, counts = report.job, report.counts
    partial = " partial" if counts.reached < counts.total else ""
    info = [
        ("job", escape(job.id)),
        ("state", escape(label(f"job_{job.state.value}", lang))),
        ("priority", escape(job.priority.label)),
        ("created", escape(local_time(job.created_at))),
    ]
    if job.finished_at is not None:
        info.append(("finished", escape(local_time(job.finished_at))))
    dl = "".join(f"<dt>{escape(label(k, lang))}</dt><dd>{v}</dd>" for k, v in info)
    head = "".join(
        f"<th>{escape(label(k, lang))}</th>"
        for k in ("member", "outcome", "reached_by", "confirmed", "channels")
    )
    rows = "\n".join(_member(m, lang) for m in report.members)
    title = f"{label('title', lang)} {job.id}"
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
        f"<h1>{escape(title)}</h1>\n"
        f'<p class="summary{partial}" id="summary">{escape(summary_text(counts, lang))}</p>\n'
        f'<dl class="job">{dl}</dl>\n'
        f'<table id="members"><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>\n'
        f'<p class="note">{escape(label("times", lang))}</p>\n'
        "</body></html>\n"
    )
