"""The CPU half of scoring a video: decode the sampled frames and cut them into uint8 test views.

Kept apart from ``predict`` because it needs no torch: a process that only decodes (the Ray
job's decode workers, each replaced when its memory has grown ``recycle_rss_mb`` to shed
decord's leaks: ``cluster.config``) then starts without loading torch, which would cost CPU
and memory at every worker start (bench/RESULTS.md, "Decode workers without torch").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .decode import VideoInfo, VideoSource, read_frames
from .presets import Preset, TestProtocol, ViewPlan
from .protocol import clip_indices, crop_offsets, make_views, resize_frames, resolve_protocol

__all__ = ["PreparedFrames", "PreparedVideo", "prepare_frames", "prepare_views", "views_from_frames"]


@dataclass
class PreparedVideo:
    """uint8 views ``(V, T, h, w, 3)`` of one video, crop-major as MMAction2 stacks them."""

    views: np.ndarray
    info: VideoInfo
    decode_ms: float


@dataclass
class PreparedFrames:
    """The distinct resized frames ``(n, H, W, 3)`` uint8 of one video, each once, and the clip
    index ``inverse`` ``(clips, T)`` into them: ``frames[inverse]`` are the clips. Read in
    MMAction2's order (``info.read == "mmaction2"``) one index may stand for two different
    frames, so "distinct" is by bytes there, not by index.

    ``frames`` are cut to the box the crops cover (``trim_to_crops``). This is what the Ray job
    ships from a decode task to a model actor: overlapping clips share frames and the three crops
    of a frame overlap, so at 30 views it is well under the views' bytes (bench/RESULTS.md,
    "Pipeline ceiling, units of many videos"). The gather and crops (``views_from_frames`` here,
    its torch twin ``x3d.protocol.gather_views`` on the model's device) are pure indexing, so
    the views are the same bytes either way.
    """

    frames: np.ndarray
    inverse: np.ndarray
    info: VideoInfo
    decode_ms: float


def views_from_frames(frames: np.ndarray, inverse: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """The uint8 views ``(V, T, h, w, 3)`` of ``PreparedFrames`` (what ``prepare_views`` returns)."""
    return make_views(frames[inverse], plan)


def prepare_views(
    source: VideoSource,
    preset: str | Preset = "x3d_s",
    views: int = 30,
    protocol: str | TestProtocol | None = None,
    on_step: Callable[[str], None] | None = None,
    frames: str = "mmaction2",
) -> PreparedVideo:
    """Decode exactly the sampled frames and cut them into the test views.

    ``on_step(name)`` is called as each step ends ("decode" after frames are decoded,
    "preprocess" after resizing or cropping), for callers that time the steps. ``frames``:
    MMAction2's frames (``"mmaction2"``) or the true ones (``"true"``): ``x3d.decode.read_frames``.
    """
    step = on_step or _no_step
    proto = resolve_protocol(preset, protocol)
    prepared = prepare_frames(source, preset, views, proto, on_step, frames=frames)
    views_u8 = views_from_frames(prepared.frames, prepared.inverse, proto.view_plan(views))
    step("preprocess")
    return PreparedVideo(views_u8, prepared.info, prepared.decode_ms)


def prepare_frames(
    source: VideoSource,
    preset: str | Preset = "x3d_s",
    views: int = 30,
    protocol: str | TestProtocol | None = None,
    on_step: Callable[[str], None] | None = None,
    frames: str = "mmaction2",
) -> PreparedFrames:
    """Decode exactly the sampled frames, each once, and resize them; no crops.

    ``on_step`` and ``frames`` as for ``prepare_views``; ``info.read`` says how they were read.
    """
    step = on_step or _no_step
    proto = resolve_protocol(preset, protocol)
    start = time.perf_counter()

    def indices_for(info: VideoInfo) -> np.ndarray:
        return clip_indices(info.num_frames, info.fps, preset, views, proto)

    def resize(block: np.ndarray) -> np.ndarray:  # read_frames calls it after each decoded block
        step("decode")
        out = resize_frames(block, proto.resize_short)
        step("preprocess")
        return out

    decoded, inverse, info = read_frames(source, indices_for, transform=resize, frames=frames)
    step("decode")
    decoded = trim_to_crops(decoded, proto.view_plan(views))
    step("preprocess")
    return PreparedFrames(decoded, inverse, info, (time.perf_counter() - start) * 1000.0)


def trim_to_crops(frames: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """Resized frames cut to the box the crops cover: what nothing reads is not shipped.

    A centre crop keeps only its window (X3D-S at 10 views on 16:9 video: 182x182 of 182x324);
    three crops cover the frame but for a column when the margin is odd. The crops of the trimmed
    frame (``crop_offsets`` on its size) are the same pixels as those of the whole frame.
    """
    offsets = crop_offsets(frames.shape[1], frames.shape[2], plan)
    size = plan.crop_size
    y0, x0 = min(y for y, _ in offsets), min(x for _, x in offsets)
    y1, x1 = max(y for y, _ in offsets) + size, max(x for _, x in offsets) + size
    if (y0, x0, y1, x1) == (0, 0, frames.shape[1], frames.shape[2]):
        return frames
    return np.ascontiguousarray(frames[:, y0:y1, x0:x1])


def _no_step(name: str) -> None:
    pass
