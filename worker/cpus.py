"""How many CPUs this process really owns: the size its thread pools must not exceed.

torch (and OpenMP) size their pools to the node's cores, not to what the process may use. In a
container with a CPU limit on a big node, or a process pinned with ``taskset``/``cpuset``, that
is many threads on few CPUs: they wait on each other at every barrier, and a forward with more
threads than CPUs runs many times slower than with one (bench/RESULTS.md, "Figures once quoted
in code comments"). So a worker
sizes its threads to the smallest of what the scheduler gave it (Ray's assignment, passed in:
this layer does not import Ray), the CPUs it may run on (``os.sched_getaffinity``) and its
cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["CGROUP_V1_QUOTA", "CGROUP_V1_PERIOD", "CGROUP_V2_CPU_MAX", "affinity_cpus", "cgroup_quota_cpus", "owned_cpus"]

CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def affinity_cpus() -> int:
    """CPUs the scheduler lets this process run on (all of them where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _read(path: str | os.PathLike) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cgroup_quota_cpus(cpu_max: str | os.PathLike = CGROUP_V2_CPU_MAX, v1_quota: str | os.PathLike = CGROUP_V1_QUOTA,
                      v1_period: str | os.PathLike = CGROUP_V1_PERIOD) -> float | None:
    """The cgroup's CPU quota in CPUs (1.5 for ``150000 100000``), or None when unlimited or unknown."""
    text = _read(cpu_max)
    if text:
        quota, _, period = text.partition(" ")
        if quota != "max":
            try:
                return int(quota) / int(period or 100_000)
            except (ValueError, ZeroDivisionError):
                return None
        return None
    quota_text, period_text = _read(v1_quota), _read(v1_period)
    try:
        quota, period = int(quota_text or ""), int(period_text or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def owned_cpus(assigned: float | None = None, *, cpu_max: str | os.PathLike = CGROUP_V2_CPU_MAX,
               v1_quota: str | os.PathLike = CGROUP_V1_QUOTA, v1_period: str | os.PathLike = CGROUP_V1_PERIOD) -> int:
    """Threads this process should run at most: min(``assigned``, affinity, cgroup quota), at least 1.

    ``assigned``: what the scheduler granted (a Ray actor's CPU count or its sizing's thread
    count); None means no such limit. A fractional quota or assignment rounds down (1.5 CPUs
    give 1 thread): a thread more than the CPUs is the slow case, a thread less is not.
    """
    limits = [float(affinity_cpus())]
    if assigned is not None and assigned > 0:
        limits.append(float(assigned))
    quota = cgroup_quota_cpus(cpu_max, v1_quota, v1_period)
    if quota is not None:
        limits.append(quota)
    return max(1, math.floor(min(limits) + 1e-9))
