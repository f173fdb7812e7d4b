"""Features from the forward that scores: what they are, that the scores do not move, and that
the model runner's batched path gives the library's vector. MMAction2 parity: test_feature_parity.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import x3d
from tests.videos import write_video
from tests.x3d import mmaction_oracle as oracle
from worker.spec import ModelSpec
from worker.model_runner import ModelRunner
from x3d.features import extract_features, feature_dim, fuse_features, predict_clips_with_features, with_clip_features
from x3d.views import prepare_frames

VIEWS = 3  # one clip, three crops: views that differ, at a third of the cost


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from oracle.one_torch_thread()


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return x3d.build_model("x3d_tiny")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("feat") / "clip.mp4"
    return str(write_video(path, frames=oracle.scene_frames(40, 72, 96, seed=5), fps=25))


def test_feature_dims():
    assert feature_dim("x3d_s") == feature_dim("x3d_m") == 432  # 192 x gamma_b 2.25
    assert feature_dim("x3d_s", "pre_logits") == feature_dim("x3d_m", "pre_logits") == 2048
    assert feature_dim("x3d_tiny") == x3d.build_model("x3d_tiny").backbone.out_channels
    with pytest.raises(ValueError, match="features must be one of"):
        feature_dim("x3d_s", "neck")


def test_clip_features_keep_the_logits_and_pool_as_feature_head(tiny):
    x = torch.randn(3, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = tiny(x)
        maps = tiny.backbone(x)
        out_b, backbone = with_clip_features(tiny, "backbone")(x)
        out_p, hidden = with_clip_features(tiny, "pre_logits")(x)
        split = tiny.forward_head(tiny.forward_features(x))
        assert torch.equal(tiny.forward_head(maps, pre_logits=True), hidden)
    assert torch.equal(out_b, logits) and torch.equal(out_p, logits) and torch.equal(split, logits)  # the scores do not move
    # FeatureHead (3D backbone): mean over H, W, then over T
    assert torch.equal(backbone, maps.mean(dim=[-2, -1]).mean(dim=2))
    assert backbone.shape == (3, tiny.backbone.out_channels)
    head = tiny.cls_head
    torch.testing.assert_close(hidden, torch.relu(head.fc1(maps.mean(dim=[2, 3, 4]))), rtol=0, atol=1e-6)
    assert hidden.shape == (3, tiny.arch.head_hidden) and bool((hidden >= 0).all())
    assert not torch.allclose(backbone[0], backbone[1])  # different clips, different vectors


@pytest.mark.parametrize("kind", ["backbone", "pre_logits"])
def test_extract_features_is_the_mean_over_views(tiny, video, kind):
    proto = tiny.preset.protocol()
    views = x3d.prepare_views(video, tiny.preset, VIEWS).views
    logits, per_view = predict_clips_with_features(tiny, views, proto, kind, batch_size=2)
    assert per_view.shape == (VIEWS, feature_dim("x3d_tiny", kind))
    assert torch.equal(logits, x3d.predict_clips(tiny, views, proto, batch_size=2))
    vector = extract_features(tiny, video, views=VIEWS, kind=kind, batch_size=2)
    assert vector.dtype == np.float32 and vector.shape == (per_view.shape[1],)
    np.testing.assert_array_equal(vector, fuse_features(per_view).numpy())
    np.testing.assert_allclose(vector, per_view.numpy().mean(axis=0), rtol=0, atol=1e-6)
    assert np.abs(per_view.numpy() - vector).max() > 1e-4  # the views differ: the mean is a real fusion


def test_runner_scores_unchanged_and_features_equal_the_library(tiny, video):
    """A runner with a feature kind gives the same scores and, per video, ``extract_features``'
    embedding (BatchNorm folded in the runner: float tolerance), for both payload forms the
    actor receives; one without gives no embeddings."""
    spec = ModelSpec(tiny.preset, VIEWS)
    state = tiny.state_dict()
    plain = ModelRunner(spec, state, device="cpu", threads=1)
    featured = ModelRunner(spec, state, device="cpu", threads=1, feature_kind="backbone")
    assert plain.feature_kind is None and featured.feature_kind == "backbone"
    views = x3d.prepare_views(video, tiny.preset, VIEWS).views
    shipped = prepare_frames(video, tiny.preset, VIEWS)
    payloads = [views, (shipped.frames, shipped.inverse), views[:, :, ::-1].copy()]  # the last one: another video
    scored = plain.score(payloads)
    probs = scored.probs
    with_vectors = featured.score(payloads)
    probs2, vectors = with_vectors.probs, with_vectors.embeddings
    assert len(probs) == len(vectors) == len(with_vectors.shares_ms) == 3
    for a, b in zip(probs, probs2):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    expected = extract_features(tiny, video, views=VIEWS)
    for vector in vectors[:2]:
        np.testing.assert_allclose(vector, expected, rtol=0, atol=1e-4)
    assert np.abs(vectors[2] - expected).max() > 1e-3
    assert scored.embeddings is None
    assert featured.score([]).embeddings == [] and plain.score([]).embeddings is None
    with pytest.raises(ValueError, match="features must be one of"):
        ModelRunner(spec, state, device="cpu", threads=1, feature_kind="neck")
