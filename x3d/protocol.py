"""MMAction2's test-time protocol, re-derived so that the same video gives the same numbers.

Each step is one function with no state: which frames to read (``clip_indices``), the short-side
resize (``resize_frames``, bit-compatible with OpenCV's fixed-point INTER_LINEAR on uint8), the
crops (``crop_offsets`` / ``make_views``), normalisation and the fusion of per-view scores. The
rules are MMAction2's test pipeline (1.2.0's, and 0.x's where it differs: ``SampleFrames``,
``Resize``, ``ThreeCrop`` / ``CenterCrop``, the data preprocessor, ``average_clips='prob'``);
tests/x3d/test_parity.py runs MMAction2 itself against each step.

torch is imported only inside the functions that run on tensors (``resize_frames_exact``,
``gather_views``, ``normalize``, ``fuse_views``): sampling, the OpenCV resize and the crops are
what a decode worker runs, and such a process starts faster and lighter without torch
(bench/RESULTS.md, "Decode workers without torch").
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from .presets import Preset, TestProtocol, ViewPlan, get_preset

try:  # optional: OpenCV is the fast CPU path for the resize and what MMAction2 itself calls
    import cv2 as _cv2
except ImportError:  # pragma: no cover - exercised on machines without OpenCV
    _cv2 = None

if TYPE_CHECKING:
    import torch

__all__ = [
    "clip_indices",
    "resized_size",
    "resize_frames",
    "resize_frames_exact",
    "crop_offsets",
    "make_views",
    "gather_views",
    "normalize",
    "fuse_views",
    "resolve_protocol",
]


def resolve_protocol(preset: str | Preset, protocol: str | TestProtocol | None = None) -> TestProtocol:
    if isinstance(protocol, TestProtocol):
        return protocol
    return get_preset(preset).protocol(protocol)


# --------------------------------------------------------------------------- sampling


def clip_indices(
    num_frames: int,
    fps: float | None,
    preset: str | Preset = "x3d_s",
    views: int = 30,
    protocol: str | TestProtocol | None = None,
) -> np.ndarray:
    """Frame indices, shape ``(num_clips, clip_len)``, 0-based, as MMAction2's SampleFrames.

    The 1.x rule (``target_fps``) stretches the clip span by ``fps / target_fps``, spaces clip
    starts by ``floor(max_offset / (K - 1))`` and spreads the L frames with a float64 linspace
    truncated to int32. The 0.x rule centres K clips in K equal segments. Both wrap indices
    modulo ``num_frames`` for videos shorter than one clip.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    proto = resolve_protocol(preset, protocol)
    plan = proto.view_plan(views)
    if proto.sampling == "target_fps":
        inds = _target_fps_indices(num_frames, fps, proto, plan.num_clips)
    elif proto.sampling == "legacy":
        inds = _legacy_indices(num_frames, proto, plan.num_clips)
    else:
        raise ValueError(f"unknown sampling rule {proto.sampling!r}")
    return np.mod(inds, num_frames).astype(np.int64)


