"""``fold_batchnorm``: the inference rewrite must not move a score beyond float tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.x3d import mmaction_oracle as oracle
from x3d import build_model, get_preset, normalize
from x3d.bn_fold import count_batchnorms, fold_batchnorm


@pytest.fixture(scope="module")
def trained_like_x3d() -> torch.nn.Module:
    """X3D-S with random weights and BatchNorm statistics far from identity, as a trained net has."""
    torch.manual_seed(0)
    model = build_model("x3d_s")
    calibration = oracle.calibration_batch(get_preset("x3d_s").protocol(), clips=2, frames=4, size=48)
    return oracle.randomize_weights(model, calibration, seed=3)


def _clips() -> torch.Tensor:
    data = np.stack([oracle.scene_frames(4, 48, 64, seed) for seed in (11, 12)])
    return normalize(torch.from_numpy(data), get_preset("x3d_s").protocol())


def test_folded_model_has_no_batchnorm_and_the_original_is_untouched(trained_like_x3d):
    before = {k: v.clone() for k, v in trained_like_x3d.state_dict().items()}
    folded = fold_batchnorm(trained_like_x3d)
    assert count_batchnorms(trained_like_x3d) == 84  # every ConvBN but the stem's spatial conv
    assert count_batchnorms(folded) == 0
    after = trained_like_x3d.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_model_scores_like_the_original(trained_like_x3d, channels_last):
    folded = fold_batchnorm(trained_like_x3d)
    x = _clips()
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        ref = trained_like_x3d(_clips()).softmax(-1)
        got = folded(x).softmax(-1)
    assert ref.shape == got.shape == (2, 400)
    assert float(ref.max()) > 0.02  # not a flat distribution, so the comparison means something
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), float((got - ref).abs().max())
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_model_runner_folds_by_default_and_scores_as_the_unfolded_model(trained_like_x3d):
    from worker.model_runner import ModelRunner
    from worker.spec import ModelSpec

    spec = ModelSpec(get_preset("x3d_s"), views=1)
    state = trained_like_x3d.state_dict()
    folded = ModelRunner(spec, state, device="cpu")
    plain = ModelRunner(spec, state, device="cpu", fold_bn=False)
    assert folded.describe()["fold_bn"] is True and count_batchnorms(folded.model) == 0
    assert plain.describe()["fold_bn"] is False and count_batchnorms(plain.model) == 84
    views = [np.stack([oracle.scene_frames(4, 48, 64, seed)]) for seed in (21, 22)]
    for a, b in zip(folded.score(views).probs, plain.score(views).probs):
        assert a.shape == (400,) and a.argmax() == b.argmax()
        assert np.abs(a - b).max() < 1e-5
