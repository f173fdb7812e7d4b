"""The label job with its index and compaction, end to end: real Ray, real videos, real CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import x3d
from jobs import label_store
from jobs.label import compact_labels, plan_label, read_labels, run_label
from tests.jobs.labeljob import label_config as _config, label_versions as _versions, write_label_videos as _videos
from tests.videos import write_video

pytestmark = pytest.mark.slow  # label runs on a real local Ray

ROOT = Path(__file__).resolve().parents[2]


def test_compacted_output_stays_incremental(tmp_path, ray_local, checkpoint, capsys):
    videos = tmp_path / "videos"
    _videos(videos, 4)
    out = str(tmp_path / "out")
    cfg = _config(str(videos), out, checkpoint)
    assert run_label(cfg)["labelled"] == 4
    assert len(label_store.live_files(out)) == 2  # shard size 2

    stats = compact_labels(out, target_mb=1, quiet=True)
    assert (stats["files_merged"], stats["files_written"], stats["rows"]) == (2, 1, 4)
    assert [f.name.startswith("compact-") for f in label_store.live_files(out)] == [True]
    assert run_label(cfg)["skipped"] == 4  # the same command again does nothing
    write_video(videos / "clip_new.mp4", 30, 40, 56, 25, seed=99)
    assert (plan_label(cfg)["new"], run_label(cfg)["labelled"]) == (1, 1)
    versions = _versions(out)
    assert len(versions) == len(set(versions)) == 5 and read_labels(out).num_rows == 5


@pytest.mark.timeout(240)
def test_run_killed_during_its_index_update_leaves_no_double_rows(tmp_path):
    """SIGKILL after the run's index segment is written but before CURRENT.json names it."""
    videos = tmp_path / "v"
    _videos(videos, 3, start_seed=60)
    out = tmp_path / "out"
    ckpt = tmp_path / "tiny.pth"
    x3d.checkpoints.save_mmaction2_checkpoint(x3d.build_model("x3d_tiny"), ckpt)
    cmd = [sys.executable, str(ROOT / "submit.py"), "label", "--input", str(videos), "--output", str(out),
           "--model", "x3d_tiny", "--checkpoint", str(ckpt), "--views", "1", "--shard-size", "1", "--num-cpus", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "X3D_LABEL_CRASH_AT": "index:after-segment"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the local Ray the killed driver started
    assert proc.returncode == -9, err[-2000:]
    assert len(_versions(str(out))) == 3  # every row landed; only the index update was cut short

    env.pop("X3D_LABEL_CRASH_AT")
    rerun = subprocess.run([*cmd[:-1], "--compact"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "label index missing, built: 3 rows from 3 label files" in rerun.stdout  # it never got a CURRENT.json
    assert "0 labelled" in rerun.stdout and "label compact: 3 files" in rerun.stdout
    versions = _versions(str(out))
    assert len(versions) == len(set(versions)) == 3
