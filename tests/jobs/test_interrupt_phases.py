"""A stop at any phase of ``submit.py evaluate`` is clean: one line with what is saved and the exact
command to go on, exit 130 (SIGINT) or 143 (SIGTERM), no process left.

The phases are reached deterministically through the test hook ``X3D_TEST_PAUSE_AT``
(``jobs.interrupts.pause_point``): the command writes the phase's name to ``X3D_TEST_PAUSE_FILE``
and waits there; the test then sends the signal. SIGINT goes to the whole process group (a
terminal's Ctrl-C), SIGTERM to the driver alone (Kubernetes). After the last video (``scored``)
SIGTERM used to kill the driver silently: Ray's shutdown had left SIGTERM at its default.
The command a stop prints is then run as given and must finish the run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.cluster.evalset import PRESET, EvalSet
from tests.jobs.stopping import signal_when

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
VIDEOS = 3

# (phase, signal, what the line says is saved)
CASES = [
    ("startup", signal.SIGTERM, "during start-up: nothing is saved; run it again with: "),
    ("startup", signal.SIGINT, "during start-up: nothing is saved; run it again with: "),
    ("scoring", signal.SIGTERM, f"1 of {VIDEOS} shards (1 of {VIDEOS} videos) saved in "),
    ("stopping", signal.SIGTERM, f"{VIDEOS} of {VIDEOS} shards ({VIDEOS} of {VIDEOS} videos) saved in "),
    ("scored", signal.SIGTERM, "every video is saved in "),
    ("scored", signal.SIGINT, "every video is saved in "),
    ("summary", signal.SIGINT, "every video is saved in "),
]


def _stop_at(cmd: list[str], env: dict, cwd: Path, phase: str, sig: int) -> tuple[int, str, list[int]]:
    """Run ``cmd`` paused at ``phase``, signal it there; (exit status, stderr, processes left)."""
    cue = cwd / f"cue-{phase}-{sig}"
    env = {**env, "X3D_TEST_PAUSE_AT": phase, "X3D_TEST_PAUSE_FILE": str(cue)}
    return signal_when(cmd, env, cwd, cue.exists, sig, cwd / f"stderr-{phase}-{sig}.log", f"reaching {phase}")


@pytest.mark.parametrize("phase,sig,saved", CASES, ids=[f"{p}-{signal.Signals(s).name}" for p, s, _ in CASES])
def test_a_stop_in_each_phase_is_one_line_and_the_command_goes_on(phase: str, sig: int, saved: str, evalset: EvalSet,
                                                                   tmp_path: Path):
    names = evalset.names[:VIDEOS]
    (tmp_path / "list.txt").write_text("".join(f"{n} {evalset.labels[n]}\n" for n in names))
    output = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "submit.py"), "evaluate", "--video-list", "list.txt", "--data-root", str(evalset.root),
           "--model", PRESET, "--checkpoint", str(evalset.checkpoint), "--views", "1", "--shard-size", "1",
           "--num-cpus", "2", "--output", str(output)]
    ray_tmp = Path(tempfile.mkdtemp(prefix="x3dp-", dir="/tmp"))  # short: Ray's socket paths live there
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "X3D_TEST_"))}
    env.update(PYTHONPATH=str(ROOT), X3D_PRESETS_MODULE="tests.presets", RAY_TMPDIR=str(ray_tmp))
    try:
        code, stderr, leftover = _stop_at(cmd, env, tmp_path, phase, sig)
        name = signal.Signals(sig).name
        detail = f"{phase} {name}: exit {code}\n{stderr[-3000:]}"
        assert code == 128 + sig, detail
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "*** SIGTERM" not in stderr, detail
        lines = [line for line in stderr.splitlines() if line.startswith("submit.py:")]
        assert len(lines) == 1 and stderr.rstrip("\n").endswith(lines[0]), detail  # the last line, alone
        assert lines[0].startswith(f"submit.py: interrupted ({name})") and saved in lines[0], detail
        assert leftover == [], f"processes of the session left: {leftover}; {detail}"

        again = shlex.split(lines[0].split(": ", 1)[1].split(" with: ", 1)[1])
        if phase == "startup":
            assert again[2:] == cmd[2:] and not output.exists(), again  # the same command; nothing written
        else:
            assert again[2:] == [*cmd[2:], "--resume"], again
            assert not (output / "summary.json").exists(), detail
        again[0] = sys.executable if again[0] == "python" else again[0]
        final = subprocess.run(again, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, start_new_session=True)
        assert final.returncode == 0, final.stderr[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert sorted(pq.read_table(output / "predictions").column("video").to_pylist()) == sorted(names)
    assert (output / "summary.json").exists()
