"""The status page on the metrics server, in a real headless Chromium: health, links, queues,
the latest jobs with progress that moves while a job runs, and each job's report."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

from gateway.simulator_process import free_port, wait_port
from tests.browser import dump_dom, needs_chromium, screenshot
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members

pytestmark = needs_chromium

REACHED = re.compile(r'<tr data-job="page-1">.*?</progress> (\d+) / 200</td>', re.S)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (http://127.0.0.1)
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_status_page_shows_a_running_job_moving(
    gateway: GatewayFactory, smtp: SmtpServer, observer: Observer, tmp_path: Path
) -> None:
    port = free_port()
    gateway(f"[metrics]\nenabled = true\nport = {port}\n")
    wait_port(port)
    base = f"http://127.0.0.1:{port}"
    smtp.script.delay = 0.1  # 200 e-mails, 4 at a time: the job runs for seconds
    await observer.publish_job(email_job("page-1", members(200)))

    def reached() -> int | None:
        status = observer.status("page-1")
        return status["members"]["reached"] if status and "members" in status else None

    await observer.wait(lambda: (reached() or 0) >= 1)
    first_dom = dump_dom(f"{base}/", tmp_path / "chromium")
    first = int(REACHED.search(first_dom).group(1))  # type: ignore[union-attr]
    assert first < 200, "the job ended before the page was read: make it slower"
    # The page is read from the store: once MQTT says more members were reached, so does it.
    await observer.wait(lambda: (reached() or 0) > first)
    second_dom = dump_dom(f"{base}/", tmp_path / "chromium", run_scripts_for_ms=2500)
    second = int(REACHED.search(second_dom).group(1))  # type: ignore[union-attr]
    assert second > first
    assert 'data-live="1"' in second_dom  # its script polled /status.json and refreshed it
    assert 'id="gateway-state"' in second_dom
    assert re.search(r'id="link-email".*?class="state up">up<', second_dom, re.S)
    assert re.search(r'id="link-broker".*?class="since">\d{4}-\d\d-\d\dT', second_dom, re.S)
    assert "member1@example.be" not in second_dom  # no personal data beyond ref and mask
    shot = screenshot(f"{base}/", tmp_path / "status-page.png", tmp_path / "chromium")
    assert shot.stat().st_size > 10_000

    await observer.wait_job("page-1", "done", timeout=120)
    status, body = _get(f"{base}/status.json")
    assert status == 200
    assert '"reached": 200' in body

    report = dump_dom(f"{base}/jobs/page-1?lang=nl", tmp_path / "chromium")
    assert "200 van 200 leden bereikt" in report
    assert "m-00199" in report and "member199@example.be" not in report


BAD_PATHS = [
    ("/jobs/..%2F..%2Fetc%2Fpasswd", 400),
    ("/jobs/%3Cscript%3Ealert(1)%3C%2Fscript%3E", 400),
    ("/jobs/", 400),
    ("/jobs/no-such-job", 404),
    ("/nothing-here", 404),
]


def test_status_page_checks_job_ids_before_any_lookup(gateway: GatewayFactory) -> None:
    port = free_port()
    gateway(f"[metrics]\nenabled = true\nport = {port}\n")
    wait_port(port)
    for path, code in BAD_PATHS:
        status, body = _get(f"http://127.0.0.1:{port}{path}")
        assert status == code, path
        assert "<script>" not in body
