"""``--precision bf16``: the forward under bf16 autocast stays close to the fp32 reference.

The model is ``x3d_test`` (tiny, random weights) on six real clips of visibly different
content, with two adjustments, both measured before they were chosen:

- Each block's residual branch runs at half gain. At full gain the random network is chaotic:
  bf16 rounding (about 0.4 %) doubles stage after stage, up to ~10 % at the pooled features,
  and ``tests.presets.random_model`` itself then shows max |Δprob| 0.02-0.14 and top-1 flips on
  one clip in six (six seeds measured). That is a property of random weights, not of the
  autocast path; a real checkpoint is measured with ``bench/precision_effect.py --checkpoint``.
- The classifier is a nearest-centroid head fitted to the clips' (fp32) features and scaled so
  that every clip predicts a class of its own with a clear margin: predictions are spread, so
  an error in the autocast path would show as changed scores or classes.

Measured here (AMD EPYC, AVX2 without native bf16; seeds 0-3): max |Δprob| 0.012-0.034 over
the fused scores, smallest fp32 top-1 margin 0.08-0.28, top-1 equal on every clip. The bound
below, 0.05, is four times seed 0's 0.012.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import x3d
from jobs.evaluate import EvaluateConfig, JobError, _check_resume, prepare_evaluate
from jobs.datasets import resolve_dataset
from worker.model_runner import ModelRunner
from worker.spec import ModelSpec
from tests import presets, videos
from x3d.predict import predict_clips, prepare_views
from x3d.protocol import fuse_views, normalize

VIEWS = 10
NUM_VIDEOS = 6
CLASSES = [37 * k + 5 for k in range(NUM_VIDEOS)]  # video k's class
MAX_DPROB = 0.05


def distinct_frames(i: int, n: int = 48, h: int = 48, w: int = 64) -> np.ndarray:
    """Moving stripes of a per-video colour, period, direction and speed, plus noise."""
    rng = np.random.default_rng(1000 + i)
    color = rng.integers(30, 226, size=3)
    period = (4, 6, 9, 13, 18, 24, 32, 40)[i % 8]
    speed = i % 4 + 1
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        stripes = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy + speed * t) * 2 * np.pi / period)
        img = color * (0.55 + 0.45 * stripes[..., None]) + rng.normal(0, 6, size=(h, w, 3))
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def spread_model(views: list[np.ndarray], seed: int = 0, branch_gain: float = 0.5, logit_scale: float = 8.0) -> x3d.X3D:
    """``random_model(seed)``, residual branches at ``branch_gain``, a centroid head on ``views``."""
    model = presets.random_model(seed)
    proto = presets.X3D_TEST.protocol()
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, x3d.model.BlockX3D):
                block.conv3.bn.weight.mul_(branch_gain)
                block.conv3.bn.bias.mul_(branch_gain)
        hidden: list[torch.Tensor] = []
        hook = model.cls_head.fc2.register_forward_hook(lambda mod, inp, out: hidden.append(inp[0]))
        model(normalize(torch.as_tensor(np.concatenate(views)), proto))
        hook.remove()
        per_video = hidden[0].view(len(views), -1, hidden[0].shape[1]).mean(1)
        centre = per_video.mean(0)
        offsets = per_video - centre
        fc2 = model.cls_head.fc2
        weight = torch.zeros_like(fc2.weight)
        weight[CLASSES] = offsets / offsets.norm(dim=1, keepdim=True) * (logit_scale / offsets.norm(dim=1).mean())
        fc2.weight.copy_(weight)
        fc2.bias.copy_(-weight @ centre)
    return model.eval()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[list[Path], list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("precision")
    paths = [videos.write_video(folder / f"v{i}.mp4", frames=distinct_frames(i)) for i in range(NUM_VIDEOS)]
    return paths, [prepare_views(str(p), presets.X3D_TEST, VIEWS).views for p in paths]


@pytest.fixture(scope="module")
def model(clips) -> x3d.X3D:
    return spread_model(clips[1])


def fused(model: x3d.X3D, views: np.ndarray, **kw) -> torch.Tensor:
    return fuse_views(predict_clips(model, views, presets.X3D_TEST.protocol(), **kw))


def test_bf16_is_close_to_fp32_and_keeps_top1(model, clips):
    deltas = []
    for k, views in enumerate(clips[1]):
        logits = predict_clips(model, views, presets.X3D_TEST.protocol(), precision="bf16")
        assert logits.dtype == torch.float32 and logits.device.type == "cpu"
        ref, low = fused(model, views), fuse_views(logits)
        assert int(ref.argmax()) == CLASSES[k]  # the fp32 predictions really are spread
        assert int(low.argmax()) == int(ref.argmax()), f"clip {k}: top-1 changed under bf16"
        deltas.append(float((ref - low).abs().max()))
    assert max(deltas) < MAX_DPROB, deltas
    assert max(deltas) > 0  # autocast really ran: bf16 is not bit-identical to fp32


def test_fp32_is_the_default_and_unchanged(model, clips):
    views = clips[1][0]
    assert torch.equal(predict_clips(model, views, presets.X3D_TEST.protocol()),
                       predict_clips(model, views, presets.X3D_TEST.protocol(), precision="fp32"))
    with pytest.raises(ValueError, match="precision"):
        predict_clips(model, views, presets.X3D_TEST.protocol(), precision="fp16")


def test_model_runner_takes_precision_from_the_spec(model, clips):
    state = model.state_dict()
    views = clips[1][:2]
    fp32 = ModelRunner(ModelSpec(presets.X3D_TEST, VIEWS), state, device="cpu").score(views).probs
    runner = ModelRunner(ModelSpec(presets.X3D_TEST, VIEWS, precision="bf16"), state, device="cpu")
    assert runner.describe()["precision"] == "bf16"
    bf16 = runner.score(views).probs
    for a, b in zip(fp32, bf16):
        assert b.dtype == np.float32 and a.argmax() == b.argmax()
        assert 0 < np.abs(a - b).max() < MAX_DPROB
    with pytest.raises(ValueError, match="precision"):
        ModelRunner(ModelSpec(presets.X3D_TEST, VIEWS, precision="fp16"), state, device="cpu")


def test_resume_with_another_precision_is_refused(tmp_path):
    manifest = {"job": "evaluate", "model": "x3d_test", "precision": "bf16"}
    (tmp_path / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(JobError, match="precision"):
        _check_resume(str(tmp_path), {**manifest, "precision": "fp32"}, resume=True)
    _check_resume(str(tmp_path), manifest, resume=True)
    # A run.json from before --precision existed ran fp32: resuming it in fp32 is allowed.
    (tmp_path / "run.json").write_text(json.dumps({"job": "evaluate", "model": "x3d_test"}))
    _check_resume(str(tmp_path), {"job": "evaluate", "model": "x3d_test", "precision": "fp32"}, resume=True)
    with pytest.raises(JobError, match="precision"):
        _check_resume(str(tmp_path), {"job": "evaluate", "model": "x3d_test", "precision": "bf16"}, resume=True)


def test_bad_precision_is_a_job_error(clips, tmp_path):
    dataset = resolve_dataset(None, data_root=str(tmp_path), ann_file=str(_video_list(clips[0], tmp_path)))
    with pytest.raises(JobError, match="precision"):
        prepare_evaluate(EvaluateConfig(dataset=dataset, model=presets.NAME, checkpoint="unused.pth", views=VIEWS,
                                        precision="fp16", output=str(tmp_path / "run"), quiet=True))


def _video_list(paths: list[Path], folder: Path) -> Path:
    listing = folder / "list.txt"
    listing.write_text("".join(f"{p} {c}\n" for p, c in zip(paths, CLASSES)))
    return listing


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_bf16_evaluate_reaches_run_json_summary_and_scores(model, clips, ray_local, tmp_path, capsys):
    import submit

    checkpoint = x3d.checkpoints.save_mmaction2_checkpoint(model, tmp_path / "spread.pth")
    listing = _video_list(clips[0], tmp_path)
    output = tmp_path / "run"
    args = ["evaluate", "--video-list", str(listing), "--data-root", "/", "--model", presets.NAME,
            "--checkpoint", str(checkpoint), "--views", str(VIEWS), "--output", str(output), "--quiet"]
    assert submit.main([*args, "--precision", "bf16"]) == 0

    summary = json.loads((output / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["top1_acc"] == 1.0
    assert json.loads((output / "run.json").read_text())["precision"] == "bf16"
    assert "bf16" in (output / "summary.md").read_text()

    import pyarrow.dataset as ds

    rows = ds.dataset(str(output / "predictions"), format="parquet").to_table().to_pydict()
    by_video = dict(zip(rows["video"], rows["probs"]))
    for path, views in zip(clips[0], clips[1]):
        ref = fused(model, views).numpy()
        got = np.asarray(by_video[str(path)], dtype=np.float32)
        assert 0 < np.abs(got - ref).max() < MAX_DPROB  # bf16 reached the Ray actor

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # same output, other precision: refused before any work
        submit.main([*args, "--resume"])
    assert exc.value.code == 2 and "precision" in capsys.readouterr().err
