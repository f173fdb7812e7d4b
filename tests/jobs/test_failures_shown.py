"""A run never hides its failures: on 2 good, 1 missing and 1 corrupt video, ``evaluate`` prints the
with-failures figures beside the scored ones, says "scored 2 of 4 videos, 2 failed" and names
the two failed files with their errors on stderr. ``label``'s all-failed line names the first
error, and a ``--limit`` subset of ``sample`` is not set beside the full set's published figure.

Runs ``submit.main`` in this process on the session's real local Ray, on real tiny videos.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.summary import FAILURES_SHOWN, failure_lines
from tests import presets
from tests.in_process import run_main
from tests.cluster.evalset import tinted_frames
from tests.videos import write_video

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


_main = run_main


@pytest.fixture(scope="module")
def checkpoint(test_preset_checkpoint: str) -> str:
    return test_preset_checkpoint


def _pct(value: float) -> str:
    return f"{100.0 * value:.2f}"


def test_evaluate_with_failures_shows_them(ray_local, tmp_path: Path, checkpoint: str, capfd, monkeypatch):
    videos = tmp_path / "videos"
    for i, name in enumerate(("good_a.mp4", "good_b.mp4")):
        write_video(videos / name, frames=tinted_frames(i, 24, 40, 56), fps=30)
    (videos / "corrupt.mp4").write_bytes(b"not a video at all")
    (tmp_path / "list.txt").write_text("good_a.mp4 0\nmissing.mp4 1\ngood_b.mp4 1\ncorrupt.mp4 2\n")
    output = tmp_path / "run"
    code, out, err = _main(["--video-list", "list.txt", "--data-root", "videos", "--model", presets.NAME, "--checkpoint", checkpoint,
                            "--views", "1", "--output", str(output)], capfd, monkeypatch, tmp_path)
    assert code == 0, err
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["num_videos"], summary["num_ok"], summary["num_failed"]) == (4, 2, 2)

    # stdout: both figures in the table, true counts in the result line
    table = [line for line in out.splitlines() if line.startswith("| this run")]
    assert len(table) == 2, out
    assert table[0].startswith("| this run, 2 scored videos") and _pct(summary["top1_acc"]) in table[0], out
    assert table[1].startswith("| this run, all 4 (failed = miss)"), out
    assert _pct(summary["top1_acc_with_failures"]) in table[1] and _pct(summary["top5_acc_with_failures"]) in table[1], out
    last = out.strip().splitlines()[-1]
    assert last.startswith("scored 2 of 4 videos, 2 failed; this run: 4 videos in "), last

    # stderr: the two failed files, each with its error, and where every failure is recorded
    lines = err.strip().splitlines()
    start = lines.index("evaluate: 2 videos failed:")
    named = lines[start + 1 : start + 3]
    assert any(str(videos / "missing.mp4") in line for line in named), err
    assert any(str(videos / "corrupt.mp4") in line and len(line.split(":", 1)[1].strip()) > 0 for line in named), err
    assert lines[start + 3] == (f"evaluate: every failed video has an error row in {output}/predictions "
                                f"(figures with failures: {output}/summary.md)"), err
    assert "good_a" not in err and "good_b" not in err


def test_failure_lines_name_at_most_five_and_say_where_the_rest_are():
    failures = [(f"v{i}.mp4", f"/data/v{i}.mp4: cannot decode") for i in range(FAILURES_SHOWN + 3)]
    lines = failure_lines(failures, total=40, where="out/predictions")
    assert lines[0] == "evaluate: 40 videos failed:"
    assert lines[1:-1] == [f"  /data/v{i}.mp4: cannot decode" for i in range(FAILURES_SHOWN)]  # the path is not said twice
    assert lines[-1] == "evaluate: 35 more not listed here; every failed video has an error row in out/predictions"
    assert failure_lines([("a.mp4", "timed out")], 1, "out", job="label") == [
        "label: 1 video failed:", "  a.mp4: timed out", "label: every failed video has an error row in out"]
    assert failure_lines([], 0, "out") == []


def test_label_all_failed_names_the_first_error(ray_local, tmp_path: Path, checkpoint: str, capfd, monkeypatch):
    (tmp_path / "in").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "in" / name).write_bytes(b"not a video")
    code, out, err = _main(["label", "--input", "in", "--output", "labels", "--model", presets.NAME, "--checkpoint", checkpoint,
                            "--views", "1"], capfd, monkeypatch, tmp_path)
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert "none of the 2 videos to label could be labelled (the first: " in last, last
    first = last.split("(the first: ", 1)[1]
    assert first.startswith(("in/a.mp4", "in/b.mp4")) and len(first.split(":", 1)[1].split(")")[0].strip()) > 0, last
    assert "label: 2 videos failed:" in err and "label: every failed video has an error row in labels/labels" in err, err


def test_a_limited_sample_run_is_not_set_beside_the_published_figure(ray_local, tmp_path: Path, capfd, monkeypatch):
    """x3d_tiny's 91.5 % is over the 200 sample videos; 6 of them do not compare."""
    monkeypatch.setenv("X3D_CACHE", str(tmp_path / "cache"))
    code, out, err = _main(["--dataset", "sample", "--limit", "6", "--views", "1", "--output", "run"], capfd, monkeypatch, tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["published"] == []
    assert "train_tiny" not in out and "sample val" not in out, out
