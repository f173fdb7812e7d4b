"""Every figure of docs/metrics.md reaches Ray's metrics export, tagged with the run.

A real local Ray in a fresh interpreter (``tests.cluster.metrics_run``: its own report interval
of 1 s), the real pipeline and model actor on real videos, one missing file; the run's series
are read back from the node's Prometheus endpoint, as Prometheus (and the Ray dashboard's
Grafana) read them: during the run (each gauge took a value other than 0) and after it (the
counters hold the run's counts, the gauges are 0: the run holds nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cluster.run_metrics import COUNTERS, GAUGES, PREFIX

ROOT = Path(__file__).resolve().parents[2]



class _Outcome:
    def __init__(self, error=None):
        self.error = error


def test_counts_rate_and_cadence_without_ray():
    """The bookkeeping alone (metrics made before Ray starts are Ray's no-ops): outcomes counted
    by kind, passed on at most every ``every_s``, videos/s over the last ``window_s``."""
    from cluster.run_metrics import RunMetrics

    seen = []
    metrics = RunMetrics("pure", every_s=1.0, window_s=10.0)
    count = metrics.counting(seen.append)
    for second in range(30):
        for i in range(5):
            count(_Outcome("bad" if i == 0 else None))
        metrics.update({"actors_live": 1}, float(second))
        metrics.update({"actors_live": 1}, second + 0.5)  # within every_s: nothing passed on
    assert len(seen) == 150 and metrics.counts == {"videos_scored": 120, "videos_failed": 30}
    assert metrics._sent == metrics.counts
    assert metrics.rate == 5.0  # 50 videos in the last 10 s
    assert metrics.next_update == 30.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_each_metric_is_exported_with_the_run_tag(evalset):
    run = f"metrics-test-{uuid.uuid4().hex[:8]}"
    folder = evalset.checkpoint.parent
    proc = subprocess.run([sys.executable, "-m", "tests.cluster.metrics_run", str(folder), run],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    most, last = result["most"], result["last"]
    counters = {name: f"ray_{PREFIX}{name}_total" for name in COUNTERS}
    gauges = {key: f"ray_{PREFIX}{name}" for key, (name, _) in GAUGES.items()}

    assert result["scored"] == 6 and result["failed"] == 1
    assert last[counters["videos_scored"]] == 6, result
    assert last[counters["videos_failed"]] == 1, result
    assert most[gauges["actors_wanted"]] == 1, result
    assert most[gauges["actors_live"]] == 1, result
    assert most[gauges["gpus_held"]] == 1, result  # the actor holds the declared GPU
    assert most[gauges["units_running"]] >= 1, result
    assert most[gauges["units_waiting"]] >= 1, result  # the unit queued behind the running one
    assert most[gauges["videos_in_flight"]] >= 2, result
    assert most[gauges["videos_per_second"]] > 0, result
    assert all(last[name] == 0 for name in gauges.values()), result  # released at the end
    print(f"run {result['run_s']:.1f} s; its final counts were exported {result['final_after_s']:.1f} s after it ended")
