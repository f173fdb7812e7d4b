"""A video's embedding from the forward that scores it: MMAction2's clip-level feature extraction.

MMAction2 1.2.0's ``tools/misc/clip_feature_extraction.py --multi-view`` swaps the classifier
head for ``FeatureHead`` (the backbone's output averaged over space, then time) and runs the
test config's views; each video's vector is those views' features averaged, all n clips x m
crops (``fuse_features``). ``kind="pre_logits"`` takes the head's 2048-d hidden layer instead,
which that tool does not offer. Both come out of the same forward as the logits
(``with_clip_features``, over ``X3D.forward_features`` / ``forward_head``): no second
forward, no second decode.

Words, kept apart: a feature *kind* (``FEATURE_KINDS``) says which vector; a clip's
*features* are that vector for one view; a video's *embedding* is its views' features fused.
(The jobs add a *layout*: how a column stores embeddings, ``jobs.features.FeatureLayout``.)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .decode import VideoSource
from .predict import Forward, model_inputs, preset_of, run_forwards
from .presets import Preset, TestProtocol, get_preset
from .protocol import resolve_protocol
from .views import prepare_views

__all__ = ["FEATURE_KINDS", "check_feature_kind", "extract_features", "feature_dim", "fuse_features",
           "predict_clips_with_features", "with_clip_features"]

#: what a video's vector can be: the pooled backbone output, or the head's pre-logit layer
FEATURE_KINDS = ("backbone", "pre_logits")


def check_feature_kind(kind: str) -> str:
    """``kind`` if it is one of ``FEATURE_KINDS``; the one check of a kind (a ValueError)."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    return kind


def feature_dim(preset: str | Preset, kind: str = "backbone") -> int:
    """Length of the vector ``kind`` gives for ``preset`` (432 / 2048 for X3D-S and X3D-M)."""
    from .model import X3DBackbone  # widths follow the rounding rules there; build no weights

    chosen = get_preset(preset)
    if check_feature_kind(kind) == "pre_logits":
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
    forward = with_clip_features(model, kind)
    inputs = model_inputs(model, clips, protocol, batch_size, channels_last, precision, on_step, "predict_clips_with_features")
    logits, features = run_forwards(forward, inputs, precision, on_step)
    return logits, (features if features is not None else torch.empty(0, 0))


def with_clip_features(model: nn.Module, kind: str) -> Forward:
    """``run_forwards``' forward that also gives each clip's ``kind`` features."""
    check_feature_kind(kind)
    return lambda x: _forward_with_features(model, x, kind)


def _forward_with_features(model: nn.Module, x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of an X3D (compiled or not): its logits ``(N, classes)`` and each clip's
    ``kind`` features ``(N, dim)``, the logits bit for bit those of ``model(x)``.

    ``"backbone"``: the feature maps averaged over space, then time, in that order, as
    MMAction2's ``FeatureHead`` pools them. ``"pre_logits"``: the head's hidden layer.
    """
    inner = getattr(model, "_orig_mod", model)  # torch.compile compiles only forward(): run eagerly
    maps = inner.forward_features(x)
    if kind == "backbone":
        return inner.forward_head(maps), maps.mean(dim=[-2, -1]).mean(dim=2)
    hidden = inner.forward_head(maps, pre_logits=True)  # "pre_logits": with_clip_features checked the kind
    return inner.cls_head.classify(hidden), hidden


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
