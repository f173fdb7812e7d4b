"""From a video to class probabilities, split where a distributed job needs the seams.

``prepare_views`` is the CPU half (decode, sample, resize, crop; uint8 out, so it is cheap to
ship between processes; it lives in ``x3d.views``, free of torch, and is re-exported here),
``predict_clips`` is the accelerator half (normalise and forward any mix of views from many
videos), and ``predict_video`` chains the two for one video with MMAction2's fusion. The Ray
job calls the halves from different workers.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn

from .decode import VideoSource
from .presets import Preset, TestProtocol, get_preset
from .protocol import fuse_views, normalize, resolve_protocol
from .views import PreparedVideo, prepare_views  # the CPU half, torch-free; re-exported here

__all__ = ["PRECISIONS", "PreparedVideo", "prepare_views", "predict_clips", "predict_video", "autocast_for", "check_precision", "preset_of", "to_device"]

#: forward-pass precisions: ``fp32`` is the reference (and the default); ``bf16`` runs the
#: forward under ``torch.autocast(dtype=torch.bfloat16)`` and still returns float32 logits.
PRECISIONS = ("fp32", "bf16")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast_for(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: nothing for fp32, bf16 autocast on ``device``'s type."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(chunk: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host uint8 batch to ``device``; for CUDA through pinned memory so the copy is asynchronous.

    CPU models never pin (pin_memory needs a CUDA runtime) and get the tensor back unchanged.
    """
    if device.type == "cuda" and chunk.device.type == "cpu":
        return chunk.pin_memory().to(device, non_blocking=True)
    return chunk.to(device, non_blocking=True)


@torch.inference_mode()
def predict_clips(
    model: nn.Module,
    clips: np.ndarray | torch.Tensor,
    protocol: TestProtocol,
    batch_size: int | None = None,
    channels_last: bool = False,
    precision: str = "fp32",
    on_step: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Logits ``(N, classes)`` float32 on CPU for uint8 clips ``(N, T, H, W, 3)``.

    The clips may come from many videos; fusing them per video is the caller's job
    (``protocol.fuse_views``). Normalisation runs on the model's device so only uint8 crosses
    the host-device link (pinned and non-blocking when that device is CUDA). ``precision``
    ``"bf16"`` runs the forward under bf16 autocast; normalisation and the returned logits stay
    float32. ``on_step(name)`` is called as each step ends ("h2d", "preprocess", "forward"),
    for callers that time them.
    """
    check_precision(precision)
    device = model_device(model)
    data = torch.as_tensor(clips)
    if data.ndim != 5 or data.dtype != torch.uint8:
        raise ValueError("predict_clips expects uint8 clips of shape (N, T, H, W, 3)")
    step = batch_size or data.shape[0] or 1
    mark = on_step or (lambda name: None)
    outputs = []
    for start in range(0, data.shape[0], step):
        chunk = to_device(data[start : start + step], device)
        mark("h2d")
        x = normalize(chunk, protocol)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        mark("preprocess")
        with autocast_for(device, precision):
            logits = model(x)
        outputs.append(logits.float().cpu())
        mark("forward")
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def preset_of(model: nn.Module, preset: str | Preset | None = None) -> Preset:
    """The preset a model was built for; a ``preset`` argument must agree with it.

    Models from ``build_model`` / ``load_model`` carry theirs. Scoring a model with another
    preset's protocol runs without error and gives wrong numbers, so a mismatch raises.
    """
    own = getattr(model, "preset", None)
    if preset is None:
        if own is None:
            raise ValueError("this model does not say which preset it is (build it with x3d.build_model or x3d.load_model, or pass preset=)")
        return own
    given = get_preset(preset)
    if own is not None and own.name != given.name:
        raise ValueError(f"preset {given.name!r} does not match the model, which is {own.name!r}; drop preset= or pass {own.name!r}")
    return given


def predict_video(
    model: nn.Module,
    source: VideoSource,
    preset: str | Preset | None = None,
    views: int = 30,
    protocol: str | TestProtocol | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Fused class probabilities ``(num_classes,)`` float32 of one video, as MMAction2 scores it.

    ``preset`` defaults to the model's own (``model.preset``); one that disagrees raises.
    """
    chosen = preset_of(model, preset)
    proto = resolve_protocol(chosen, protocol)
    prepared = prepare_views(source, chosen, views, proto)
    logits = predict_clips(model, prepared.views, proto, batch_size=batch_size, precision=precision)
    return fuse_views(logits).numpy().astype(np.float32)
