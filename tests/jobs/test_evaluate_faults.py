"""The evaluate job under faults: a model actor killed mid-run, the driver killed mid-run.

Real local Ray, real videos, real Parquet, real processes killed with SIGKILL; the oracles
are the same as in test_evaluate.py (``x3d.predict_video`` for every video, accuracy worked
out here from the labels) plus an uninterrupted run of the same job.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from jobs.datasets import resolve_dataset
from jobs.evaluate import EvaluateConfig, run_evaluate
from tests.cluster.evalset import (
    ACC_KEYS,
    PRESET,
    PROB_TOL,
    VIEWS,
    EvalSet,
    assert_rows_scored,
    assert_summary_all_scored,
    kill_session,
    wait_session_gone,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
# Everything in summary.json that depends on the results, not on when or how fast they were made.
RESULT_KEYS = ACC_KEYS + ("num_videos", "num_ok", "num_failed", "num_labelled", "dataset", "model", "views", "protocol",
                          "checkpoint", "checkpoint_sha256", "published")
EXACT_COLUMNS = ("video", "label", "pred", "pred_name", "topk_classes", "num_views", "error")


def config(ev: EvalSet, output: str, **kw) -> EvaluateConfig:
    spec = resolve_dataset(None, data_root=str(ev.root), ann_file=str(ev.ann_file))
    return EvaluateConfig(dataset=spec, model=PRESET, checkpoint=str(ev.checkpoint), views=VIEWS, output=output, quiet=True, **kw)


def read_rows(output: Path) -> dict[str, list]:
    return ds.dataset(str(output / "predictions"), format="parquet").to_table().to_pydict()


def shard_files(output: Path) -> list[Path]:
    """Finished shards (temp files of interrupted writes are hidden: '.part-…')."""
    folder = output / "predictions"
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def _pid_of(worker: str) -> int:
    host, _, pid = worker.rpartition(":")
    assert host == socket.gethostname(), worker
    return int(pid)


def _is_model_actor(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.startswith(b"ray::ModelActor")


# ----------------------------------------------------------------------------- actor killed


def test_model_actor_killed_mid_run(evalset: EvalSet, ray_local, tmp_path: Path):
    """SIGKILL the model actor's process once the first shard has landed; Ray restarts it and
    retries its calls, and the job ends with one row per video and the reference scores.

    The actor's pid is read from the first shard's ``worker`` column (the process that scored
    those videos). It is stopped (SIGSTOP) for a moment before the kill, so the driver has
    dispatched calls to it that are queued or running when it dies: in-flight work is lost
    for certain, not only by luck of timing.
    """
    output = tmp_path / "run"
    shard_size, total_shards = 2, -(-len(evalset.names) // 2)
    stop = threading.Event()
    kill: dict = {}

    def kill_the_scorer() -> None:
        try:
            while not stop.is_set() and not shard_files(output):
                stop.wait(0.02)
            if stop.is_set():
                return
            pid = _pid_of(pq.read_table(shard_files(output)[0]).column("worker")[0].as_py())
            if not _is_model_actor(pid):  # never signal anything but our own actor
                kill["error"] = f"pid {pid} is not a model actor"
                return
            os.kill(pid, signal.SIGSTOP)
            stop.wait(1.5)  # the driver keeps decoding and queues calls on the stopped actor
            kill["shards_before"] = len(shard_files(output))
            os.kill(pid, signal.SIGKILL)
            kill["pid"] = pid
        except Exception as exc:  # reported by the assertions below
            kill["error"] = repr(exc)

    killer = threading.Thread(target=kill_the_scorer, daemon=True)
    killer.start()
    try:
        summary = run_evaluate(config(evalset, str(output), shard_size=shard_size))
    finally:
        stop.set()
        killer.join(30)

    assert "error" not in kill, kill
    assert "pid" in kill, "the run ended before the actor could be killed"
    assert kill["shards_before"] < total_shards  # the kill landed mid-run
    rows = read_rows(output)
    assert_rows_scored(evalset, rows, evalset.names)
    pids = collections.Counter(_pid_of(w) for w in rows["worker"])
    assert kill["pid"] in pids  # it scored the first shard ...
    assert len(pids) >= 2, pids  # ... and a restarted (new) process scored the rest
    assert not _is_model_actor(kill["pid"])
    assert_summary_all_scored(evalset, summary, evalset.names)


# ----------------------------------------------------------------------------- driver killed


def _file_state(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_driver_killed_then_resume_equals_uninterrupted_run(evalset: EvalSet, ray_local, tmp_path: Path):
    """``python submit.py evaluate`` (its own local Ray) is SIGKILLed, with every process of its
    session, after the first Parquet shard lands; the same command with ``--resume`` keeps the
    finished shards untouched and ends with the Parquet set and summary of an uninterrupted run.

    One video per shard (ten shards), so that when the first lands most of the work is left.
    """
    reference = tmp_path / "reference"
    ref_summary = run_evaluate(config(evalset, str(reference), shard_size=1))

    output = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "submit.py"), "evaluate", "--video-list", str(evalset.ann_file),
           "--data-root", str(evalset.root), "--model", PRESET, "--checkpoint", str(evalset.checkpoint),
           "--views", str(VIEWS), "--shard-size", "1", "--num-cpus", "2", "--output", str(output)]
    # A short private RAY_TMPDIR: the CLI's Ray keeps its session (and socket paths) there,
    # away from /tmp/ray and from anyone else's Ray on this machine.
    ray_tmp = Path(tempfile.mkdtemp(prefix="x3dr-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), X3D_PRESETS_MODULE="tests.presets", RAY_TMPDIR=str(ray_tmp))
    sessions: list[int] = []
    try:
        with open(tmp_path / "killed.log", "wb") as log:
            proc = subprocess.Popen(cmd + ["--quiet"], cwd=tmp_path, env=env, start_new_session=True,
                                    stdout=log, stderr=subprocess.STDOUT)
        sessions.append(proc.pid)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not shard_files(output):
            time.sleep(0.02)
        finished_early = proc.poll() is not None
        kill_session(proc.pid)  # the driver, its raylet, GCS and workers: nothing survives
        proc.wait(timeout=30)
        assert not finished_early, (tmp_path / "killed.log").read_text()[-3000:]
        assert wait_session_gone(proc.pid, timeout_s=30) == []

        kept = {p.name: _file_state(p) for p in shard_files(output)}
        assert 1 <= len(kept) < len(evalset.names), sorted(kept)  # killed mid-run, with work left

        rerun = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=300, start_new_session=True)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        for sid in sessions:
            kill_session(sid)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # The finished shards were not recomputed: same bytes, never rewritten, and the log says so.
    assert f"resuming, {len(kept)} shards already finished" in rerun.stderr
    left = len(evalset.names) - len(kept)
    assert re.search(rf"\b{left}/{left} videos\b", rerun.stderr), rerun.stderr[-2000:]
    for name, state in kept.items():
        assert _file_state(output / "predictions" / name) == state, name

    # The Parquet set equals the uninterrupted run's, file by file.
    names = [p.name for p in shard_files(output)]
    assert names == [p.name for p in shard_files(reference)] == [f"part-{i:05d}.parquet" for i in range(10)]
    for name in names:
        got = pq.read_table(output / "predictions" / name).to_pydict()
        want = pq.read_table(reference / "predictions" / name).to_pydict()
        for column in EXACT_COLUMNS:
            assert got[column] == want[column], (name, column)
        for column in ("probs", "topk_scores"):
            np.testing.assert_allclose(np.asarray(got[column]), np.asarray(want[column]), atol=PROB_TOL, rtol=0)
    assert_rows_scored(evalset, read_rows(output), evalset.names)

    summary = json.loads((output / "summary.json").read_text())
    for key in RESULT_KEYS:
        assert summary[key] == ref_summary[key], key
    assert json.loads((output / "run.json").read_text()) == json.loads((reference / "run.json").read_text())
    # Throughput is this invocation's: the resumed videos over the resumed run's scoring time.
    assert summary["videos_this_run"] == left
    assert summary["videos_per_s"] == pytest.approx(left / summary["scoring_s"], rel=0.01)
