"""Ctrl-C and SIGTERM stop ``python submit.py evaluate`` cleanly, and ``--resume`` finishes it.

The command runs in its own session, with its own local Ray in a private ``RAY_TMPDIR``, on
twenty one-video shards so that work is left when the first lands. SIGINT goes to the whole
process group (what a terminal's Ctrl-C does: the driver and the Ray processes it started);
SIGTERM to the driver alone (what Kubernetes sends to a pod's main process). Each stop must be
exit 130 / 143, one line on stderr with no traceback naming what is saved and the resume
command, and no process of the session left. The resume command printed is then run as
given and must end with every video's row exactly once.
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.cluster.evalset import PRESET, EvalSet, replicate_evalset
from tests.jobs.stopping import signal_when

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def _shards(output: Path) -> list[Path]:
    folder = output / "predictions"
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def test_sigint_then_sigterm_then_resume(evalset: EvalSet, tmp_path: Path):
    # Enough videos that neither stop can come after the last shard: the pipeline keeps up to
    # ~22 videos in flight here (2 units of 6 per decode slot, 2 calls of 3, 4 more), and when
    # the actor starts after they decoded, their shards land within one poll (20 of 20 once).
    root, ann_file, origin = replicate_evalset(evalset, tmp_path / "set", copies=6)
    output = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "submit.py"), "evaluate", "--video-list", str(ann_file), "--data-root", str(root),
           "--model", PRESET, "--checkpoint", str(evalset.checkpoint), "--views", "10", "--shard-size", "1",
           "--num-cpus", "2", "--output", str(output)]
    ray_tmp = Path(tempfile.mkdtemp(prefix="x3di-", dir="/tmp"))  # short: Ray's socket paths live there
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), X3D_PRESETS_MODULE="tests.presets", RAY_TMPDIR=str(ray_tmp))
    try:
        resume = None
        for sig, want in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            run = cmd if resume is None else resume
            before = len(_shards(output))
            code, stderr, leftover = signal_when(run, env, tmp_path, lambda: len(_shards(output)) > before, sig,
                                                 tmp_path / f"stderr-{sig}.log", "a shard landed")
            landed = len(_shards(output))  # at the exit: no more than when the signal went
            lines = [line for line in stderr.splitlines() if line.startswith("submit.py:")]
            detail = f"{signal.Signals(sig).name}: exit {code}\n{stderr[-3000:]}"
            assert code == want, detail
            assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, detail
            assert "*** SIGTERM" not in stderr and "Aborted" not in stderr, detail  # no C++ signal dump
            assert len(lines) == 1 and stderr.rstrip("\n").endswith(lines[0]), detail  # the last line, alone
            assert f"interrupted ({signal.Signals(sig).name})" in lines[0] and "shards" in lines[0], detail
            assert leftover == [], f"processes of the session left: {leftover}; {detail}"
            assert landed < len(origin), detail  # stopped with work left
            resume = shlex.split(lines[0].split("resume with: ", 1)[1])
            assert resume[-1] == "--resume" and str(output) in resume, resume
            resume[0] = sys.executable if resume[0] == "python" else resume[0]
        stopped_at = len(_shards(output))
        assert stopped_at < len(origin)
        final = subprocess.run(resume, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                               start_new_session=True)
        assert final.returncode == 0, final.stderr[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    rows = ds.dataset(str(output / "predictions"), format="parquet").to_table().to_pydict()
    counts = collections.Counter(rows["video"])
    assert sorted(counts) == sorted(origin) and set(counts.values()) == {1}
    assert all(e is None for e in rows["error"])
    assert (output / "summary.json").exists()