def _target_fps_indices(num_frames: int, fps: float | None, proto: TestProtocol, num_clips: int) -> np.ndarray:
    ratio = fps / proto.target_fps if (fps and proto.target_fps) else 1.0
    span = max(1.0, proto.clip_len * proto.frame_interval * ratio)
    max_offset = max(num_frames - span, 0.0)
    if num_clips > 1:
        offsets = np.arange(num_clips) * np.floor(max_offset / float(num_clips - 1))
    else:
        offsets = np.array([max_offset // 2])
    steps = np.linspace(0, span - 1, proto.clip_len).astype(np.int32)
    return (offsets[:, None] + steps[None, :]).astype(np.int64)


def _legacy_indices(num_frames: int, proto: TestProtocol, num_clips: int) -> np.ndarray:
    span = proto.clip_len * proto.frame_interval
    segment = (num_frames - span + 1) / float(num_clips)
    if num_frames > span - 1:
        offsets = (np.arange(num_clips) * segment + segment / 2.0).astype(np.int64)
    else:
        offsets = np.zeros(num_clips, dtype=np.int64)
    return offsets[:, None] + np.arange(proto.clip_len)[None, :] * proto.frame_interval


# --------------------------------------------------------------------------- resize

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the short side exactly ``short_side`` and the long side rounded half up."""
    factor = short_side / min(height, width)
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _linear_taps(src: int, dst: int, horizontal: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit fixed-point weights of OpenCV's INTER_LINEAR along one axis.

    Past the borders OpenCV zeroes the fraction horizontally, but vertically it keeps the
    fraction and only clamps the row index, so both taps read the same edge row.
    """
    scale = src / dst
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    left = np.floor(pos).astype(np.int64)
    frac = (pos - left.astype(np.float32)).astype(np.float32)
    if horizontal:
        outside = (left < 0) | (left >= src - 1)
        frac[outside] = 0.0
    left = np.clip(left, 0, src - 1)
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int32)
    right = np.clip(np.floor(pos).astype(np.int64) + 1, 0, src - 1)
    if horizontal:
        right = np.minimum(left + 1, src - 1)
    return left, right, np.stack([w0, w1])


def resize_frames(frames: np.ndarray | torch.Tensor, short_side: int) -> np.ndarray | torch.Tensor:
    """Resize ``(n, H, W, C)`` uint8 frames so the short side is ``short_side``.

    numpy in -> numpy out through OpenCV when it is installed (fast, and the very function
    MMAction2 calls); everything else goes through ``resize_frames_exact``, which gives the
    same bytes (tests hold the two equal) and also runs on a GPU tensor.
    """
    if isinstance(frames, np.ndarray) and _cv2 is not None:
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError("resize_frames expects (n, H, W, C) uint8 frames")
        out_h, out_w = resized_size(frames.shape[1], frames.shape[2], short_side)
        out = np.empty((frames.shape[0], out_h, out_w, frames.shape[3]), dtype=np.uint8)
        for i, frame in enumerate(frames):
            out[i] = _cv2.resize(frame, (out_w, out_h), interpolation=_cv2.INTER_LINEAR).reshape(out[i].shape)
        return out
    result = resize_frames_exact(frames, short_side)
    return result.numpy() if isinstance(frames, np.ndarray) else result


def resize_frames_exact(frames: np.ndarray | torch.Tensor, short_side: int) -> torch.Tensor:
    """OpenCV's uint8 INTER_LINEAR resize re-derived in integer torch ops.

    Reproduces cv2.resize(INTER_LINEAR) on uint8, which MMAction2 uses, bit for bit: a
    horizontal pass with 11-bit weights into int32, then OpenCV's SIMD vertical pass,
    ``((a >> 4) * b0 >> 16) + ((c >> 4) * b1 >> 16) + 2 >> 2``. (The textbook rounding
    ``(a*b0 + c*b1 + 2**21) >> 22`` differs by one grey level on some pixels.) Integer torch
    ops keep it exact on any device; the result stays on the input's device.
    """
    import torch

    src = torch.as_tensor(frames)
    if src.dtype != torch.uint8 or src.ndim != 4:
        raise ValueError("resize_frames expects (n, H, W, C) uint8 frames")
    n, h, w, c = src.shape
    out_h, out_w = resized_size(h, w, short_side)
    dev = src.device
    xl, xr, xw = (torch.as_tensor(a, device=dev) for a in _linear_taps(w, out_w, horizontal=True))
    yl, yr, yw = (torch.as_tensor(a, device=dev) for a in _linear_taps(h, out_h, horizontal=False))

    # Vertical taps first pick the rows, so the horizontal pass only touches rows in use.
    rows = torch.cat([yl, yr]).unique()
    pos = torch.empty(h, dtype=torch.long, device=dev)
    pos[rows] = torch.arange(rows.numel(), device=dev)
    part = src.index_select(1, rows)
    horiz = part.index_select(2, xl).to(torch.int32) * xw[0].view(1, 1, -1, 1)
    horiz += part.index_select(2, xr).to(torch.int32) * xw[1].view(1, 1, -1, 1)
    horiz >>= 4
    top = horiz.index_select(1, pos[yl]) * yw[0].view(1, -1, 1, 1)
    top >>= 16
    bottom = horiz.index_select(1, pos[yr]) * yw[1].view(1, -1, 1, 1)
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2
    return top.clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- crops and views


def crop_offsets(height: int, width: int, plan: ViewPlan) -> list[tuple[int, int]]:
    """(y0, x0) per crop, in MMAction2's order: ThreeCrop = left, right, middle (floor steps)."""
    size = plan.crop_size
    if plan.crop_mode == "center":
        if height < size or width < size:
            raise ValueError(f"frame {height}x{width} is smaller than the {size}px centre crop")
        return [((height - size) // 2, (width - size) // 2)]
    if plan.crop_mode == "three":
        if height == size:
            step = (width - size) // 2
            return [(0, 0), (0, 2 * step), (0, step)]
        if width == size:
            step = (height - size) // 2
            return [(0, 0), (2 * step, 0), (step, 0)]
        raise ValueError(f"ThreeCrop needs one side equal to {size}, frame is {height}x{width}")
    raise ValueError(f"unknown crop mode {plan.crop_mode!r}")


def make_views(clips: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """Crop resized clips ``(clips, T, H, W, C)`` into views ``(views, T, h, w, C)``.

    Crop-major (view = crop * num_clips + clip), the order MMAction2's FormatShape produces.
    """
    _, _, h, w, _ = clips.shape
    size = plan.crop_size
    crops = [clips[:, :, y : y + size, x : x + size] for y, x in crop_offsets(h, w, plan)]
    return np.ascontiguousarray(np.concatenate(crops, axis=0))


def gather_views(
    frames: torch.Tensor, inverse: torch.Tensor, plan: ViewPlan, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """``make_views(frames[inverse], plan)[start:stop]`` in torch, on the frames' device (the model's).

    ``frames`` ``(n, H, W, C)`` are a video's distinct resized frames and ``inverse``
    ``(clips, T)`` indexes them. Pure indexing, so the result is the very bytes ``make_views``
    gives (tests hold them equal); run on a GPU it moves the crops next to the model, and only
    the distinct frames cross the host-device link. Views are crop-major (every clip's first
    crop, then every clip's second...); each crop is cut before the gather, so only the views
    asked are made (a model call takes a video's views in forward-sized pieces).
    """
    import torch

    clips_n, length = inverse.shape
    offsets = crop_offsets(frames.shape[1], frames.shape[2], plan)
    stop = clips_n * len(offsets) if stop is None else stop
    index = inverse.to(device=frames.device, dtype=torch.long)
    size = plan.crop_size
    parts = []
    for crop, (y, x) in enumerate(offsets):
        first, end = max(start - crop * clips_n, 0), min(stop - crop * clips_n, clips_n)
        if first < end:
            cut = frames[:, y : y + size, x : x + size].index_select(0, index[first:end].reshape(-1))
            parts.append(cut.view(end - first, length, size, size, frames.shape[3]))
    if not parts:
        return frames.new_empty((0, length, size, size, frames.shape[3]))
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=0)


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation constants on a device, made once: building them per forward is a
    host-to-device copy (and on CUDA a wait) per call. Never written, so sharing them is safe."""
    import torch

    def on(values):
        return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1, 1)

    return on(mean), on(std)


def normalize(views: torch.Tensor, protocol: TestProtocol) -> torch.Tensor:
    """uint8 ``(V, T, H, W, C)`` -> float32 ``(V, C, T, H, W)``, ``(x - mean) / std``.

    The permute is a view, so a contiguous input gives channels_last_3d strides: callers that
    want NCDHW make it contiguous (``x3d.predict.to_layout``).
    """
    import torch

    mean, std = _mean_std(tuple(protocol.mean), tuple(protocol.std), views.device)
    x = views.permute(0, 4, 1, 2, 3).to(torch.float32, copy=True)  # a new tensor: the input is never written
    return x.sub_(mean).div_(std)  # in place, the same values: one float32 copy of the views, not three


def fuse_views(logits: torch.Tensor) -> torch.Tensor:
    """MMAction2's ``average_clips='prob'``: softmax over classes per view, then mean over views."""
    import torch

    return torch.softmax(logits, dim=-1).mean(dim=0)

