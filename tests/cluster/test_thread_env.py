"""The job's Ray workers get OpenMP threads that sleep while they wait (OMP_WAIT_POLICY=PASSIVE).

Spinning OpenMP threads beside other busy processes made the CPU job collapse (bench/RESULTS.md,
"CPU job beside other load"); the setting must reach the workers, where torch's OpenMP pool is
made, and a value the user exported must win. Each case starts its own local Ray through the
job's ``connect`` in a fresh interpreter, as a job does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # starts its own Ray

CHILD = """
import os, ray
from cluster.runtime import connect, stop_cluster

started = connect(None, num_cpus=1)
try:
    print("WORKER", ray.get(ray.remote(lambda: os.environ.get("OMP_WAIT_POLICY")).remote()))
finally:
    stop_cluster(started)
"""


@pytest.mark.parametrize("exported, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_workers_wait_passively_unless_told_otherwise(exported, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if exported:
        env["OMP_WAIT_POLICY"] = exported
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"WORKER {expected}" in proc.stdout, proc.stdout
