"""`plp-gateway init DIR`: write the files an installation starts from (example configuration,
Asterisk dialplan and AMI user, mosquitto configuration and ACL, systemd unit and system user).

An installed wheel carries them as package data (gateway/_shipped/, copied from the repository
at build time by setup.py); a checkout reads the originals.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from .shipped import PACKAGE_DIR, SHIPPED

# The configuration will hold secrets (passwords, keys): not readable by everyone.
_PRIVATE = {"gateway.toml": 0o640}


class WouldOverwrite(FileExistsError):
    """Some of the files exist already (and `force` was not given): nothing was written."""


def _source(original: str) -> Traversable:
    """The shipped copy of `original` (a repository path), or the original in a checkout."""
    packaged = files("gateway").joinpath(PACKAGE_DIR, *original.split("/"))
    if packaged.is_file():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / original
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"{original} is missing from this installation")


def write_files(dest: Path, *, force: bool = False) -> list[Path]:
    """Write every shipped file under `dest`; refuse (and write nothing) if one exists."""
    sources = {name: _source(original) for name, original in SHIPPED.items()}
    targets = {name: dest / name for name in SHIPPED}
    existing = [t for t in targets.values() if t.exists()]
    if existing and not force:
        raise WouldOverwrite(", ".join(str(t) for t in existing))
    for name, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(sources[name].read_bytes())
        tmp.chmod(_PRIVATE.get(name, 0o644))
        tmp.replace(target)
    return list(targets.values())


def main(dest: Path, *, force: bool = False) -> int:
    try:
        written = write_files(dest, force=force)
    except WouldOverwrite as exc:
        print(f"init: not overwriting {exc} (--force to overwrite)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"init: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    config = dest / "gateway.toml"
    print(
        f"\nNext: edit {config}, then `plp-gateway check-config {config}`."
        "\nThe other files go to mosquitto, Asterisk and systemd: see their first lines, and"
        " docs/operations.md (Install)."
    )
    return 0
