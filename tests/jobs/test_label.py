"""The nightly labeling job on a real local Ray: incremental, idempotent, resumable, on disk and S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import x3d
from x3d import storage
from jobs.label import plan_label, read_labels, run_label
from tests.jobs.labeljob import LABEL_TEST, label_config as _config, label_versions as _versions, write_label_videos as _videos
from tests.videos import write_video

pytestmark = pytest.mark.slow  # label runs on a real local Ray

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]

def test_incremental_runs_on_a_local_folder(tmp_path, ray_local, checkpoint):
    videos = tmp_path / "videos"
    _videos(videos, 5)
    (videos / "broken.mp4").write_bytes(b"not a video")
    out = str(tmp_path / "labels")

    first = run_label(_config(str(videos), out, checkpoint, max_attempts=2))
    assert (first["labelled"], first["failed"]) == (5, 1)
    table = read_labels(out)
    assert table.num_rows == 6
    ok = [r for r in table.to_pylist() if r["error"] is None]
    assert all(len(r["labels"]) == 5 and r["scores"] == sorted(r["scores"], reverse=True) for r in ok)
    assert [r for r in table.to_pylist() if r["error"]][0]["video"].endswith("broken.mp4")

    # Second run: nothing new, only the failed video is retried (attempt 2 of 2).
    second = run_label(_config(str(videos), out, checkpoint, max_attempts=2))
    assert (second["skipped"], second["retries"], second["labelled"], second["failed"]) == (5, 1, 0, 1)
    # Third run: the broken video has used its attempts; nothing at all to do.
    third = run_label(_config(str(videos), out, checkpoint, max_attempts=2))
    assert (third["skipped"], third["given_up"], third["labelled"], third["failed"]) == (5, 1, 0, 0)
    # Through the command line (nothing to do: no Ray starts), the given-up video is reported as
    # given up, not as already labelled, by a run and by --plan (issue 30).
    cli = [sys.executable, str(ROOT / "submit.py"), "label", "--input", str(videos), "--output", out, "--model", "x3d_label_test",
           "--checkpoint", checkpoint, "--views", "1", "--shard-size", "2", "--max-attempts", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "X3D_PRESETS_MODULE": "tests.jobs.labeljob"}
    given_up = "1 given up after 2 failed attempts (not labelled; a higher --max-attempts retries them)"
    run = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and f"label: 6 listed, 5 already labelled, {given_up}, 0 labelled, 0 failed" in run.stdout, run
    plan = subprocess.run(cli + ["--plan"], env=env, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0 and f"5 already labelled, {given_up}, 0 new or changed" in plan.stdout, plan

    # Add one video and modify another: exactly those two are processed.
    write_video(videos / "clip_new.mp4", 30, 40, 56, 25, seed=99)
    write_video(videos / "clip_01.mp4", 33, 40, 56, 25, seed=77)
    plan = plan_label(_config(str(videos), out, checkpoint, max_attempts=2))
    assert (plan["new"], plan["to_process"]) == (2, 2)
    fourth = run_label(_config(str(videos), out, checkpoint, max_attempts=2))
    assert (fourth["new"], fourth["labelled"], fourth["failed"]) == (2, 2, 0)
    rows = _versions(out)
    assert len(rows) == len(set(rows)) == 9  # 5 + broken (attempts 1, 2) + new + modified
    assert read_labels(out).num_rows == 8  # one row per video version: its latest attempt


def test_labels_match_predict_video(tmp_path, ray_local, checkpoint):
    videos = tmp_path / "v"
    paths = _videos(videos, 3, start_seed=10)
    out = str(tmp_path / "labels")
    run_label(_config(str(videos), out, checkpoint))
    model = x3d.load_model("x3d_label_test", checkpoint=checkpoint)
    rows = {Path(r["video"]).name: r for r in read_labels(out).to_pylist()}
    classes = LABEL_TEST.classes
    for path in paths:
        probs = x3d.predict_video(model, str(path), LABEL_TEST, views=1)
        top = np.argsort(probs)[-5:][::-1]
        assert rows[path.name]["labels"] == [classes[i] for i in top]
        np.testing.assert_allclose(rows[path.name]["scores"], probs[top], atol=1e-5)


def test_incremental_runs_on_s3(tmp_path, ray_local, checkpoint, s3_env):
    bucket = s3_env
    local = _videos(tmp_path / "v", 3, start_seed=20)
    for path in local:
        storage.write_bytes(f"s3://{bucket}/incoming/{path.name}", path.read_bytes())
    prefix, out = f"s3://{bucket}/incoming/", f"s3://{bucket}/labels"

    first = run_label(_config(prefix, out, checkpoint))
    assert first["labelled"] == 3
    assert run_label(_config(prefix, out, checkpoint))["skipped"] == 3
    # A new object and a rewritten one (new etag) are the only work of the next run.
    storage.write_bytes(f"s3://{bucket}/incoming/extra.mp4", local[0].read_bytes())
    storage.write_bytes(f"s3://{bucket}/incoming/{local[1].name}", local[2].read_bytes())
    third = run_label(_config(prefix, out, checkpoint))
    assert (third["new"], third["labelled"]) == (2, 2)
    versions = _versions(out)
    assert len(versions) == len(set(versions)) == 5


@pytest.mark.timeout(300)
def test_killed_run_resumes_with_one_row_per_version(tmp_path, checkpoint):
    """The CLI process is SIGKILLed after its first shard lands; --resume finishes the rest.

    Twenty one-video shards, so that work is still left when the first one lands: with fewer,
    a fast machine could finish them all between two looks at the output folder.
    """
    total = 20
    videos = tmp_path / "v"
    _videos(videos, total, start_seed=40)
    out = tmp_path / "labels"
    tiny_ckpt = tmp_path / "tiny.pth"
    x3d.checkpoints.save_mmaction2_checkpoint(x3d.build_model("x3d_tiny"), tiny_ckpt)
    cmd = [sys.executable, str(ROOT / "submit.py"), "label", "--input", str(videos), "--output", str(out),
           "--model", "x3d_tiny", "--checkpoint", str(tiny_ckpt), "--views", "10", "--shard-size", "1",
           "--num-cpus", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    labels = out / "labels"
    while time.monotonic() < deadline and proc.poll() is None:
        if labels.exists() and any(labels.rglob("part-*.parquet")):  # labels/date=YYYY-MM-DD/
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_labels(str(out), latest_only=False).num_rows
    assert 0 < partial or not killed

    rerun = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    versions = _versions(str(out))
    assert len(versions) == len(set(versions)) == total
    if killed:
        assert partial < total  # the kill landed mid-run, so the resume had real work left
