"""From a video to class probabilities, split where a distributed job needs the seams.

``prepare_views`` is the CPU half (decode, sample, resize, crop; uint8 out, so it is cheap to
ship between processes), ``predict_clips`` is the accelerator half (normalise and forward any
mix of views from many videos), and ``predict_video`` chains the two for one video with
MMAction2's fusion. The Ray job calls the halves from different workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .decode import VideoInfo, VideoSource, read_frames
from .presets import Preset, TestProtocol, get_preset
from .protocol import clip_indices, fuse_views, make_views, normalize, resize_frames, resolve_protocol

__all__ = ["PreparedVideo", "prepare_views", "predict_clips", "predict_video"]


@dataclass
class PreparedVideo:
    """uint8 views ``(V, T, h, w, 3)`` of one video, crop-major as MMAction2 stacks them."""

    views: np.ndarray
    info: VideoInfo
    decode_ms: float


def prepare_views(
    source: VideoSource,
    preset: str | Preset = "x3d_s",
    views: int = 30,
    protocol: str | TestProtocol | None = None,
) -> PreparedVideo:
    """Decode exactly the sampled frames and cut them into the test views."""
    proto = resolve_protocol(preset, protocol)
    plan = proto.view_plan(views)
    start = time.perf_counter()

    def indices_for(info: VideoInfo) -> np.ndarray:
        return clip_indices(info.num_frames, info.fps, preset, views, proto)

    frames, inverse, info = read_frames(
        source, indices_for, transform=lambda block: resize_frames(block, proto.resize_short)
    )
    views_u8 = make_views(frames[inverse], plan)
    return PreparedVideo(views_u8, info, (time.perf_counter() - start) * 1000.0)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict_clips(
    model: nn.Module,
    clips: np.ndarray | torch.Tensor,
    protocol: TestProtocol,
    batch_size: int | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits ``(N, classes)`` float32 on CPU for uint8 clips ``(N, T, H, W, 3)``.

    The clips may come from many videos; fusing them per video is the caller's job
    (``protocol.fuse_views``). Normalisation runs on the model's device so only uint8 crosses
    the host-device link.
    """
    device = model_device(model)
    data = torch.as_tensor(clips)
    if data.ndim != 5 or data.dtype != torch.uint8:
        raise ValueError("predict_clips expects uint8 clips of shape (N, T, H, W, 3)")
    step = batch_size or data.shape[0] or 1
    outputs = []
    for start in range(0, data.shape[0], step):
        chunk = data[start : start + step].to(device, non_blocking=True)
        x = normalize(chunk, protocol)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        outputs.append(model(x).float().cpu())
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
) -> np.ndarray:
    """Fused class probabilities ``(num_classes,)`` float32 of one video, as MMAction2 scores it."""
    proto = resolve_protocol(get_preset(preset), protocol)
    prepared = prepare_views(source, preset, views, proto)
    logits = predict_clips(model, prepared.views, proto, batch_size=batch_size)
    return fuse_views(logits).numpy().astype(np.float32)
