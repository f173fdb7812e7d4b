"""From a video to class probabilities, split where a distributed job needs the seams.

``prepare_views`` is the CPU half (decode, sample, resize, crop; uint8 out, so it is cheap to
ship between processes; it lives in ``x3d.views``, free of torch, and is re-exported here),
``predict_clips`` is the accelerator half (normalise and forward any mix of views from many
videos), and ``predict_video`` chains the two for one video with MMAction2's fusion. The Ray
job calls the halves from different workers.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .decode import VideoSource
from .presets import Preset, TestProtocol, get_preset
from .protocol import fuse_views, normalize, resolve_protocol
from .views import PreparedVideo, prepare_views  # the CPU half, torch-free; re-exported here

__all__ = ["PRECISIONS", "PreparedVideo", "prepare_views", "predict_clips", "Forward", "logits_only", "run_forwards", "model_inputs", "predict_video", "autocast_for",
           "check_precision", "max_clips_per_forward", "preset_of", "set_tf32_for", "to_device", "to_layout"]

#: forward-pass precisions: ``fp32`` is the reference (and the default; on CUDA with TF32 off,
#: which cuDNN's convolutions otherwise use); ``bf16`` runs the forward under
#: ``torch.autocast(dtype=torch.bfloat16)`` and still returns float32 logits; ``tf32`` is fp32
#: with CUDA's TF32 convolutions and matmuls allowed (on a CPU it is fp32).
PRECISIONS = ("fp32", "bf16", "tf32")

#: A tensor past this many elements leaves 32-bit indexing: PyTorch then drops cuDNN for a
#: native depthwise 3D kernel that refuses such inputs (X3D-M above ~151 clips per forward).
MAX_TENSOR_ELEMENTS = 2**31 - 1


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast_for(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: nothing for fp32 and tf32, bf16 autocast on ``device``'s type."""
    if check_precision(precision) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def set_tf32_for(precision: str) -> None:
    """CUDA's TF32 switches for a precision: allowed only for ``tf32``.

    cuDNN convolutions use TF32 by default, which moves fused probabilities off the fp32
    reference, so fp32 (and bf16, whose float32 parts are then float32) turn it off. The
    switches are process-wide: a process runs one model actor (the sweep sets them per cell).
    The legacy flags, because reading them after the new ``fp32_precision`` API has set only
    some raises in torch >= 2.9.
    """
    allow = check_precision(precision) == "tf32"
    torch.backends.cudnn.allow_tf32 = allow
    torch.backends.cuda.matmul.allow_tf32 = allow


_LARGEST: dict[tuple[str, int, int], int] = {}  # repr(preset), clip length, crop -> elements


def _largest_activation(preset: Preset, clip_len: int, crop_size: int) -> int:
    """Elements of the largest tensor a forward of one clip makes (any module's input or
    output), by running the preset's model on the meta device: shapes only, no memory.
    Cached by the preset's whole description (presets hold dicts, so they do not hash)."""
    key = (repr(preset), clip_len, crop_size)
    if key not in _LARGEST:
        _LARGEST[key] = _trace_largest(preset, clip_len, crop_size)
    return _LARGEST[key]


