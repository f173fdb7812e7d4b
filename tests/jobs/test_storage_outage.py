"""A storage outage is the infrastructure's failure, not the videos' (issue 30).

The label job reads its videos from the test S3 server through a proxy (tests/faulty_s3.py)
that answers ``503 SlowDown`` to every video GET while an outage lasts. Before: each video the
outage reached became a permanent error row that used up one of its ``--max-attempts``, so
three bad nights gave good videos up for ever. Now such a video is read again after a backoff
within the run; a storage that fails every read for ``--storage-outage`` seconds stops the run
with exit 4 and the command that finishes it, and no row counts an attempt against a video.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import x3d
from jobs.label import read_labels
from tests.videos import write_video
from x3d import storage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]
GOOD = [f"incoming/clip_{i:02d}.mp4" for i in range(6)]


@pytest.fixture
def label_input(tmp_path: Path, s3_env: str) -> tuple[str, Path]:
    for i, key in enumerate(GOOD):
        clip = write_video(tmp_path / f"{i}.mp4", num_frames=16 + i, height=32, width=40, seed=i)
        storage.write_bytes(f"s3://{s3_env}/{key}", clip.read_bytes())  # direct to the server
    storage.write_bytes(f"s3://{s3_env}/incoming/broken.mp4", b"this is not a video\n" * 40)
    checkpoint = tmp_path / "tiny.pth"
    x3d.checkpoints.save_mmaction2_checkpoint(x3d.build_model("x3d_tiny"), checkpoint)
    return s3_env, checkpoint


def label(bucket: str, checkpoint: Path, cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "submit.py"), "label", "--input", f"s3://{bucket}/incoming/",
           "--output", str(cwd / "labels"), "--model", "x3d_tiny", "--checkpoint", str(checkpoint), "--views", "1",
           "--shard-size", "3", "--num-cpus", "2", "--max-attempts", "1", "--quiet", *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_MAX_ATTEMPTS": "2"}  # AWS_ENDPOINT_URL: the proxy
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def video_gets(until: list[float], lasts_s: float | None = None):
    """Matches every video GET while the outage lasts: until ``until[0]`` (a monotonic time),
    or for ``lasts_s`` from the first video GET (the run's start-up takes a while)."""
    def matches(method: str, path: str) -> bool:
        if method != "GET" or "/incoming/" not in path:
            return False
        if lasts_s is not None and until[0] == float("inf"):
            until[0] = time.monotonic() + lasts_s
        return time.monotonic() < until[0]
    return matches


def test_an_outage_that_ends_mid_run_costs_no_video(tmp_path: Path, label_input, faulty_s3):
    bucket, checkpoint = label_input
    until = [float("inf")]
    proxy = faulty_s3(1.0, mode="unavailable", matches=video_gets(until, lasts_s=20.0))
    run = label(bucket, checkpoint, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert any(hit for _, _, hit in proxy.requests), "the outage reached no video read; nothing was tested"
    rows = {r["video"]: r for r in read_labels(str(tmp_path / "labels")).to_pylist()}
    assert sorted(rows) == sorted(f"s3://{bucket}/{k}" for k in [*GOOD, "incoming/broken.mp4"])
    failed = {v: (r["error"], r["failure"]) for v, r in rows.items() if r["error"]}
    assert list(failed) == [f"s3://{bucket}/incoming/broken.mp4"], failed  # the outage made no error row
    assert failed[f"s3://{bucket}/incoming/broken.mp4"][1] == "video"


def test_an_outage_that_lasts_stops_the_run_and_the_next_run_finishes(tmp_path: Path, label_input, faulty_s3):
    bucket, checkpoint = label_input
    until = [float("inf")]
    faulty_s3(1.0, mode="unavailable", matches=video_gets(until))
    down = label(bucket, checkpoint, tmp_path, "--storage-outage", "15")
    assert down.returncode == 4, (down.returncode, down.stderr[-3000:])
    lines = [line for line in down.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "storage has failed every read" in lines[0], down.stderr[-3000:]
    assert "finish the run with: python submit.py label" in lines[0]
    again = label(bucket, checkpoint, tmp_path, "--storage-outage", "15")  # a second bad night
    assert again.returncode == 4, again.stderr[-3000:]

    until[0] = 0.0  # the storage is back; --max-attempts 1, yet no good video was given up
    run = label(bucket, checkpoint, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["video"]: r for r in read_labels(str(tmp_path / "labels")).to_pylist()}
    labelled = sorted(v for v, r in rows.items() if not r["error"])
    assert labelled == sorted(f"s3://{bucket}/{k}" for k in GOOD)
