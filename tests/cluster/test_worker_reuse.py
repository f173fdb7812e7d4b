"""A decode worker that waits for the model between videos is reused, not restarted per video.

Ray ends a worker that has been idle for 1 s when its node runs more workers than CPUs, which
is the normal state of a model-bound node: the model actor holds most CPUs and the decode slot
idles for seconds between videos. Each decode then started a fresh worker process (~1.5-2 s of
CPU on this machine, more than the decode itself). The job's own local Ray
(``cluster.runtime.connect``) keeps idle workers for ``IDLE_WORKER_KEEP_MS``; this starts it
the way the job does, in a fresh interpreter, and holds a decode-sized task's worker across
idle gaps longer than Ray's default.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # starts its own Ray

CHILD = r"""
import os, time
import ray
from cluster.runtime import connect, stop_cluster


started = connect(None, num_cpus=2)

@ray.remote(num_cpus=1.5)
class Model:  # holds the CPUs a CPU-only model actor holds on a 2-CPU node
    def ready(self):
        return True

@ray.remote(num_cpus=0.5, max_calls=64)
def decode_slot():
    return os.getpid()

model = Model.remote()
ray.get(model.ready.remote())
pids = []
for _ in range(4):
    pids.append(ray.get(decode_slot.remote()))
    time.sleep(2.0)  # the model is busy with the previous video; Ray's default kills at 1 s idle
stop_cluster(started)
print("PIDS", len(set(pids)), pids)
"""


def test_local_ray_keeps_an_idle_decode_worker() -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("PIDS"))
    assert line.startswith("PIDS 1 "), f"the decode slot ran in several worker processes: {line}"
