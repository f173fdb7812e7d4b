"""Feature vectors equal MMAction2 1.2.0's clip-level feature extraction, on the same videos and checkpoint.

What ``tools/misc/clip_feature_extraction.py --multi-view`` does (read in the installed
package, re-done here): the config's ``cls_head`` becomes ``FeatureHead(spatial_type='avg',
temporal_type='avg', backbone_name=None)`` (X3D is not one of the backbones it names), the
checkpoint loads without the classifier's keys, the test pipeline keeps every clip and crop, and
``inference_recognizer`` returns, per video, the ``(views, channels)`` features (with
``--multi-view`` the tool leaves ``average_clips`` unset, so FeatureHead does not average);
a video's vector is their mean over all clips x crops, which is what ``x3d.extract_features``
returns. ``pre_logits`` has no MMAction2 tool: it is compared with the ReLU output inside
MMAction2's own ``X3DHead`` (a forward hook), averaged the same way.

The real X3D-S/M network (random weights in MMAction2's layout, as test_parity.py makes them)
runs one clip x three crops per video; the 30-view protocol (10 clips x 3 crops) runs the
narrow ``LIGHT`` network, built identically on both sides (``X3D_PARITY_FULL=1`` adds the real
network at 10 and 30 views). The job's runner (BatchNorm folded, batched as the actors do) is
held to the same vectors. Figures are printed (``-s``) and recorded as test properties.
"""

from __future__ import annotations

from dataclasses import replace

import os

import numpy as np
import pytest
import torch

from tests.videos import write_video
from tests.x3d import mmaction_oracle as oracle
from tests.x3d.oracle_fixtures import mmaction, one_torch_per_module  # noqa: F401 - the modules' fixtures
from tests.x3d.test_parity import LIGHT, VIDEOS, _random_checkpoint
from worker.spec import ModelSpec
from worker.model_runner import ModelRunner
from x3d import get_preset, prepare_views
from x3d.checkpoints import load_model
from x3d.features import extract_features, predict_clips_with_features

FULL = os.environ.get("X3D_PARITY_FULL", "") not in ("", "0")
pytestmark = [pytest.mark.parity, pytest.mark.slow, pytest.mark.timeout(3600 if FULL else 300)]

MODELS = ["x3d_s", "x3d_m"]
REAL_CASES = {"x3d_s": [("land_160x90_30fps_150f", 3), ("port_96x128_25fps_20f", 3)],
              "x3d_m": [("land_144x112_24fps_75f", 3), ("square_96_24fps_60f", 3)]}
LIGHT_CASES = {"x3d_s": [("land_160x90_30fps_150f", 30)], "x3d_m": [("port_120x160_30fps_45f", 30)]}
if FULL:  # the real network at 10 and 30 views too (minutes)
    REAL_CASES = {model: cases + [(cases[0][0], 10), (cases[1][0], 30)] for model, cases in REAL_CASES.items()}
MAX_ABS = 1e-4  # float32 through 26 blocks, two implementations: observed ~1e-6
MIN_COSINE = 0.999999


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("feature_parity_videos")
    names = {name for cases in (REAL_CASES, LIGHT_CASES) for model in cases.values() for name, _ in model}
    paths = {}
    for seed, (name, (frames, height, width, fps)) in enumerate(VIDEOS.items()):
        if name in names:  # the seeds test_parity.py uses, so the scenes are the same
            paths[name] = write_video(folder / f"{name}.mp4", frames=oracle.scene_frames(frames, height, width, seed=seed), fps=fps)
    return paths


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("feature_parity_ckpt")
    return {"real": _random_checkpoint(None, folder / "x3d_random.pth"), "light": _random_checkpoint(LIGHT, folder / "x3d_light.pth")}


def _mm_config(model: str, kind: str, views: int, head: str):
    cfg = oracle.load_config(model)
    cfg.test_pipeline = oracle.test_pipeline_for(cfg, views)
    if kind == "light":
        cfg.model.backbone.update(gamma_w=LIGHT.gamma_w, gamma_b=LIGHT.gamma_b, gamma_d=LIGHT.gamma_d)
        cfg.model.cls_head.in_channels = int(192 * LIGHT.gamma_w * LIGHT.gamma_b)  # ignored by FeatureHead
    if head == "feature":  # clip_feature_extraction.py's merge_args, --multi-view
        cfg.model.cls_head = dict(type="FeatureHead", spatial_type="avg", temporal_type="avg", backbone_name=None, num_segments=None)
    return cfg


