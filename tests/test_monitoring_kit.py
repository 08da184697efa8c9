"""The monitoring kit against what a running gateway really exports: every metric the Grafana
dashboard (configs/grafana/) and the alert rules (configs/prometheus/) query is on `/metrics`;
the rules pass promtool; the exposition has no `_created` twins, counters typed as counters
and queue states apart from priorities."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.domain import Priority
from gateway.metrics import is_counter_field
from gateway.queues import ChannelQueue
from gateway.simulator_process import free_port
from tests.conftest import GatewayFactory
from tests.fixtures import ROOT, Observer, SmtpServer, members
from tests.sms_fixtures import SmscProcess
from tests.test_metrics import http_get
from tests.voice_fixtures import AsteriskProcess, member, voice_job

DASHBOARD = ROOT / "configs" / "grafana" / "plp-gateway.json"
RULES_DIR = ROOT / "configs" / "prometheus"
RULES = RULES_DIR / "plp-gateway.rules.yml"
RULES_TESTS = RULES_DIR / "plp-gateway.rules.test.yml"
# Series Prometheus makes itself for every target, not the gateway.
PROMETHEUS_SERIES = frozenset({"up"})
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}

# -- PromQL: the metric names and label matchers of an expression ----------------------------
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")


def promql_selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """`(metric name, {label: matched value})` for every series selector in `expr`."""
    found: list[tuple[str, dict[str, str]]] = []
    text = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries: [5m], [$__rate_interval]

    def selector(m: re.Match[str]) -> str:
        labels = {k: v for k, _, v in _MATCHER.findall(m.group(2))}
        name = m.group(1) or labels.pop("__name__", "")
        found.append((name, labels))
        return " "

    text = _SELECTOR.sub(selector, text)
    text = _STRING.sub(" ", text)  # label_replace() arguments and the like
    text = _GROUPING.sub(" ", text)
    for name in _IDENT.findall(text):
        if name.lower() not in _KEYWORDS:
            found.append((name, {}))
    return found


def test_promql_selectors_are_found_in_every_form() -> None:
    def names(expr: str) -> list[str]:
        return [name for name, _ in promql_selectors(expr)]

    assert names("rate(x_total[5m])") == ["x_total"]
    assert names("histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))") == ["x_bucket"]
    assert promql_selectors('sum by (a, b) (y{a="1",b=~"x|y"} offset 5m) > 0') == [
        ("y", {"a": "1", "b": "x|y"})
    ]
    assert names("a / on (c) group_left (d) b and c > bool 1 unless d_total offset 1h") == [
        "a",
        "b",
        "c",
        "d_total",
    ]
    assert names('{__name__="z", k!="v"}') == ["z"]
    assert names('label_replace(w, "dst", "$1", "src", "(.*)")') == ["w"]
    assert names("max_over_time(deriv(q[10m:1m])[1h:]) * 60") == ["q"]


def dashboard_exprs() -> list[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in panels(board["panels"]) for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":  # label_values(metric, label)
            metric = re.search(r"label_values\((\w+)", var["definition"])
            assert metric is not None, var
            exprs.append(metric.group(1))
    return exprs


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_dashboard_is_importable_anywhere() -> None:
    """No data source of the machine it was made on, unique panel ids, no panels on top of
    each other."""
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "plp-gateway" and "__inputs" not in board
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, p["title"]
        cells |= mine
        for target in [p, *p.get("targets", [])]:
            if "datasource" in target:
                assert target["datasource"]["uid"] == "${datasource}", p["title"]


# -- a scrape of a gateway that ran a job on every channel -----------------------------------
Series = dict[str, list[dict[str, str]]]  # sample name -> label sets


async def scrape_after_a_job(
    gateway: GatewayFactory,
    observer: Observer,
    smtp: SmtpServer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> str:
    """Start the gateway with metrics and e-mail, SMS and voice against the simulators, run a
    job on every channel (two members reached everywhere, one e-mail retried, one failed),
    refuse a payload, reload; return the `/metrics` text."""
    port = free_port()
    proc = gateway(
        f"[metrics]\nenabled = true\nport = {port}\n"
        + smsc.config()
        + asterisk.config(tmp_path / "sounds")
    )
    proc.wait_log(f"metrics on http://127.0.0.1:{port}/metrics")
    recipients = [member(1, 1, "fr"), member(2, 1, "nl")]
    by_mail = members(4)
    for r, m in zip(recipients, by_mail, strict=False):
        r["email"] = m["email"]
    recipients += [{**m, "channels": ["email"]} for m in by_mail[2:]]
    smtp.script.replies = {
        by_mail[2]["email"]: ["451 4.3.0 try later"],
        by_mail[3]["email"]: ["550 5.1.1 no such user"],
    }
    subject = {"fr": "Alerte PLP", "nl": "BIN-alarm", "de": "KPP-Alarm", "en": "PLP alert"}
    job = voice_job("kit-1", recipients, channels=["voice", "sms", "email"], subject=subject)
    await observer.publish_job(job)
    await observer.publish("plp/jobs", b"{not json")
    await observer.wait(observer.rejections)
    await observer.wait_job("kit-1", "done", timeout=60)
    proc.send_signal(signal.SIGHUP)
    proc.wait_log("configuration reloaded")
    code, _, body = await http_get(port, "/metrics")
    assert code == 200
    return body.decode()


def series(text: str) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(dict(s.labels))
    return out


def missing(
    exprs: list[str], exported: Series, allowed: frozenset[str] = frozenset(), values: bool = True
) -> list[str]:
    """What `exprs` query that the scrape does not hold: unknown metric names, label names
    a metric does not carry and (with `values`) label values no series has."""
    problems = []
    for expr in exprs:
        for name, labels in promql_selectors(expr):
            if name in allowed:
                continue
            if name not in exported:
                problems.append(f"{name} (in {expr!r})")
                continue
            have = exported[name]
            for label, value in labels.items():
                if label in TARGET_LABELS:
                    continue
                if not any(label in s for s in have):
                    problems.append(f"{name} has no label {label!r} (in {expr!r})")
                elif values and not any(re.fullmatch(value, s.get(label, "")) for s in have):
                    problems.append(f"{name} has no series {label}=~{value!r} (in {expr!r})")
    return problems


async def test_every_metric_the_dashboard_and_rules_query_is_exported(
    gateway: GatewayFactory,
    observer: Observer,
    smtp: SmtpServer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    text = await scrape_after_a_job(gateway, observer, smtp, smsc, asterisk, tmp_path)
    exported = series(text)
    board = dashboard_exprs()
    assert len(board) > 15
    problems = missing(board, exported)
    assert problems == [], "\n".join(problems)
    # Alerts watch for what a healthy run lacks (a refused reload, forged jobs): their label
    # names are checked, not their values.
    problems = missing(rule_exprs(), exported, PROMETHEUS_SERIES, values=False)
    assert problems == [], "\n".join(problems)


async def test_the_exposition_has_no_created_twins_and_types_counters_as_counters(
    gateway: GatewayFactory,
    observer: Observer,
    smtp: SmtpServer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    text = await scrape_after_a_job(gateway, observer, smtp, smsc, asterisk, tmp_path)
    # prometheus_client adds `<name>_created` to each counter and histogram unless told not to.
    assert [line for line in text.splitlines() if "_created" in line] == []
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for family in families.values():
        if family.type == "gauge":
            names = {s.name for s in family.samples}
            assert not any(n.endswith("_total") for n in names), family.name
    # The channels' running totals are counters ...
    events = families["plp_gateway_link_events"]
    assert events.type == "counter"
    got = {(s.labels["link"], s.labels["event"]): s.value for s in events.samples}
    assert got[("email", "sent")] == 3
    assert got[("voice", "outcomes_acknowledged")] == 2
    assert got[("voice", "connects")] >= 1
    assert got[("sms", "binds_sim_submitted")] == 2
    # ... and what goes up and down is a gauge.
    stats = families["plp_gateway_link_stat"]
    assert stats.type == "gauge"
    kinds = {s.labels["stat"] for s in stats.samples}
    assert {"active_calls", "max_channels", "binds_sim_window_in_use"} <= kinds
    assert not any(is_counter_field(k) for k in kinds)


async def test_queue_states_have_their_own_label(
    gateway: GatewayFactory,
    observer: Observer,
    smtp: SmtpServer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    text = await scrape_after_a_job(gateway, observer, smtp, smsc, asterisk, tmp_path)
    depth = series(text)["plp_gateway_queue_depth"]
    assert {s["priority"] for s in depth} == {"hot", "cold"}
    assert {s["state"] for s in depth} == {"ready", "delayed"}
    assert {s["channel"] for s in depth} == {"email", "sms", "voice"}


def test_delayed_deliveries_are_counted_by_priority() -> None:
    queue = ChannelQueue()
    later = time.time() + 3600
    queue.push(Priority.HOT, 1, "j")
    queue.push(Priority.HOT, 2, "j", due=later)
    queue.push(Priority.COLD, 3, "j", due=later)
    queue.push(Priority.COLD, 4, "j", due=later)
    assert queue.waiting() == {
        ("hot", "ready"): 1,
        ("cold", "ready"): 0,
        ("hot", "delayed"): 1,
        ("cold", "delayed"): 2,
    }


# -- promtool ----------------------------------------------------------------------------
def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in configs/prometheus/ (the files name each other relative to it)."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`, see scripts/setup)")
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=60, cwd=RULES_DIR, check=False
    )


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass() -> None:
    # Gateway down, not ready, link down, rejected and forged jobs, a growing queue, hot
    # backlog, delivery failure ratio, a refused reload: each firing and not firing.
    result = promtool("test", "rules", RULES_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_scrape_config_loads_the_rules() -> None:
    result = promtool("check", "config", "prometheus.example.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
