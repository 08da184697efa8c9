"""A fresh clone must not depend on the machine it was built on.

A tracked `.venv` symlink to a folder of the build machine once made `scripts/test` fail on
every fresh clone (`[Errno 17] File exists`) while CI passed where that folder existed. These
tests read what git tracks: no symlink may lead outside the repository, and no tracked file may
name an absolute path of a build machine (a home, a work area, the clone's own location).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Where build machines keep checkouts and virtualenvs. Spelled in pieces so that this file
# does not name them itself.
_MACHINE_DIRS = ("home", "root", "work", "Users")
_MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:" + "|".join(_MACHINE_DIRS) + r")/[\w.-]+", re.ASCII)
_TEXT_SUFFIXES = {
    "",
    ".py",
    ".md",
    ".toml",
    ".cfg",
    ".conf",
    ".ini",
    ".txt",
    ".json",
    ".sh",
    ".service",
    ".sysusers",
    ".yml",
    ".yaml",
}


def _tracked() -> list[tuple[str, str]]:
    """(mode, path) of every file git tracks."""
    out = subprocess.run(
        ["git", "ls-files", "-s", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    entries = []
    for entry in out.split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            entries.append((meta.split()[0], path))
    return entries


def test_no_tracked_symlink_leads_outside_the_repository() -> None:
    bad = []
    for mode, path in _tracked():
        if mode != "120000":
            continue
        target = subprocess.run(
            ["git", "cat-file", "blob", f":{path}"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        resolved = Path(os.path.normpath(ROOT / Path(path).parent / target))
        if os.path.isabs(target) or not resolved.is_relative_to(ROOT):
            bad.append(f"{path} -> {target}")
    assert not bad, f"tracked symlinks leading outside the repository: {bad}"


def test_no_virtualenv_is_tracked() -> None:
    venvs = [
        path
        for _, path in _tracked()
        if path.split("/")[0] in {".venv", "venv", "env"} or "site-packages/" in path
    ]
    assert not venvs, f"a virtualenv is tracked: {venvs[:5]}"


def test_no_tracked_file_names_a_build_machine_path() -> None:
    own = str(ROOT)
    hits = []
    for mode, path in _tracked():
        if mode == "120000" or Path(path).suffix not in _TEXT_SUFFIXES:
            continue
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            found = _MACHINE_PATH.search(line)
            if found or own in line:
                hits.append(f"{path}:{n}: {found.group(0) if found else own}")
    assert not hits, "absolute paths of a build machine in tracked files:\n" + "\n".join(hits)


def test_the_checks_catch_what_they_guard_against() -> None:
    # The patterns themselves: a venv of a build machine, a home, the clone's location.
    assert _MACHINE_PATH.search("exec /" + "work/venv/bin/python bench.py")
    assert _MACHINE_PATH.search("see /" + "home/alice/plp/docs")
    assert not _MACHINE_PATH.search("/var/lib/plp-gateway/gateway.sqlite3")
    # Relative forms are no machine's path (spelled in pieces, as above).
    assert not _MACHINE_PATH.search("~/" + "work/x and ./" + "work/y and a/" + "work/z")
