"""From a video to class probabilities, split where a distributed job needs the seams.

``prepare_views`` is the CPU half (decode, sample, resize, crop; uint8 out, so it is cheap to
ship between processes; it lives in ``x3d.views``, free of torch, and is re-exported here),
``predict_clips`` is the accelerator half (normalise and forward any mix of views from many
videos), and ``predict_video`` chains the two for one video with MMAction2's fusion. The Ray
job calls the halves from different workers.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from .decode import VideoSource
from .presets import Preset, TestProtocol, get_preset
from .protocol import fuse_views, normalize, resolve_protocol
from .views import PreparedVideo, prepare_views  # the CPU half, torch-free; re-exported here

__all__ = ["PRECISIONS", "PreparedVideo", "prepare_views", "predict_clips", "predict_video", "autocast_for", "check_precision", "to_device"]

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
) -> torch.Tensor:
    """Logits ``(N, classes)`` float32 on CPU for uint8 clips ``(N, T, H, W, 3)``.

    The clips may come from many videos; fusing them per video is the caller's job
    (``protocol.fuse_views``). Normalisation runs on the model's device so only uint8 crosses
    the host-device link (pinned and non-blocking when that device is CUDA). ``precision``
    ``"bf16"`` runs the forward under bf16 autocast; normalisation and the returned logits stay
    float32.
    """
    check_precision(precision)
    device = model_device(model)
    data = torch.as_tensor(clips)
    if data.ndim != 5 or data.dtype != torch.uint8:
        raise ValueError("predict_clips expects uint8 clips of shape (N, T, H, W, 3)")
    step = batch_size or data.shape[0] or 1
    outputs = []
    for start in range(0, data.shape[0], step):
        chunk = to_device(data[start : start + step], device)
        x = normalize(chunk, protocol)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with autocast_for(device, precision):
            logits = model(x)
        outputs.append(logits.float().cpu())
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def predict_video(
    model: nn.Module,
    source: VideoSource,
    preset: str | Preset = "x3d_s",
    views: int = 30,
    protocol: str | TestProtocol | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Fused class probabilities ``(num_classes,)`` float32 of one video, as MMAction2 scores it."""
    proto = resolve_protocol(get_preset(preset), protocol)
    prepared = prepare_views(source, preset, views, proto)
    logits = predict_clips(model, prepared.views, proto, batch_size=batch_size, precision=precision)
    return fuse_views(logits).numpy().astype(np.float32)
