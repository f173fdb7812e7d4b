"""A model knows its preset: scoring it with another preset's protocol is refused, not wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import x3d
from tests.videos import write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return str(write_video(tmp_path_factory.mktemp("v") / "clip.mp4", num_frames=40, height=96, width=128))


def test_predict_video_uses_the_models_own_preset(clip: str) -> None:
    model = x3d.build_model("x3d_tiny")
    assert model.preset.name == "x3d_tiny"
    inferred = x3d.predict_video(model, clip, views=10)
    explicit = x3d.predict_video(model, clip, preset="x3d_tiny", views=10)
    np.testing.assert_array_equal(inferred, explicit)
    # the tiny model's own protocol (its clip length and crop), not X3D-S's default one
    proto = x3d.get_preset("x3d_tiny").protocol()
    views = x3d.prepare_views(clip, "x3d_tiny", 10).views
    assert views.shape[1:4] == (proto.clip_len, proto.crop_size, proto.crop_size)


def test_a_preset_that_disagrees_with_the_model_raises(clip: str) -> None:
    model = x3d.build_model("x3d_tiny")
    with pytest.raises(ValueError, match="'x3d_s' does not match the model, which is 'x3d_tiny'"):
        x3d.predict_video(model, clip, preset="x3d_s", views=10)


def test_folded_and_loaded_models_keep_their_preset(tmp_path: Path) -> None:
    model = x3d.build_model("x3d_tiny")
    path = x3d.checkpoints.save_mmaction2_checkpoint(model, tmp_path / "tiny.pth")
    loaded = x3d.load_model("x3d_tiny", checkpoint=str(path))
    assert loaded.preset.name == "x3d_tiny"
    assert x3d.fold_batchnorm(loaded).preset.name == "x3d_tiny"


def test_a_model_without_a_preset_must_be_told(clip: str) -> None:
    model = x3d.X3D(x3d.get_preset("x3d_tiny").arch).eval()  # built by hand: no preset attached
    with pytest.raises(ValueError, match="does not say which preset"):
        x3d.predict_video(model, clip, views=10)
    assert x3d.predict_video(model, clip, preset="x3d_tiny", views=10).shape == (len(x3d.get_preset("x3d_tiny").classes),)