def _trace_largest(preset: Preset, clip_len: int, crop_size: int) -> int:
    from .model import build_model

    with torch.device("meta"):
        model = build_model(preset).eval()
    largest = [crop_size * crop_size * clip_len * 3]

    def hook(module, inputs, output):
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest[0] = max(largest[0], *(t.numel() for t in tensors))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, clip_len, crop_size, crop_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def max_clips_per_forward(preset: str | Preset, protocol: TestProtocol | None = None) -> int:
    """Most clips one forward may hold and keep every activation under 32-bit indexing
    (X3D-S at 13x182x182: 369; X3D-M at 16x256x256: 151)."""
    chosen = get_preset(preset)
    proto = protocol or chosen.protocol()
    return max(1, MAX_TENSOR_ELEMENTS // _largest_activation(chosen, proto.clip_len, proto.crop_size))


def to_device(chunk: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host uint8 batch to ``device``; for CUDA through pinned memory so the copy is asynchronous.

    CPU models never pin (pin_memory needs a CUDA runtime) and get the tensor back unchanged.
    """
    if device.type == "cuda" and chunk.device.type == "cpu":
        return chunk.pin_memory().to(device, non_blocking=True)
    return chunk.to(device, non_blocking=True)


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``(N, C, T, H, W)`` in the memory layout asked. ``normalize`` permutes a channels-last
    uint8 tensor, so its output already has channels_last_3d strides; NCDHW needs the copy."""
    return x.contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)


#: one forward of the model on an input: its logits and, when the caller asked for them, each
#: clip's features (``x3d.features.with_clip_features``), else None
Forward = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


def logits_only(model: nn.Module) -> Forward:
    """The plain forward: logits, no features."""
    return lambda x: (model(x), None)


@torch.inference_mode()
def run_forwards(
    forward: Forward,
    inputs: Iterable[torch.Tensor],
    precision: str = "fp32",
    on_step: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one forward loop (``predict_clips``, ``x3d.features`` and the job's model runner):
    ``forward`` on each input in turn, under ``precision``'s autocast; the logits and the clips'
    features (None when ``forward`` gives none), float32, concatenated, copied to the host once.

    ``inputs`` may be a generator that makes the next input while this forward runs: it is
    asked for it only after the forward was issued and ``on_step("forward")`` was called, and
    this loop holds no reference to an input past its forward, so two inputs at most are alive.
    """
    mark = on_step or (lambda name: None)
    logits, features = [], []
    for x in inputs:
        with autocast_for(x.device, precision):
            out, feats = forward(x)
        del x  # the input's memory can go as soon as the forward is done with it
        logits.append(out.float())
        if feats is not None:
            features.append(feats.float())
        mark("forward")
    empty = torch.empty(0, 0)
    all_logits = torch.cat(logits).cpu() if logits else empty
    return all_logits, (torch.cat(features).cpu() if features else None)


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
    float32. The model sees the clips in ``channels_last`` (channels_last_3d strides) or NCDHW
    (contiguous) as asked, whatever strides normalisation left them in. ``on_step(name)`` is
    called as each step ends ("h2d", "preprocess", "forward"), for callers that time them.
    """
    inputs = model_inputs(model, clips, protocol, batch_size, channels_last, precision, on_step, "predict_clips")
    return run_forwards(logits_only(model), inputs, precision, on_step)[0]


def model_inputs(
    model: nn.Module,
    clips: np.ndarray | torch.Tensor,
    protocol: TestProtocol,
    batch_size: int | None,
    channels_last: bool,
    precision: str,
    on_step: Callable[[str], None] | None,
    caller: str,
) -> Iterator[torch.Tensor]:
    """uint8 clips ``(N, T, H, W, 3)`` as the model's inputs, ``batch_size`` at a time: each chunk
    copied to the model's device ("h2d"), normalised there and put in the layout asked
    ("preprocess"). ``run_forwards``' inputs for ``predict_clips`` and
    ``x3d.features.predict_clips_with_features``."""
    check_precision(precision)
    mark = on_step or (lambda name: None)
    device = model_device(model)
    data = torch.as_tensor(clips)
    if data.ndim != 5 or data.dtype != torch.uint8:
        raise ValueError(f"{caller} expects uint8 clips of shape (N, T, H, W, 3)")
    step = batch_size or data.shape[0] or 1
    for start in range(0, data.shape[0], step):
        chunk = to_device(data[start : start + step], device)
        mark("h2d")
        x = to_layout(normalize(chunk, protocol), channels_last)
        mark("preprocess")
        yield x


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
    frames: str = "mmaction2",
) -> np.ndarray:
    """Fused class probabilities ``(num_classes,)`` float32 of one video, as MMAction2 scores it.

    ``preset`` defaults to the model's own (``model.preset``); one that disagrees raises.
    ``frames="true"`` scores the true frames where MMAction2's reading is inexact (``x3d.decode``).
    """
    chosen = preset_of(model, preset)
    proto = resolve_protocol(chosen, protocol)
    prepared = prepare_views(source, chosen, views, proto, frames=frames)
    logits = predict_clips(model, prepared.views, proto, batch_size=batch_size, precision=precision)
    return fuse_views(logits).numpy().astype(np.float32)
