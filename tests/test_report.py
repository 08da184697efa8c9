"""`plp-gateway report` of the demo job (20 members by e-mail, SMS and phone call): the HTML
renders in headless Chromium with the summary first and reasons in plain words; the CSV parses
with the standard library, one row per member and channel. The retained job status and
`status` count members, not deliveries."""

from __future__ import annotations

import csv
import io
import os
import random
import subprocess
import sys
from pathlib import Path

from gateway.demo import sample_job
from gateway.domain import DeliveryState
from gateway.outcomes import Delivery, count_state_sets, member_counts, members
from gateway.reasons import TEXTS, describe, table_key
from tests.browser import dump_dom, needs_chromium, screenshot
from tests.conftest import GatewayFactory
from tests.fixtures import ROOT, Observer
from tests.sms_fixtures import SmscProcess
from tests.voice_fixtures import AsteriskProcess

RULES = ("busy", "no_answer", "congestion", "unreachable", "hung_up_early",
         "not_acknowledged", "failed")  # fmt: skip
JOB = "demo-report-1"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


@needs_chromium
async def test_report_of_the_demo_job(
    gateway: GatewayFactory,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    observer: Observer,
    tmp_path: Path,
) -> None:
    (tmp_path / "sounds").mkdir()
    retry = "".join(f"{rule} = {{ delay = 0.2, max_attempts = 2 }}\n" for rule in RULES)
    proc = gateway(smsc.config() + asterisk.config(tmp_path / "sounds", retry=retry))
    await observer.publish_job(sample_job(JOB, ["email", "sms", "voice"]))
    status = await observer.wait_job(JOB, "done", timeout=180)

    # Every member was reached on some channel, although 15-odd deliveries failed.
    assert status["members"]["total"] == 20
    assert status["members"]["reached"] == 20
    assert status["members"]["not_reached"] == 0
    assert status["totals"].get("failed", 0) > 0
    acked = status["members"]["acknowledged"]
    assert acked >= 1  # the simulated phones ending in 1 press 1

    config = str(proc.config)
    html = tmp_path / "report.html"
    result = _cli("report", JOB, "--format", "html", "-o", str(html), "--lang", "fr", "-c", config)
    assert result.returncode == 0, result.stderr
    text = html.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "<link" not in text

    dom = dump_dom(html.as_uri(), tmp_path / "chromium")
    summary = f"20 membres sur 20 atteints ; {acked} ont confirmé"
    assert summary in dom
    assert dom.index('id="summary"') < dom.index('id="members"')  # the summary comes first
    for i in range(1, 21):
        assert f"m-{i:04d}" in dom
    # Member 10 has a landline: its SMS is refused, in plain French.
    assert describe("number_not_allowed", "fr") in dom
    assert "bram@" not in dom and "+32475001111" not in dom  # addresses are masked
    shot = screenshot(html.as_uri(), tmp_path / "report.png", tmp_path / "chromium")
    assert shot.stat().st_size > 10_000

    result = _cli("report", JOB, "--format", "csv", "-c", config)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    pairs = [(r["ref"], r["channel"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == 60  # one row per member and channel
    assert {r["member"] for r in rows} == {"reached", "acknowledged"}
    # The report and the retained status count members the same way.
    per_member = {r["ref"]: r["member"] for r in rows}
    assert sum(s == "acknowledged" for s in per_member.values()) == acked
    assert all(r["updated_at"].endswith("Z") for r in rows)
    landline = next(r for r in rows if r["ref"] == "m-0010" and r["channel"] == "sms")
    assert landline["reason"] == "number_not_allowed"
    assert landline["reason_text"] == describe("number_not_allowed", "en")

    result = _cli("status", JOB, "-c", config)
    assert "members: reached 20 of 20" in result.stdout

    assert _cli("report", "no-such-job", "-c", config).returncode == 1


def test_member_counts_from_state_sets_agree_with_member_outcomes() -> None:
    rng = random.Random(15)
    deliveries = [
        Delivery(f"m-{i}", channel, "-", rng.choice(list(DeliveryState)))
        for i in range(300)
        for channel in rng.sample(["email", "sms", "voice"], rng.randint(1, 3))
    ]
    sets: dict[frozenset[DeliveryState], int] = {}
    for m in members(deliveries):
        key = frozenset(d.state for d in m.deliveries)
        sets[key] = sets.get(key, 0) + 1
    assert count_state_sets(sets.items()) == member_counts(members(deliveries))


def test_every_reason_code_has_a_text_in_each_language() -> None:
    for code, texts in TEXTS.items():
        assert len(texts) == 4 and all(texts), code
    for code in ("smtp_550", "smtp_451", "UNDELIV:005", "ESME_RSYSERR", "prepare_failed: OSError",
                 "possibly_sent", "link_down", "no_answer", "busy", "channel_disabled"):  # fmt: skip
        assert table_key(code) is not None, code
    assert describe("smtp_550", "nl") == TEXTS["smtp_5xx"][1]
    assert describe("something_new", "de") == "something_new"
