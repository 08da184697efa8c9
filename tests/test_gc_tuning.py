"""The daemon's garbage collector settings: what was imported is frozen, young collections rarer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway import gc_tuning

ROOT = Path(__file__).resolve().parent.parent

# In a fresh process: `tune` changes the interpreter's collector for good.
_SCRIPT = """
import gc
from gateway import cli, gc_tuning
assert gc.get_freeze_count() == 0
gc_tuning.tune()
print(gc.get_threshold()[0], gc.get_freeze_count() > 10_000)
"""


def test_tune_freezes_what_was_imported_and_raises_the_young_threshold() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(gc_tuning.YOUNG_THRESHOLD), "True"]
