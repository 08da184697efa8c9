"""Debian's Chromium, headless, as a test's browser: the rendered DOM and a screenshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/setup installs it)"
)
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def dump_dom(url: str, profile: Path, run_scripts_for_ms: int = 0) -> str:
    """The DOM after loading `url`; with `run_scripts_for_ms`, after the page's timers and
    fetches have run that long (Chromium's virtual time)."""
    budget = [f"--virtual-time-budget={run_scripts_for_ms}"] if run_scripts_for_ms else []
    return _run([*budget, "--dump-dom", url], profile).stdout


def screenshot(url: str, out: Path, profile: Path, size: str = "1200,900") -> Path:
    _run([f"--screenshot={out}", f"--window-size={size}", url], profile)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no PNG at {out}"
    print(f"screenshot: {out}")
    return out
