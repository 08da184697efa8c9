"""Installing like a service: the wheel in a fresh virtualenv, `scripts/install-service`, and the
Debian package built with Debian's tools (lintian clean)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import gateway
from gateway.shipped import SHIPPED

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "plp-alert-gateway"
DEB_VENV = "usr/lib/plp-gateway/venv"
_DEB_TOOLS = ("dpkg-buildpackage", "dh", "help2man", "lintian")
DEBIAN_PYTHON = "/usr/bin/python3"


def run(
    argv: list[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        timeout=timeout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"{argv}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _outside_env() -> dict[str, str]:
    """The environment of a shell outside this checkout: no PYTHONPATH, no virtualenv."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}


def _clean_copy(dest: Path) -> Path:
    """The checkout's files (tracked, or new and not ignored): what a fresh clone would build."""
    listed = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_debian_changelog_is_at_the_package_version() -> None:
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(rf"{PACKAGE} \(([^)]+)\)", first)
    assert match, first
    assert match.group(1) == gateway.__version__


def test_wheel_in_a_fresh_venv_init_then_check_config(tmp_path: Path) -> None:
    src = _clean_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, src], timeout=300)
    (wheel,) = wheels.glob("plp_alert_gateway-*.whl")

    # A new virtualenv gets the wheel without its dependencies, then sees this one's (a path in
    # a .pth file, added after: pip would take this checkout's editable install for the
    # wheel; a path, not its .pth files, so that install is not imported).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    python = venv / "bin" / "python"
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", python, "install", "-q"]
    run([*pip, "--no-deps", wheel], env=_outside_env(), timeout=300)
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    shared = dict.fromkeys((sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]))
    Path(purelib.stdout.strip(), "shared-dependencies.pth").write_text("\n".join(shared) + "\n")

    env = _outside_env()
    where = run([python, "-c", "import gateway; print(gateway.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    command = venv / "bin" / "plp-gateway"
    version = run([command, "--version"], cwd=tmp_path, env=env)
    assert version.stdout.strip() == f"plp-gateway {gateway.__version__}"
    dest = tmp_path / "etc"
    run([command, "init", dest], cwd=tmp_path, env=env)
    for name, original in SHIPPED.items():
        assert (dest / name).read_bytes() == (ROOT / original).read_bytes(), name
    checked = run([command, "check-config", dest / "gateway.toml"], cwd=tmp_path, env=env)
    assert "OK" in checked.stdout


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None, reason="install-service needs systemd-sysusers"
)
def test_install_service_installs_the_dialplan(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "asterisk").mkdir(parents=True)  # Asterisk runs on this machine
    env = {**_outside_env(), "PIP_INSTALL_ARGS": "--no-deps"}  # the project, not its libraries
    # From a copy: pip builds in the source folder.
    script = _clean_copy(tmp_path / "src") / "scripts" / "install-service"
    out = run([script, "--root", root], env=env, timeout=300).stdout
    dialplan = (ROOT / "configs" / "asterisk" / "extensions.conf").read_bytes()
    assert (root / "opt/plp-gateway/share/asterisk/plp-alert.conf").read_bytes() == dialplan
    assert (root / "etc/asterisk/plp-alert.conf").read_bytes() == dialplan
    assert '#include "plp-alert.conf"' in out
    assert (root / "opt/plp-gateway/venv/bin/plp-gateway").is_file()


def _can_build_deb() -> bool:
    if not Path(DEBIAN_PYTHON).is_file():
        return False
    if all(shutil.which(tool) for tool in _DEB_TOOLS):
        return True
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


@pytest.mark.skipif(
    not _can_build_deb(),
    reason="building the .deb needs Debian's python3 and debhelper, help2man, lintian "
    "(or root with apt-get to install them)",
)
def test_deb_builds_lintian_clean_and_carries_the_service(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    # gzip -1 instead of dpkg-deb's default xz: ~1 s instead of ~50 s for the virtualenv's
    # 58 MB; what the test checks (the build, lintian, the contents) does not depend on it.
    fast = {"DPKG_DEB_COMPRESSOR_TYPE": "gzip", "DPKG_DEB_COMPRESSOR_LEVEL": "1"}
    run([ROOT / "scripts" / "build-deb", out], env={**_outside_env(), **fast}, timeout=900)
    lintian = (out / "lintian.txt").read_text()
    assert not [line for line in lintian.splitlines() if line.startswith("E:")], lintian
    (deb,) = out.glob(f"{PACKAGE}_*.deb")
    fields = run(["dpkg-deb", "-f", deb, "Package", "Version", "Depends"]).stdout
    assert f"Package: {PACKAGE}" in fields and f"Version: {gateway.__version__}" in fields
    assert "python3 (<< 3.12~)" in fields  # the private virtualenv is bound to Python 3.11

    tree, control = tmp_path / "tree", tmp_path / "control"
    run(["dpkg-deb", "-x", deb, tree])
    run(["dpkg-deb", "-e", deb, control])
    # The unit runs the packaged entry point, as the system user the package creates.
    unit = (tree / "lib/systemd/system/plp-gateway.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(\S+) run --config (\S+)$", unit, re.M)
    assert exec_start == (f"/{DEB_VENV}/bin/plp-gateway", "/etc/plp-gateway/gateway.toml")
    assert (tree / exec_start[0].lstrip("/")).is_file()
    link = os.readlink(tree / "usr/bin/plp-gateway")
    assert os.path.normpath(tree / "usr/bin" / link) == str(tree / exec_start[0].lstrip("/"))
    sysusers = (ROOT / "systemd/plp-gateway.sysusers").read_bytes()
    assert (tree / "usr/lib/sysusers.d/plp-gateway.conf").read_bytes() == sysusers
    postinst = (control / "postinst").read_text()
    assert "systemd-sysusers" in postinst and "/var/lib/plp-gateway" in postinst
    # The configuration is a conffile made from the example.
    assert (control / "conffiles").read_text().split() == ["/etc/plp-gateway/gateway.toml"]
    example = (ROOT / "configs/gateway.example.toml").read_bytes()
    assert (tree / "etc/plp-gateway/gateway.toml").read_bytes() == example
    dialplan = (ROOT / "configs/asterisk/extensions.conf").read_bytes()
    assert (tree / "usr/share/plp-gateway/asterisk/plp-alert.conf").read_bytes() == dialplan

    # The packaged gateway runs and accepts the packaged configuration. Its interpreter is a
    # relative link to /usr/bin/python3 (Debian's, which the package depends on): give the
    # unpacked tree one.
    (tree / "usr/bin/python3").symlink_to(DEBIAN_PYTHON)
    python = tree / DEB_VENV / "bin" / "python"
    env = _outside_env()
    where = run([python, "-c", "import gateway; print(gateway.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(tree / DEB_VENV)
    config = tree / "etc/plp-gateway/gateway.toml"
    checked = run([python, "-m", "gateway", "check-config", config], cwd=tmp_path, env=env)
    assert "OK" in checked.stdout
