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


# A large job's members' models, made while its parsed members are freed: all still young.
_SET_ASIDE = """
import gc, json
from datetime import UTC, datetime
from gateway import gc_tuning
from gateway.config import JobsConfig
from gateway.jobs import validate_job
from tests.fixtures import members
from tests.sms_fixtures import sms_job
gc_tuning.tune()
payload = json.dumps(sms_job("big", members(5_000))).encode()
spec = validate_job(payload, JobsConfig(), frozenset({"sms"}), datetime.now(UTC))
young = len(gc.get_objects(0)) + len(gc.get_objects(1))
gc_tuning.set_aside()
print(young >= 5_000, len(gc.get_objects(0)) + len(gc.get_objects(1)) < 100)
"""


def test_a_large_jobs_members_are_set_aside_from_collections() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _SET_ASIDE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "True"]
