"""The daemon's C allocator: a large job's buffers go back to the system once freed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import allocator

ROOT = Path(__file__).resolve().parent.parent

# A fresh process frees a 20 MB buffer (glibc then raises its mmap threshold to 20 MB), makes
# another below a small one, frees it, and prints how much resident memory it left behind.
_SCRIPT = """
import sys
from gateway import allocator
if sys.argv[1] == "fixed":
    assert allocator.fix_mmap_threshold()
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
first = bytearray(20 << 20); del first
before = rss()
big = bytearray(20 << 20)
pin = bytearray(4096)  # on the heap after it: the heap cannot shrink past it
del big
print((rss() - before) // 1024)
"""

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ,
    reason="glibc's allocator, not set by the environment",
)


def _left_behind_mb(mode: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@glibc
def test_a_large_freed_buffer_goes_back_to_the_system() -> None:
    assert _left_behind_mb("fixed") < 5


@glibc
def test_the_operator_s_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not allocator.fix_mmap_threshold()


def test_releasing_free_memory_is_harmless() -> None:
    allocator.release_free_memory()
