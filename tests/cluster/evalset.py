"""A small labelled video set, its checkpoint and reference scores, for the evaluate-job tests.

Built once per test session (``build_evalset`` is memoised by folder) and shared by
``tests/cluster`` and ``tests/jobs/test_evaluate.py``:

* ~10 real MP4s of different sizes, frame rates and lengths (one shorter than a clip, so
  MMAction2's wrap-around sampling runs), each tinted differently so the random model tells
  them apart;
* a random-weight ``x3d_test`` checkpoint (``tests/presets.py``);
* reference probabilities from ``x3d.predict_video``, the library's own single-process path,
  which every Ray run must reproduce;
* an MMAction2 video list whose labels are chosen from those references, so top-1, top-5 and
  mean-class accuracy are all strictly between 0 and 1.

Also here: the accuracy arithmetic the tests use to check ``summary.json`` without
``jobs.metrics``, the checks of a run's rows and summary against the references, and helpers
to watch and kill the process sessions the tests start.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import x3d
from tests import presets, videos

PRESET = presets.NAME
VIEWS = 30
#: how far a job's probabilities may be from ``x3d.predict_video``'s on the same video: float
#: noise only (other batch shapes, BatchNorm folded), never a different computation
PROB_TOL = 1e-5

# (frames, height, width, fps): different sizes, rates, lengths; 6 frames < one 4x2 clip at 30 fps.
# No width of 48 or 72: decord 0.6 fails on those tiny widths (a row stride mismatch in its
# frame copy), which real videos never have.
SHAPES = [
    (24, 40, 56, 30),
    (40, 48, 64, 25),
    (6, 36, 52, 30),
    (60, 64, 52, 24),
    (33, 32, 80, 30),
    (48, 56, 76, 15),
    (20, 52, 52, 60),
    (90, 40, 64, 30),
    (15, 72, 96, 12),
    (36, 44, 60, 29),
]


@dataclass
class EvalSet:
    root: Path  # data root of the video list
    ann_file: Path  # MMAction2 video list: "name label"
    checkpoint: Path
    names: list[str]  # video keys, in list order
    labels: dict[str, int]
    probs: dict[str, np.ndarray] = field(repr=False)  # reference fused scores per video

    def topk(self, name: str, k: int = 5) -> list[int]:
        p = self.probs[name]
        order = np.argsort(-p, kind="stable")
        return [int(c) for c in order[:k]]

    def pred(self, name: str) -> int:
        return int(np.argmax(self.probs[name]))


def tinted_frames(index: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """``videos.moving_frames`` with a per-video contrast and colour cast."""
    rng = np.random.default_rng(1000 + index)
    frames = videos.moving_frames(num_frames, height, width, seed=index).astype(np.float32)
    frames = frames * rng.uniform(0.3, 1.0) + rng.integers(-60, 60, size=3)
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_videos(folder: Path, shapes=SHAPES, prefix: str = "clip") -> list[str]:
    """Encode one video per shape under ``folder`` (in sub-folders, as Kinetics has); return keys."""
    names = []
    for i, (frames, height, width, fps) in enumerate(shapes):
        name = f"{'ab'[i % 2]}/{prefix}{i:02d}.mp4"
        videos.write_video(folder / name, frames=tinted_frames(i, frames, height, width), fps=fps)
        names.append(name)
    return names


def choose_labels(names: list[str], probs: dict[str, np.ndarray]) -> dict[str, int]:
    """Labels that make the metrics interesting: some top-1 hits, some top-5-only hits, misses."""
    labels = {}
    for i, name in enumerate(names):
        order = np.argsort(-probs[name], kind="stable")
        labels[name] = int(order[[0, 2, 0, 399, 4][i % 5]])
    return labels


def write_video_list(path: Path, entries: list[tuple[str, int | None]]) -> Path:
    path.write_text("".join(f"{name} {'' if label is None else label}".rstrip() + "\n" for name, label in entries))
    return path


@lru_cache(maxsize=None)
def build_evalset(folder: Path) -> EvalSet:
    folder.mkdir(parents=True, exist_ok=True)
    root = folder / "videos"
    names = write_videos(root)
    checkpoint = presets.write_checkpoint(folder / "x3d_test.pth", seed=0)
    model = x3d.load_model(PRESET, str(checkpoint))
    probs = {name: x3d.predict_video(model, str(root / name), preset=PRESET, views=VIEWS) for name in names}
    labels = choose_labels(names, probs)
    ann_file = write_video_list(folder / "val_list.txt", [(n, labels[n]) for n in names])
    return EvalSet(root, ann_file, checkpoint, names, labels, probs)


def ray_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


# ----------------------------------------------------------------------------- metrics


def expected_accuracy(rows: list[tuple[int, list[int] | None]]) -> dict[str, float]:
    """top-1, top-5 and MMAction2 mean-class accuracy of (label, top-5 or None if failed) pairs.

    Written out from the definitions rather than taken from jobs.metrics: mean-class
    accuracy averages per-class recall over the classes that occur as a label or as a
    prediction (MMAction2's confusion-matrix rule); a failed video is a miss and adds no
    class of its own.
    """
    n = len(rows)
    top1 = sum(1 for label, top in rows if top and top[0] == label) / n
    top5 = sum(1 for label, top in rows if top and label in top[:5]) / n
    classes = {label for label, _ in rows} | {top[0] for _, top in rows if top}
    recalls = []
    for c in sorted(classes):
        truth = [(label, top) for label, top in rows if label == c]
        hits = sum(1 for _, top in truth if top and top[0] == c)
        recalls.append(hits / len(truth) if truth else 0.0)
    return {"top1": top1, "top5": top5, "mean_class": sum(recalls) / len(recalls)}


#: summary.json's accuracy keys: scored videos only, then failures counted as misses
ACC_KEYS = ("top1_acc", "top5_acc", "mean_class_acc", "top1_acc_with_failures", "top5_acc_with_failures",
            "mean_class_acc_with_failures")


def assert_rows_scored(ev: EvalSet, rows: dict[str, list], names: list[str], origin: dict[str, str] | None = None) -> None:
    """``rows`` (prediction columns) are one per name of ``names``, in that order, each scored with
    the reference scores of its video in ``ev`` (``origin[name]``, else ``name`` itself)."""
    refs = [origin[n] for n in names] if origin is not None else names
    assert [v for v, n in collections.Counter(rows["video"]).items() if n != 1] == []  # no video twice
    assert rows["video"] == names  # and none missing, in list order (shard order)
    assert rows["label"] == [ev.labels[r] for r in refs]
    for i, (name, ref) in enumerate(zip(names, refs)):
        assert rows["error"][i] is None, (name, rows["error"][i])
        assert np.abs(np.asarray(rows["probs"][i], dtype=np.float32) - ev.probs[ref]).max() < PROB_TOL, name
        assert rows["pred"][i] == ev.pred(ref)
        assert rows["topk_classes"][i] == ev.topk(ref)
        assert rows["num_views"][i] == VIEWS


def assert_summary_all_scored(ev: EvalSet, summary: dict, refs: list[str]) -> None:
    """``summary`` (summary.json) counts the videos ``refs`` of ``ev`` all scored, with the accuracy
    their labels give."""
    n = len(refs)
    assert (summary["num_videos"], summary["num_ok"], summary["num_failed"]) == (n, n, 0)
    expected = expected_accuracy([(ev.labels[r], ev.topk(r)) for r in refs])
    for key in ("top1", "top5", "mean_class"):
        assert summary[f"{key}_acc"] == pytest.approx(expected[key]), key


# ----------------------------------------------------------------------------- processes


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid`` (a process started with ``start_new_session=True``)."""
    from cluster.runtime import process_stats  # here: the worker tests that use this module need no Ray

    return [p.pid for p in process_stats() if p.session == sid and p.state != "Z"]


def wait_session_gone(sid: int, timeout_s: float = 30.0) -> list[int]:
    """Wait for every process of session ``sid`` to exit; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = session_pids(sid)
        if not left:
            return []
        time.sleep(0.2)
    return session_pids(sid)


def kill_session(sid: int) -> None:
    """SIGKILL whatever is left of session ``sid`` (only processes this test started)."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_in_own_session(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float, settle_s: float) -> tuple[int, str, str, float, list[int]]:
    """Run ``cmd`` in a session of its own and kill whatever it leaves behind.

    Returns (exit status, stdout, stderr, seconds, pids still alive in its session after
    ``settle_s``): a command that left a Ray running is a failure the caller can see.
    """
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
            proc.communicate()
    seconds = time.monotonic() - start
    leftover = wait_session_gone(proc.pid, timeout_s=settle_s)
    kill_session(proc.pid)
    return proc.returncode, out, err, seconds, leftover


# ----------------------------------------------------------------------------- larger sets


def replicate_evalset(ev: EvalSet, folder: Path, copies: int) -> tuple[Path, Path, dict[str, str]]:
    """``copies`` copies of ``ev``'s videos under one data root (``cNN/<name>``, hard links
    where the file system allows) and their video list, same labels.

    For runs that must last long enough to be interrupted. Returns the data root, the video
    list and, for every listed name, the ``ev`` name whose reference scores it must get.
    """
    import shutil

    root = folder / "videos"
    origin: dict[str, str] = {}
    for copy in range(copies):
        for name in ev.names:
            key = f"c{copy:02d}/{name}"
            target = root / key
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(ev.root / name, target)
                except OSError:
                    shutil.copyfile(ev.root / name, target)
            origin[key] = name
    ann_file = write_video_list(folder / "val_list.txt", [(key, ev.labels[name]) for key, name in origin.items()])
    return root, ann_file, origin
