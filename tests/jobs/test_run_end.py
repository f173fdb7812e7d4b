"""The end of a run depends on nothing the run cannot control.

* The summary step imports nothing: what it reports (versions included) was gathered at
  start-up, so a working dir replaced under the driver (``ray job submit`` on nodes sharing
  Ray's temp dir) cannot kill it after every video was scored.
* A run whose summary step fails says so in one line, and ``--resume`` finishes it without
  scoring a video.
* The hidden temp file of a write killed mid-way is gone at the end of the next run that owns
  the output (not only once ten minutes old), while a write still in progress is never touched.

Real local Ray, real videos, real Parquet, real processes killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.datasets import resolve_dataset
from jobs.errors import JobStopped
from jobs.evaluate import EvaluateConfig, run_evaluate
from tests.cluster.evalset import PRESET, EvalSet
from tests.jobs.test_atomic_write import WRITER
from x3d import storage

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _config(ev: EvalSet, output: Path, **kw) -> EvaluateConfig:
    spec = resolve_dataset(None, data_root=str(ev.root), ann_file=str(ev.ann_file))
    return EvaluateConfig(dataset=spec, model=PRESET, checkpoint=str(ev.checkpoint), views=1, limit=2, shard_size=1,
                          output=str(output), quiet=True, **kw)


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


def _start_writer(target: Path) -> subprocess.Popen:
    """A process inside ``storage.atomic_local_file(target)``, its bytes on disk, stalled."""
    before = set(_temp_files(target.parent))
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=ENV)
    deadline = time.monotonic() + 60
    while not any((target.parent / n).stat().st_size >= 4 * 1024 * 1024 for n in set(_temp_files(target.parent)) - before):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"writer never wrote (exit {child.poll()})")
        time.sleep(0.02)
    return child


def _killed_write(target: Path) -> str:
    """The temp file a write killed mid-way leaves beside ``target``."""
    before = set(_temp_files(target.parent))
    child = _start_writer(target)
    child.send_signal(signal.SIGKILL)
    child.wait()
    (left,) = set(_temp_files(target.parent)) - before
    return left


def test_orphan_temp_files_go_live_writes_stay(tmp_path: Path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    killed = _killed_write(folder / "part-00001.parquet")
    live = _start_writer(folder / "part-00002.parquet")
    try:
        (live_temp,) = set(_temp_files(folder)) - {killed}
        minute_ago = time.time() - 60  # both past any grace period: only the lock tells them apart
        for name in (killed, live_temp):
            os.utime(folder / name, (minute_ago, minute_ago))
        assert storage.remove_stale_temp_files(str(folder)) == 0  # the age rule keeps both
        assert storage.remove_orphan_temp_files(str(folder)) == 1
        assert _temp_files(folder) == [live_temp]  # the live write is untouched
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow  # two evaluate runs on a real local Ray
def test_summary_failure_then_resume_scores_nothing(evalset: EvalSet, ray_local, tmp_path: Path):
    output = tmp_path / "run"
    (output / "summary.json").mkdir(parents=True)  # something in the way of the last write
    with pytest.raises(JobStopped) as failed:  # not JobError: results are written (exit 5, not 2)
        run_evaluate(_config(evalset, output))
    message = f"{failed.value}; {failed.value.finished}"
    assert "\n" not in message and "--resume" in message and "summary" in message, message
    assert failed.value.output == str(output)
    predictions = output / "predictions"
    shards = sorted(predictions.glob("part-*.parquet"))
    assert [p.name for p in shards] == ["part-00000.parquet", "part-00001.parquet"]
    kept = {p.name: p.stat().st_mtime_ns for p in shards}

    # A later write killed mid-way (seconds ago, not ten minutes) leaves its hidden temp file.
    orphan = _killed_write(predictions / "part-00001.parquet")
    shutil.rmtree(output / "summary.json")

    summary = run_evaluate(_config(evalset, output, resume=True))
    assert {p.name: p.stat().st_mtime_ns for p in predictions.glob("part-*.parquet")} == kept  # nothing scored again
    assert summary["num_videos"] == 2 and summary["videos_per_s"] is None  # this invocation scored no video
    assert json.loads((output / "summary.json").read_text())["num_videos"] == 2
    assert orphan not in _temp_files(predictions) and _temp_files(predictions) == []
    assert _temp_files(output) == []

    # The summary step alone, in a fresh driver whose working dir is removed under it, as
    # under `ray job submit` on nodes sharing Ray's temp dir: it imports nothing new.
    script = f"""
import json, os, sys, tempfile
sys.path.insert(0, {str(ROOT)!r})
import tests.presets
from jobs.datasets import resolve_dataset
from jobs.evaluate import EvaluateConfig, RunTimes, prepare_evaluate, summarise
spec = resolve_dataset(None, data_root={str(evalset.root)!r}, ann_file={str(evalset.ann_file)!r})
cfg = EvaluateConfig(dataset=spec, model={PRESET!r}, checkpoint={str(evalset.checkpoint)!r}, views=1, limit=2,
                     shard_size=1, output={str(output)!r}, quiet=True, resume=True)
job = prepare_evaluate(cfg)
gone = tempfile.mkdtemp()
os.chdir(gone)
os.rmdir(gone)
before = set(sys.modules)
summary = summarise(job, RunTimes(started=0.0, startup_s=0.0, scoring_s=0.0), [], 0, 0)
print(json.dumps({{"new": sorted(set(sys.modules) - before), "versions": summary["versions"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["new"] == [], report["new"]
    assert {"python", "torch", "ray", "decord"} <= set(report["versions"])


@pytest.mark.slow
def test_a_storage_failure_after_the_first_write_is_not_nothing_written(evalset: EvalSet, ray_local, tmp_path: Path, capfd):
    """A shard that cannot be written mid-run used to exit 2, "nothing written", beside the
    shards it had saved; now it is exit 5 with what is saved and the command that continues,
    and that command, once the cause is gone, finishes the run (issue 30)."""
    import shlex

    import submit

    output = tmp_path / "run"
    blocker = output / "predictions" / "part-00001.parquet"
    blocker.mkdir(parents=True)  # a folder where shard 1 goes: its write fails, the others do not
    (blocker / "in-the-way").write_text("x")
    args = ["evaluate", "--video-list", str(evalset.ann_file), "--data-root", str(evalset.root), "--model", PRESET,
            "--checkpoint", str(evalset.checkpoint), "--views", "1", "--limit", "3", "--shard-size", "1", "--output", str(output),
            "--quiet"]
    capfd.readouterr()
    code = submit.main(args)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("submit.py")]
    assert code == submit.EXIT_STOPPED == 5 and len(lines) == 1, err
    assert "Traceback" not in err and "part-00001.parquet" in lines[0] and "saved in" in lines[0], lines[0]
    again = shlex.split(lines[0].split("continue with: ", 1)[1])
    assert again[again.index("evaluate"):] == [*args, "--resume"], again
    assert (output / "run.json").exists()

    shutil.rmtree(blocker)
    assert submit.main(again[again.index("evaluate"):]) == 0
    assert sorted(p.name for p in (output / "predictions").glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    assert (output / "summary.json").exists()
