"""CPU time of the service's processes, summed per process group, from /proc (issue 24's measure).

Latency on a shared 2-core machine is noisy; CPU seconds per lease are not, and they say how many cores a
cluster needs.  A group is a root pid and every descendant: the ``ipam serve`` process, the broker (one
JVM, or Tansu), the Postgres server (the postmaster and its backends).  Backends that exit during a window
are not lost: the kernel adds a reaped child's time to its parent's ``cutime``/``cstime``, which are counted
too.  The load generator (this bench process) is never in a group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and of its reaped children), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 of proc(5) is fields[0]
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return int(fields[1]), (utime + stime + cutime + cstime) / TICKS


def _descendants(roots: set[int], parents: dict[int, int]) -> set[int]:
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found |= frontier
    return found


def cpu_seconds(groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each group (``name -> root pid``, a root may be absent: 0)."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    parents = {pid: s[0] for pid, s in stats.items()}
    return {name: sum(stats[pid][1] for pid in _descendants({root}, parents) if pid in stats) if root in stats else 0.0
            for name, root in groups.items()}


@dataclass
class CpuWindow:
    """CPU seconds each group used between ``start()`` and ``stop()``."""

    groups: dict[str, int]
    used: dict[str, float] | None = None

    def start(self) -> CpuWindow:
        self._before = cpu_seconds(self.groups)
        return self

    def stop(self) -> dict[str, float]:
        after = cpu_seconds(self.groups)
        self.used = {name: max(0.0, after[name] - self._before[name]) for name in self.groups}
        return self.used

    def per_lease(self, leases: int, prefix: str) -> dict[str, float]:
        """``{prefix: total µs a lease, prefix_<group>: µs a lease of that group}`` (None when nothing was leased)."""
        used = self.used if self.used is not None else self.stop()
        if leases <= 0:
            return {prefix: None}
        figures = {f"{prefix}_{name}": round(seconds * 1e6 / leases, 1) for name, seconds in used.items()}
        return {prefix: round(sum(used.values()) * 1e6 / leases, 1), **figures}
