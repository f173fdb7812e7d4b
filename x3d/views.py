"""The CPU half of scoring a video: decode the sampled frames and cut them into uint8 test views.

Kept apart from ``predict`` because it needs no torch: a process that only decodes (the Ray
job's decode workers, recycled every few dozen videos to shed decord's leaks) then starts
without loading torch, which costs ~2 s of CPU and ~220 MB of memory per worker start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .decode import VideoInfo, VideoSource, read_frames
from .presets import Preset, TestProtocol
from .protocol import clip_indices, make_views, resize_frames, resolve_protocol

__all__ = ["PreparedVideo", "prepare_views"]


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
    on_step: Callable[[str], None] | None = None,
) -> PreparedVideo:
    """Decode exactly the sampled frames and cut them into the test views.

    ``on_step(name)`` is called as each step ends ("decode" after frames are decoded,
    "preprocess" after resizing or cropping), for callers that time the steps.
    """
    step = on_step or _no_step
    proto = resolve_protocol(preset, protocol)
    plan = proto.view_plan(views)
    start = time.perf_counter()

    def indices_for(info: VideoInfo) -> np.ndarray:
        return clip_indices(info.num_frames, info.fps, preset, views, proto)

    def resize(block: np.ndarray) -> np.ndarray:  # read_frames calls it after each decoded block
        step("decode")
        out = resize_frames(block, proto.resize_short)
        step("preprocess")
        return out

    frames, inverse, info = read_frames(source, indices_for, transform=resize)
    step("decode")
    views_u8 = make_views(frames[inverse], plan)
    step("preprocess")
    return PreparedVideo(views_u8, info, (time.perf_counter() - start) * 1000.0)


def _no_step(name: str) -> None:
    pass
