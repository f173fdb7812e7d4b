"""``worker.cpus.owned_cpus`` on a real restricted affinity and on cgroup files written here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.cpus import cgroup_quota_cpus, owned_cpus

ROOT = Path(__file__).resolve().parents[2]


def _no_cgroup(tmp_path: Path) -> dict[str, Path]:
    return {"cpu_max": tmp_path / "none", "v1_quota": tmp_path / "none", "v1_period": tmp_path / "none"}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_restricted_affinity_in_a_subprocess(tmp_path: Path):
    """A process pinned to one CPU owns one, whatever the node has and Ray assigned; the
    torch pool the model runner sizes from it follows."""
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})
from worker.cpus import owned_cpus
import torch
n = owned_cpus(assigned=8, cpu_max={str(tmp_path / 'none')!r}, v1_quota={str(tmp_path / 'none')!r})
torch.set_num_threads(n)
print(n, torch.get_num_threads(), os.cpu_count())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out[:2] == ["1", "1"]
    assert owned_cpus(assigned=64, **_no_cgroup(tmp_path)) == len(os.sched_getaffinity(0))  # unpinned: all of them


def test_cgroup_v2_quota_file(tmp_path: Path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    paths = {**_no_cgroup(tmp_path), "cpu_max": cpu_max}
    assert cgroup_quota_cpus(cpu_max, tmp_path / "none", tmp_path / "none") == 1.5
    assert owned_cpus(assigned=64, **paths) == 1  # 1.5 CPUs of quota: one thread, not the node's cores
    cpu_max.write_text("max 100000\n")
    assert cgroup_quota_cpus(cpu_max, tmp_path / "none", tmp_path / "none") is None
    assert owned_cpus(assigned=1, **paths) == 1  # Ray's assignment still bounds it
    assert owned_cpus(assigned=0.5, **paths) == 1  # never below one


def test_cgroup_v1_quota_files(tmp_path: Path):
    quota, period = tmp_path / "cpu.cfs_quota_us", tmp_path / "cpu.cfs_period_us"
    period.write_text("100000\n")
    quota.write_text("-1\n")  # unlimited
    assert cgroup_quota_cpus(tmp_path / "none", quota, period) is None
    quota.write_text("100000\n")
    assert owned_cpus(assigned=None, cpu_max=tmp_path / "none", v1_quota=quota, v1_period=period) == 1
