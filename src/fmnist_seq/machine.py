"""What this machine offers to the work: the CPUs a process may use, and its physical cores."""

from __future__ import annotations

import math
import os
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_limit(folder: Path) -> float | None:
    """CPUs granted by one cgroup v2 folder's cpu.max ("max 100000" or "<quota> <period>")."""
    fields = (_read(folder / "cpu.max") or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(folder: Path) -> float | None:
    """CPUs granted by one cgroup v1 cpu folder (cpu.cfs_quota_us is -1 when there is no limit)."""
    try:
        quota = int(_read(folder / "cpu.cfs_quota_us") or "-1")
        period = int(_read(folder / "cpu.cfs_period_us") or "0")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU time a container or systemd unit grants this process, in CPUs (None: no limit found).

    The quota is the tightest among this process's cgroup and its parents, cgroup v2 or v1: a container
    allowed 2 CPUs on a 64-core host still sees 64 cores in the affinity mask and in psutil.
    """
    limits: list[float] = []
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # cgroup v2: one hierarchy
            base, version = root, 2
        elif "cpu" in controllers.split(","):
            base, version = next((root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")
                                  if (root / name).is_dir()), root / "cpu"), 1
        else:
            continue
        folder = base / path.strip("/")
        while True:  # the cgroup and each parent up to the mount point
            limit = (_v2_limit if version == 2 else _v1_limit)(folder)
            if limit is not None:
                limits.append(limit)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask (`taskset`, cpusets) within the cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:  # 1.5 CPUs of quota keep one busy process, not two that the quota throttles
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def physical_cores() -> int:
    """Physical cores among the usable CPUs: two hyper-threads of one core share its matmul units."""
    physical = psutil.cpu_count(logical=False) or usable_cpus()
    return max(1, min(physical, usable_cpus()))
