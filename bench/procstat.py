"""CPU time of processes and of the machine, read from /proc, and the benches' process teardown (shared by the
benchmarks)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
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


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds spent so far by ``root`` (default: this process)'s descendants, live and finished: each
    live one's own time and that of the children it has reaped (utime, stime, cutime, cstime in /proc), plus
    what this process has reaped itself (RUSAGE_CHILDREN). Each process counts once: while it lives, by
    itself; once reaped, in its reaper's children time. Other work on the machine is not counted. A
    descendant adopted elsewhere (a daemon whose parent exited) drops out of the count from then on."""
    import resource

    root = root or os.getpid()
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(x) for x in fields[11:15]) / TICK
    total = 0.0
    for pid, seconds in times.items():
        ancestor = parents.get(pid)
        while ancestor and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            total += seconds
    if root == os.getpid():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += usage.ru_utime + usage.ru_stime
    return total


def stop_all(procs: list[subprocess.Popen], var: Path | None = None, *, keep: bool = False) -> None:
    """SIGTERM every process group started, SIGKILL what has not ended 15 s later; remove ``var`` (when given)
    unless kept."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    if var is None:
        return
    if keep:
        print(f"kept {var}")
    else:
        shutil.rmtree(var, ignore_errors=True)
