"""The systemd unit: verifies cleanly, is hardened, and rates OK or better."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.exit_codes import ExitCode

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "plp-gateway.service"
INSTALLED_EXEC = "/opt/plp-gateway/venv/bin/plp-gateway"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_runs_the_daemon_as_its_own_user_with_notify_and_watchdog() -> None:
    d = directives()
    assert d["ExecStart"] == [f"{INSTALLED_EXEC} run --config /etc/plp-gateway/gateway.toml"]
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["User"] == ["plp-gateway"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["Restart"] == ["on-failure"]
    assert "StartLimitBurst" in d and "StartLimitIntervalSec" in d
    assert "TimeoutStopSec" in d
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for kind in ("State", "Cache", "Configuration"):
        assert d[f"{kind}Directory"] == ["plp-gateway"]
    sysusers = (ROOT / "systemd" / "plp-gateway.sysusers").read_text()
    assert re.search(r"^u plp-gateway ", sysusers, re.M)


def test_restarts_after_a_failure_but_not_after_a_bad_configuration() -> None:
    d = directives()
    # on-failure: any non-zero exit status (and signals, the watchdog) restarts the daemon...
    assert d["Restart"] == ["on-failure"]
    assert "SuccessExitStatus" not in d
    # ...except an invalid configuration, which a restart would not fix.
    prevented = " ".join(d.get("RestartPreventExitStatus", [])).split()
    assert prevented == [str(int(ExitCode.CONFIG))]
    assert str(int(ExitCode.FAILURE)) not in prevented


def test_hardening_directives() -> None:
    d = directives()
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert "@system-service" in d["SystemCallFilter"]


def _unit_with_existing_exec(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists: point it at this interpreter for the check.
    unit = tmp_path / "plp-gateway.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_EXEC, sys.executable))
    return unit


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = _unit_with_existing_exec(tmp_path)
    res = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    # verify exits 0 even on unknown keys: any message about our unit is a failure.
    problems = [line for line in res.stderr.splitlines() if "plp-gateway" in line]
    assert res.returncode == 0 and not problems, res.stderr


@needs_analyze
def test_security_exposure_is_ok_or_better(tmp_path: Path) -> None:
    assert ANALYZE is not None
    res = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    if "--offline" in res.stderr and "unrecognized" in res.stderr:
        pytest.skip("systemd-analyze without --offline (needs systemd >= 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", res.stdout)
    assert match, res.stdout + res.stderr
    score, rating = float(match.group(1)), match.group(2)
    assert rating in ("SAFE", "OK") and score <= 2.0, (score, rating)
    # The figure recorded in docs/operations.md must be the one the unit actually gets.
    assert f"{score:.1f} {rating}" in (ROOT / "docs" / "operations.md").read_text()
