"""x3d: X3D action recognition that scores videos exactly as MMAction2 does. No Ray in here.

>>> import x3d
>>> model = x3d.load_model("x3d_s", checkpoint="x3d_s.pth")
>>> probs = x3d.predict_video(model, "video.mp4", views=30)  # the model knows its preset
>>> vector = x3d.extract_features(model, "video.mp4", views=30)  # 432-d, MMAction2's FeatureHead

``import x3d`` does not import torch: the model, its checkpoints and the forward pass load on
first use of one of their names (``x3d.load_model``, ``x3d.build_model``, ...). A process that
only decodes videos into views (``x3d.prepare_views``) never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .decode import DecodeError, RawFrames, VideoInfo, probe, read_frames
from .presets import PRESETS, Architecture, Preset, PublishedResult, TestProtocol, ViewPlan, Weights, get_preset, kinetics400_classes, register_preset
from .protocol import clip_indices, crop_offsets, fuse_views, make_views, normalize, resize_frames, resize_frames_exact
from .views import PreparedVideo, prepare_views

from . import tiny  # registers the bundled self-check preset, x3d_tiny

#: names backed by torch -> the submodule that defines them, imported on first access
_TORCH_NAMES = {
    "X3D": "model",
    "build_model": "model",
    "fold_batchnorm": "bn_fold",
    "extract_features": "features",
    "feature_dim": "features",
    "fuse_features": "features",
    "predict_clips": "predict",
    "predict_video": "predict",
    "CheckpointError": "checkpoints",
    "load_model": "checkpoints",
}
_TORCH_MODULES = ("model", "bn_fold", "features", "predict", "checkpoints")


def __getattr__(name: str) -> Any:
    if name in _TORCH_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _TORCH_NAMES:
        value = getattr(importlib.import_module(f".{_TORCH_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted({name for name in dir() if not name.startswith("_") and name not in ("annotations", "importlib", "Any")} | set(_TORCH_NAMES) | set(_TORCH_MODULES))


def __dir__() -> list[str]:
    return __all__
