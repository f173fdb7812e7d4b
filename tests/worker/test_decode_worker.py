"""A decode task never loads torch, and its views are the ones the model half expects.

Decode workers are recycled when their memory grows, to shed decord's leaks; each
start that imported torch cost ~2 s of CPU and ~220 MB (bench/RESULTS.md). So what a decode
task imports (``worker.decode_task``, ``x3d`` and its protocol) must stay free of torch. Checked in a
fresh interpreter, the way a Ray worker process starts: it imports the task function's module
and unpickles the task's arguments (a ``ModelSpec`` carrying a ``Preset``, a ``VideoItem``).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

import x3d
from worker.items import VideoItem
from worker.spec import ModelSpec
from tests.videos import write_video

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import pickle, sys
import numpy as np
from worker.decode_task import decode_item
item, spec, out = pickle.loads(bytes.fromhex(sys.argv[1]))
result, (frames, inverse) = decode_item(item, spec)
assert result.error is None, result.error
assert result.num_views == 30
np.savez(out, frames=frames, inverse=inverse)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH_MODULES", len(loaded), loaded[:3])
"""


def test_decode_task_loads_no_torch_and_gives_the_same_views(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4", num_frames=60, height=96, width=128)
    # x3d_tiny: a preset the child knows without the tests' registry; the Preset object
    # travels in the spec anyway, as it does to a Ray worker.
    spec = ModelSpec(x3d.get_preset("x3d_tiny"), views=30)
    item = VideoItem(key="clip.mp4", uri=str(video), label=None)
    out = tmp_path / "frames.npz"
    payload = pickle.dumps((item, spec, str(out))).hex()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, payload], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH_MODULES 0 []" in proc.stdout, proc.stdout

    # The task ships each distinct frame once; cut into views (numpy here, torch on the model's
    # device in the actor) they are x3d.prepare_views's, computed in this process.
    expected = x3d.prepare_views(str(video), spec.preset, 30).views
    shipped = np.load(out)
    frames, inverse = shipped["frames"], shipped["inverse"]
    assert frames.dtype == np.uint8 and frames.shape[0] == len(np.unique(inverse)) < inverse.size
    plan = spec.test_protocol().view_plan(30)
    got = x3d.views.views_from_frames(frames, inverse, plan)
    assert got.dtype == np.uint8 and got.shape == expected.shape == (30, 8, 64, 64, 3)
    np.testing.assert_array_equal(got, expected)
    from x3d.protocol import gather_views
    import torch
    on_device = gather_views(torch.from_numpy(frames), torch.from_numpy(inverse), plan).numpy()
    np.testing.assert_array_equal(on_device, expected)


def test_import_x3d_is_light_until_a_torch_name_is_used() -> None:
    code = (
        "import sys, x3d\n"
        "assert 'torch' not in sys.modules, 'import x3d loaded torch'\n"
        "assert x3d.get_preset('x3d_s').name == 'x3d_s'\n"
        "assert 'torch' not in sys.modules\n"
        "model = x3d.build_model('x3d_tiny')\n"
        "assert 'torch' in sys.modules and type(model).__name__ == 'X3D'\n"
        "from x3d import load_model, fold_batchnorm, checkpoints\n"
        "assert callable(load_model) and callable(fold_batchnorm) and hasattr(checkpoints, 'from_mmaction2')\n"
        "try:\n"
        "    x3d.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
        "print('OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-2000:]


TIMED_CHILD = r"""
import sys
from ray import cloudpickle
decode, item, spec = cloudpickle.loads(bytes.fromhex(sys.argv[1]))
result, (frames, inverse) = decode(item, spec, True)
assert result.error is None, result.error
plan = spec.test_protocol().view_plan(spec.views)
assert inverse.shape == (plan.num_clips, spec.test_protocol().clip_len) and frames.dtype.name == "uint8"
assert result.num_views == plan.views and set(result.stages) >= {"read", "decode", "preprocess"}
assert result.stages["decode"] > 0 and result.stages["preprocess"] > 0 and result.rss_mb > 0
print("TORCH_MODULES", sum(1 for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_timed_decode_tasks_load_no_torch_either(tmp_path: Path) -> None:
    """The benchmark times the production decode task (and its synthetic stand-in); shipped as
    Ray ships them (cloudpickle) they must start as light as the jobs' own, or the benchmark
    would report a decode limit the jobs lack."""
    from ray import cloudpickle

    from jobs.benchmark_inputs import synthetic_decode
    from worker.decode_task import decode_item

    video = write_video(tmp_path / "clip.mp4", num_frames=60, height=96, width=128)
    spec = ModelSpec(x3d.get_preset("x3d_tiny"), views=10)
    item = VideoItem(key="clip.mp4", uri=str(video), label=None)
    payload = cloudpickle.dumps((decode_item, item, spec)).hex()
    proc = subprocess.run([sys.executable, "-c", TIMED_CHILD, payload], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH_MODULES 0" in proc.stdout, proc.stdout

    check = TIMED_CHILD.replace('assert result.stages["decode"] > 0 and result.stages["preprocess"] > 0 and ', "assert ")
    payload = cloudpickle.dumps((synthetic_decode, item, spec)).hex()
    proc = subprocess.run([sys.executable, "-c", check, payload], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH_MODULES 0" in proc.stdout, proc.stdout


def test_decode_item_says_how_it_read_the_frames(tmp_path: Path) -> None:
    """``frames_read``: fast on a clean file, MMAction2's call on an open GOP, in order with
    ``frames="true"`` there; nothing on an error."""
    from tests.videos import moving_frames, write_mpeg4_bframes
    from worker.decode_task import decode_item

    clean = write_video(tmp_path / "clean.mp4", num_frames=90, height=64, width=96)
    open_gop = write_mpeg4_bframes(tmp_path / "xvid.avi", moving_frames(90, 64, 96))
    mmaction2, true = ModelSpec(x3d.get_preset("x3d_tiny"), views=10), ModelSpec(x3d.get_preset("x3d_tiny"), views=10, frames="true")
    read = {}
    for name, path in (("clean", clean), ("open_gop", open_gop), ("missing", tmp_path / "missing.mp4")):
        for spec in (mmaction2, true):
            result, _ = decode_item(VideoItem(key=name, uri=str(path), label=None), spec)
            read[name, spec.frames] = result.frames_read
    assert read == {("clean", "mmaction2"): "fast", ("clean", "true"): "fast",
                    ("open_gop", "mmaction2"): "mmaction2", ("open_gop", "true"): "sequential",
                    ("missing", "mmaction2"): "", ("missing", "true"): ""}
