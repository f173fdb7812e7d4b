"""A video's embedding from the forward that scores it: MMAction2's clip-level feature extraction.

MMAction2 1.2.0's ``tools/misc/clip_feature_extraction.py --multi-view`` swaps the classifier
head for ``FeatureHead`` (the backbone's output averaged over space, then time) and runs the
test config's views; each video's vector is those views' features averaged, all n clips x m
crops (``fuse_features``). ``kind="pre_logits"`` takes the head's 2048-d hidden layer instead,
which that tool does not offer. Both come out of the same forward as the logits
(``X3D.forward_with_features``): no second forward, no second decode.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .decode import VideoSource
from .predict import forward_clips, forward_once, preset_of
from .presets import Preset, TestProtocol, get_preset
from .protocol import resolve_protocol
from .views import prepare_views

__all__ = ["FEATURE_KINDS", "check_features", "extract_features", "feature_dim", "forward_with_features", "fuse_features",
           "predict_clips_with_features"]

#: what a video's vector can be: the pooled backbone output, or the head's pre-logit layer
FEATURE_KINDS = ("backbone", "pre_logits")


def check_features(kind: str) -> str:
    if kind not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    return kind


def feature_dim(preset: str | Preset, kind: str = "backbone") -> int:
    """Length of the vector ``kind`` gives for ``preset`` (432 / 2048 for X3D-S and X3D-M)."""
    from .model import X3DBackbone  # widths follow the rounding rules there; build no weights

    chosen = get_preset(preset)
    if check_features(kind) == "pre_logits":
        return chosen.arch.head_hidden
    with torch.device("meta"):
        return X3DBackbone(chosen.arch).out_channels


def fuse_features(features: torch.Tensor) -> torch.Tensor:
    """One vector from a video's per-view features ``(V, dim)``: their mean, as FeatureHead's
    ``average_clip`` takes it over every clip and crop (``protocol.fuse_views`` for the scores)."""
    return features.mean(dim=0)


@torch.inference_mode()
def predict_clips_with_features(
    model: nn.Module,
    clips: np.ndarray | torch.Tensor,
    protocol: TestProtocol,
    kind: str = "backbone",
    batch_size: int | None = None,
    channels_last: bool = False,
    precision: str = "fp32",
    on_step: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``predict_clips``, and each clip's features: float32 ``(N, classes)`` and ``(N, dim)`` on CPU."""
    return forward_clips(model, clips, protocol, check_features(kind), batch_size, channels_last, precision, on_step)


def forward_with_features(model: nn.Module, x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of an X3D (compiled or not) giving its logits and each clip's features."""
    return forward_once(model, x, kind)


def extract_features(
    model: nn.Module,
    source: VideoSource,
    preset: str | Preset | None = None,
    views: int = 30,
    kind: str = "backbone",
    protocol: str | TestProtocol | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    frames: str = "mmaction2",
) -> np.ndarray:
    """One video's feature vector ``(dim,)`` float32: ``kind`` over all its views, averaged.

    With ``kind="backbone"`` this is the vector of MMAction2's clip-level feature extraction
    (``--multi-view``) for the same checkpoint and views. ``frames`` as for ``predict_video``.
    """
    chosen = preset_of(model, preset)
    proto = resolve_protocol(chosen, protocol)
    prepared = prepare_views(source, chosen, views, proto, frames=frames)
    _, feats = predict_clips_with_features(model, prepared.views, proto, kind, batch_size=batch_size, precision=precision)
    return fuse_features(feats).numpy().astype(np.float32)
