"""What this machine offers to the work: the CPUs a process may use, and its physical cores."""

from __future__ import annotations

import os

import psutil


def usable_cpus() -> int:
    """CPUs this process may run on (a container or `taskset` can allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores among the usable CPUs: two hyper-threads of one core share its matmul units."""
    physical = psutil.cpu_count(logical=False) or usable_cpus()
    return max(1, min(physical, usable_cpus()))