def _mm_backbone_features(model: str, kind: str, views: int, checkpoint, path) -> np.ndarray:
    """MMAction2's per-view FeatureHead output ``(views, channels)`` for one video."""
    from mmaction.apis import inference_recognizer, init_recognizer

    recognizer = init_recognizer(_mm_config(model, kind, views, "feature"), str(checkpoint), device="cpu")
    feats = inference_recognizer(recognizer, str(path))
    assert isinstance(feats, torch.Tensor) and feats.shape[0] == views  # not averaged with --multi-view
    return feats.numpy()


def _mm_pre_logits(model: str, views: int, checkpoint, path) -> np.ndarray:
    """The ReLU output inside MMAction2's X3DHead, per view ``(views, 2048)``, for one video."""
    from mmaction.apis import inference_recognizer, init_recognizer

    recognizer = init_recognizer(_mm_config(model, "real", views, "x3d"), str(checkpoint), device="cpu")
    seen = []
    hook = recognizer.cls_head.relu.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    try:
        inference_recognizer(recognizer, str(path))
    finally:
        hook.remove()
    return torch.cat(seen).numpy()


def _ours(model: str, kind: str, checkpoint):
    preset = get_preset(model)
    if kind == "light":
        preset = replace(preset, name=f"{model}_light", arch=LIGHT, parameters=None)
    return preset, load_model(preset, checkpoint=str(checkpoint))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors; of two stacks of them, the lowest row's."""
    a64, b64 = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return float(((a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))).min())


def _compare(label: str, theirs: np.ndarray, ours: np.ndarray, record_property) -> tuple[float, float]:
    assert theirs.shape == ours.shape, label
    diff, cos = float(np.abs(theirs - ours).max()), _cosine(theirs, ours)
    print(f"{label}: max|d|={diff:.2e} cosine={cos:.9f} (1-cos={1 - cos:.1e}, |v|max={np.abs(theirs).max():.3f})")
    record_property(f"{label} max_abs", diff)
    record_property(f"{label} cosine", cos)
    assert diff < MAX_ABS, label
    assert cos > MIN_COSINE, label
    return diff, cos


@pytest.mark.parametrize("model", MODELS)
def test_backbone_features_equal_mmaction_feature_extraction(model, videos, checkpoints, record_property):
    for kind, cases in (("real", REAL_CASES[model]), ("light", LIGHT_CASES[model])):
        preset, ours = _ours(model, kind, checkpoints[kind])
        vectors = []
        for name, views in cases:
            theirs = _mm_backbone_features(model, kind, views, checkpoints[kind], videos[name])
            proto = preset.protocol()
            clips = prepare_views(videos[name], preset, views, proto).views
            _, per_view = predict_clips_with_features(ours, clips, proto, "backbone")
            expected_dim = 432 if kind == "real" else ours.backbone.out_channels
            assert theirs.shape == (views, expected_dim)
            _compare(f"{model}/{kind} {views}v {name} per-view", theirs, per_view.numpy(), record_property)
            vector = extract_features(ours, videos[name], views=views)
            _compare(f"{model}/{kind} {views}v {name} video", theirs.mean(axis=0), vector, record_property)
            if kind == "real":  # the job's path: the runner, BatchNorm folded, frames shipped as the decode task does
                runner = ModelRunner(ModelSpec(preset, views), ours.state_dict(), device="cpu", threads=1, feature_kind="backbone")
                job_vectors = runner.score([clips]).embeddings
                _compare(f"{model}/{kind} {views}v {name} job", theirs.mean(axis=0), job_vectors[0], record_property)
            vectors.append(vector)
        if len(vectors) > 1:  # different videos, clearly different vectors: the comparison means something
            assert _cosine(vectors[0], vectors[1]) < 0.999


@pytest.mark.parametrize("model", MODELS)
def test_pre_logits_equal_mmaction_x3d_head(model, videos, checkpoints, record_property):
    name, views = REAL_CASES[model][0]
    preset, ours = _ours(model, "real", checkpoints["real"])
    theirs = _mm_pre_logits(model, views, checkpoints["real"], videos[name])
    assert theirs.shape == (views, 2048)
    vector = extract_features(ours, videos[name], views=views, kind="pre_logits")
    _compare(f"{model}/real {views}v {name} pre_logits", theirs.mean(axis=0), vector, record_property)
