"""The network itself: size, names, shapes, eval forward, and parity with MMAction2's X3D.

X3D-S and X3D-M are one network (same weights, only the input protocol differs), so every
architecture check runs for both presets. Tests marked ``parity`` build MMAction2 1.2.0's
recognizer from its packaged config (tests/x3d/mmaction_oracle.py) and compare with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.x3d import mmaction_oracle as oracle
from tests.x3d.keymap import load_keymap
from x3d import build_model, get_preset, load_model, normalize
from x3d.checkpoints import save_mmaction2_checkpoint

MODELS = ["x3d_s", "x3d_m"]
PARAMETERS = 3_794_322  # MMAction2 metafile, both models


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from oracle.one_torch_thread()


def _shapes(state) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


@pytest.fixture(scope="module")
def random_x3d() -> nn.Module:
    """Our X3D (S and M share it) with random, discriminative weights and BN statistics."""
    torch.manual_seed(0)
    model = build_model("x3d_s")
    calibration = oracle.calibration_batch(get_preset("x3d_s").protocol(), clips=3, frames=6, size=64)
    return oracle.randomize_weights(model, calibration, seed=1)


@pytest.fixture(scope="module")
def clip_batch() -> torch.Tensor:
    """Two normalised non-square clips ``(2, 3, 6, 64, 80)``, small enough for a CPU."""
    data = np.stack([oracle.scene_frames(6, 64, 80, seed) for seed in (7, 8)])
    return normalize(torch.from_numpy(data), get_preset("x3d_s").protocol())


# ---------------------------------------------------------------- architecture, without MMAction2


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_is_published(name):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    assert get_preset(name).parameters == PARAMETERS


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_equals_reference_keymap(name):
    """568 entries, names and shapes as in tests/data/x3d-keymap.tsv (its MMAction2 columns)."""
    expected = {key: row.shape for key, row in load_keymap().items()}
    state = build_model(name).state_dict()
    assert len(state) == len(expected) == 568
    assert list(state) == list(expected)  # same order too: the key map follows the module tree
    assert _shapes(state) == expected


def test_structure_facts():
    """Depths [3, 5, 11, 7]; SE on even blocks only (15); 84 BN layers; Swish in every block."""
    backbone = build_model("x3d_s").backbone
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == [3, 5, 11, 7]
    se = [name for name, _ in backbone.named_modules() if name.endswith("se_module")]
    assert len(se) == 15
    assert all(int(name.split(".")[1]) % 2 == 0 for name in se)
    assert sum(isinstance(m, nn.BatchNorm3d) for m in backbone.modules()) == 84
    inner = [getattr(backbone, f"layer{i}")[0].conv2.conv.out_channels for i in range(1, 5)]
    assert inner == [54, 108, 216, 432]
    squeezed = [getattr(backbone, f"layer{i}")[0].se_module.fc1.out_channels for i in range(1, 5)]
    assert squeezed == [8, 8, 16, 32]


@pytest.mark.parametrize("name", MODELS)
def test_eval_forward_gives_logits_per_clip(name):
    model = build_model(name)
    assert not model.training
    x = torch.randn(3, 3, 5, 40, 56)
    with torch.inference_mode():
        out = model(x)
        again = model(x)
        single = model(x[1:2])
    assert out.shape == (3, 400) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out, again)  # eval mode: dropout off, BN uses running statistics
    torch.testing.assert_close(single[0], out[1], rtol=1e-5, atol=1e-5)  # clips are independent


def test_forward_shapes_at_protocol_sizes(random_x3d):
    """Backbone output (N, 432, T, ceil(H/32), ceil(W/32)) at the S crop size, T never strided."""
    with torch.inference_mode():
        feats = random_x3d.backbone(torch.zeros(1, 3, 13, 182, 182))
    assert feats.shape == (1, 432, 13, 6, 6)


# ---------------------------------------------------------------- parity with MMAction2


@pytest.fixture(scope="module")
def mm_recognizers():
    """MMAction2 Recognizer3D per model, built from its packaged config through the registry."""
    oracle.import_mmaction()
    return {name: oracle.build_recognizer(oracle.load_config(name)) for name in MODELS}


@pytest.mark.parity
@pytest.mark.parametrize("name", MODELS)
def test_names_and_shapes_equal_mmaction(name, mm_recognizers):
    theirs = mm_recognizers[name]
    ours = build_model(name)
    assert _shapes(ours.state_dict()) == _shapes(theirs.state_dict())
    assert dict(ours.named_parameters()).keys() == dict(theirs.named_parameters()).keys()
    assert sum(p.numel() for p in theirs.parameters()) == PARAMETERS


@pytest.mark.parity
@pytest.mark.parametrize("name", MODELS)
def test_forward_equals_mmaction_with_same_weights(name, mm_recognizers, random_x3d, clip_batch):
    theirs = mm_recognizers[name]
    theirs.load_state_dict(random_x3d.state_dict(), strict=True)
    theirs.eval()
    with torch.inference_mode():
        ours_logits = random_x3d(clip_batch)
        their_logits = theirs.cls_head(theirs.backbone(clip_batch))
        # and through the recognizer's own test path: (batch, views, C, T, H, W) -> features
        their_feats = theirs.extract_feat(clip_batch[None], test_mode=True)[0]
    assert ours_logits.shape == (2, 400)
    assert ours_logits.std() > 1.0  # the weights make a real classifier, not a constant
    torch.testing.assert_close(ours_logits, their_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(random_x3d.backbone(clip_batch), their_feats, rtol=1e-4, atol=1e-4)


@pytest.mark.parity
def test_our_checkpoint_loads_into_mmaction_and_back(tmp_path, random_x3d):
    """Our MMAction2-layout file through mmengine's loader; MMAction2's own save through ours."""
    oracle.import_mmaction()
    from mmaction.apis import init_recognizer
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu

    ours_file = save_mmaction2_checkpoint(random_x3d, tmp_path / "ours.pth")
    theirs = init_recognizer(str(oracle.config_path("x3d_s")), str(ours_file), device="cpu")
    their_state = theirs.state_dict()
    for key, value in random_x3d.state_dict().items():
        assert torch.equal(their_state[key], value), key
    assert set(their_state) == set(random_x3d.state_dict())

    their_file = tmp_path / "written_by_mmengine.pth"
    save_checkpoint({"meta": {"mmaction": "1.2.0"}, "state_dict": weights_to_cpu(get_state_dict(theirs))}, str(their_file))
    reloaded = load_model("x3d_m", checkpoint=str(their_file))
    assert reloaded.checkpoint_layout == "mmaction2"
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, their_state[key]), key
