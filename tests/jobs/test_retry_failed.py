"""``--retry-failed``: a finished run's failed videos are scored again on request.

A video that could not be read (here: a file replaced by garbage, then restored, as a copy
that was incomplete when the run read it) is an error row of kind ``video``; ``evaluate
--resume`` alone keeps it (its shard is finished), ``--resume --retry-failed`` scores it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from tests.cluster.evalset import PRESET, PROB_TOL, VIEWS, EvalSet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]


def evaluate(ev: EvalSet, root: Path, output: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "submit.py"), "evaluate", "--video-list", str(ev.ann_file), "--data-root", str(root),
           "--model", PRESET, "--checkpoint", str(ev.checkpoint), "--views", str(VIEWS), "--output", str(output),
           "--num-cpus", "2", "--shard-size", "4", "--quiet", *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "X3D_PRESETS_MODULE": "tests.presets"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_retry_failed_scores_a_finished_runs_failed_video_again(evalset: EvalSet, tmp_path: Path):
    root = tmp_path / "videos"
    shutil.copytree(evalset.root, root)
    victim = evalset.names[1]
    (root / victim).write_bytes(b"not a video yet\n" * 64)
    output = tmp_path / "run"
    first = evaluate(evalset, root, output)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = ds.dataset(str(output / "predictions")).to_table().to_pydict()
    failed = [(v, k) for v, e, k in zip(rows["video"], rows["error"], rows["failure"]) if e]
    assert failed == [(victim, "video")]
    assert json.loads((output / "summary.json").read_text())["failed_by_kind"] == {"video": 1, "infrastructure": 0}

    shutil.copyfile(evalset.root / victim, root / victim)  # the file is whole now
    kept = evaluate(evalset, root, output, "--resume")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert json.loads((output / "summary.json").read_text())["num_failed"] == 1  # --resume alone keeps the row

    again = evaluate(evalset, root, output, "--resume", "--retry-failed")
    assert again.returncode == 0, again.stderr[-3000:]
    rows = ds.dataset(str(output / "predictions")).to_table().to_pydict()
    assert rows["video"] == evalset.names and all(e is None for e in rows["error"])
    for name, probs in zip(rows["video"], rows["probs"]):
        assert np.abs(np.asarray(probs, np.float32) - evalset.probs[name]).max() < PROB_TOL, name
    assert json.loads((output / "summary.json").read_text())["num_failed"] == 0


def test_retry_failed_without_resume_is_refused_before_anything_starts(evalset: EvalSet, tmp_path: Path):
    run = evaluate(evalset, evalset.root, tmp_path / "run", "--retry-failed")
    assert run.returncode == 2 and "add --resume" in run.stderr and not (tmp_path / "run").exists()
