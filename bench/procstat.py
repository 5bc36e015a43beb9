"""CPU time of processes and of the machine, read from /proc (shared by the benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime + stime of a process, the same of the children it has waited for: ansible runs, modules).

    :raises OSError: the process is gone.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICK
    return own, (int(fields[13]) + int(fields[14])) / TICK


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and the children it has waited for."""
    return sum(cpu_split(pid))
