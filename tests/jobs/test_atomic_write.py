"""A writer killed mid-write must leave no file a reader could mistake for a finished shard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from jobs import results
from x3d import storage

ROOT = Path(__file__).resolve().parents[2]

# The child writes a shard through the project's one atomic-write helper: the first few MiB
# reach the temp file, then the writer stalls, standing in for a slow disk or a huge shard.
# The parent waits until it sees those bytes on disk and kills the child.
WRITER = """
import sys, time
from x3d import storage

with storage.atomic_local_file(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"PAR1" + b"\\0" * (4 * 1024 * 1024))
        f.flush()
        time.sleep(120)
        f.write(b"PAR1")
"""


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []


def test_killed_writer_leaves_no_visible_shard(tmp_path: Path):
    out = tmp_path / "run"
    results.write_shard(str(out), 0, [_row("done.mp4")])
    predictions = out / "predictions"

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", WRITER, results.shard_uri(str(out), 7)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size >= 4 * 1024 * 1024 for p in _temp_files(predictions)):
            if child.poll() is not None:
                pytest.fail(f"writer exited early with {child.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("writer never started writing")
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    # The interrupted write really happened: its temp file is still there ...
    leftovers = _temp_files(predictions)
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".part-00007.parquet.")
    # ... but neither our listing nor a plain Parquet reader sees it.
    assert not (predictions / "part-00007.parquet").exists()
    assert results.list_shards(str(out)) == {0: results.shard_uri(str(out), 0)}
    assert [os.path.basename(f) for f in ds.dataset(str(predictions)).files] == ["part-00000.parquet"]
    assert results.read_predictions(str(out)).column("video").to_pylist() == ["done.mp4"]

    # Resuming the job simply writes the shard again.
    results.write_shard(str(out), 7, [_row("redo.mp4")])
    assert results.read_predictions(str(out)).column("video").to_pylist() == ["done.mp4", "redo.mp4"]

    # A resumed run clears the killed write's temp file once it is old enough to be nobody's
    # current write; a recent one (another process may be writing it) stays.
    fresh = predictions / ".part-00009.parquet.0123456789ab.tmp"
    fresh.write_bytes(b"being written")
    not_ours = predictions / ".notes.tmp"
    not_ours.write_bytes(b"x")
    assert storage.remove_stale_temp_files(str(predictions)) == 0
    hour_ago = time.time() - 3600
    os.utime(leftovers[0], (hour_ago, hour_ago))
    os.utime(not_ours, (hour_ago, hour_ago))
    assert storage.remove_stale_temp_files(str(predictions)) == 1
    assert sorted(p.name for p in _temp_files(predictions)) == [".notes.tmp", fresh.name]
    assert results.read_predictions(str(out)).column("video").to_pylist() == ["done.mp4", "redo.mp4"]


def _row(video: str) -> dict:
    return {
        "video": video,
        "topk_classes": [1],
        "topk_scores": [1.0],
        "num_views": 1,
        "decode_ms": 1.0,
        "infer_ms": 1.0,
        "worker": "test",
    }
