"""CPU time and memory of a process and its children, from /proc (Linux): the gateway and its
status child (gateway.status_child) are counted together, and each shown."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str]:
    # Fields after the command's closing parenthesis: state is [0], ppid [1], utime [11].
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads; 0 once it is gone."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and of each of its children, by process id."""
    return {p: cpu_seconds(p) for p in [pid, *children(pid)]}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(the process's own, its children's) CPU seconds between two `tree_cpu`; a child started
    in between counts from zero."""
    pid = next(iter(after))
    own = after[pid] - before.get(pid, 0.0)
    kids = sum(v - before.get(p, 0.0) for p, v in after.items() if p != pid)
    return own, kids


def kib(pid: int, file: str, field: str) -> int:
    """A `<field>: <n> kB` figure of /proc/PID/<file> (status, smaps_rollup); 0 once the
    process is gone or where the kernel has no such file or field."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    """The process's resident set now (VmRSS), in MB."""
    return kib(pid, "status", "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    return kib(pid, "status", "VmHWM") / 1024


def pss_mb(pid: int) -> float:
    """The process's proportional set size now (smaps_rollup): its resident pages, those it
    shares with others (the interpreter's code, with its parent) divided among them."""
    return kib(pid, "smaps_rollup", "Pss") / 1024
