"""bench/device_check.sh, the one command a lent GPU machine runs, in its CPU dry run
(``DEVICE_CHECK_DRY=1``: x3d_tiny, short windows): every stage's command line runs here, so the
script cannot rot between GPU sessions. Real Ray, real runner; only the sizes are tiny."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("setup", "sweep", "compiled", "checks", "job-fp32", "job-bf16", "share")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def test_device_check_dry_run_passes_every_stage(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE_CHECK_DRY": "1", "OUT": str(out)}
    proc = subprocess.run(["bash", "bench/device_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:] + log[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files  # the device tool brings back 8 at most
    summary = (out / "summary.md").read_text()
    for name in STAGES:
        assert f"| {name} | ok |" in summary, summary
    cells = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert cells and all(c["median"] > 0 for c in cells)
    checks = [json.loads(line) for line in (out / "checks.jsonl").read_text().splitlines()]
    assert [c for c in checks if "check" in c] and all(c["ok"] for c in checks if "check" in c)
    for precision in ("fp32", "bf16"):
        job = json.loads((out / f"job-{precision}.json").read_text())
        assert job["precision"] == precision and job["trials"][0]["clips_per_s"]["median"] > 0
        assert f"\n| {precision} | " in summary  # its row in the share table


def test_a_failed_stage_is_recorded_and_the_rest_run(tmp_path):
    """A stage that cannot finish in its budget is a row; the stages after it still run (and
    are skipped, recorded, once the budget is spent); the exit status says so."""
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE_CHECK_DRY": "1", "OUT": str(out), "DEVICE_CHECK_BUDGET_S": "25"}
    proc = subprocess.run(["bash", "bench/device_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-1500:] + proc.stderr[-1500:]
    summary = (out / "summary.md").read_text()
    assert "| setup | ok |" in summary and "| share | skipped: budget spent |" in summary, summary
    assert "TIMED OUT" in summary and "stage(s) failed" in summary
