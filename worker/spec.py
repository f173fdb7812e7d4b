"""The plain data every worker process shares: what it must know about the model
(``ModelSpec``), what decoding one video gave (``DecodeResult``) and what travels from the
decode to the model (``Payload``, with ``views_in``, the one count of a video's views). No Ray
and no torch: the decode task, the model runner, the scheduler and the jobs import them here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Union

import numpy as np

import x3d

__all__ = ["DecodeResult", "FramesPayload", "ModelSpec", "Payload", "views_in", "worker_name"]

#: What a decode task ships per video: the distinct resized frames (uint8) and the clip index
#: into them (``x3d.views.PreparedFrames``); the model actor gathers and crops the views.
FramesPayload = tuple[np.ndarray, np.ndarray]
#: What a model runner scores per video: a ``FramesPayload``, or whole uint8 views
#: ``(V, T, h, w, 3)`` (the benchmarks and tests that hand it views directly).
Payload = Union[np.ndarray, FramesPayload]


def views_in(payload: Payload, plan: x3d.ViewPlan) -> int:
    """How many views (clips x crops) a video's payload is scored with: its clips times the
    plan's crops, or the views it holds. The decode's ``DecodeResult.num_views`` and the
    runner's per-video split of a call both count with this."""
    if isinstance(payload, np.ndarray):
        return payload.shape[0]
    return np.asarray(payload[1]).shape[0] * plan.num_crops


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ModelSpec:
    """What every worker needs to know about the model, small enough to ship everywhere."""

    preset: x3d.Preset  # the object, not its name: presets registered at run time travel too
    views: int
    protocol: str | None = None
    precision: str = "fp32"  # forward pass: x3d.predict.PRECISIONS (fp32, the reference; bf16; tf32)
    frames: str = "mmaction2"  # MMAction2's frames or the true ones ("true"): x3d.decode.FRAME_MODES

    def test_protocol(self) -> x3d.TestProtocol:
        return self.preset.protocol(self.protocol)

    @property
    def view_plan(self) -> x3d.ViewPlan:
        """The views each video is scored with (clips, crops, crop size): worked out from
        ``views`` here only; a view count the protocol does not have raises ValueError."""
        return self.test_protocol().view_plan(self.views)


@dataclass
class DecodeResult:
    """Outcome of decoding one video: ``num_views`` is 0 exactly when ``error`` is set."""

    error: str | None
    num_views: int = 0
    decode_ms: float = 0.0
    worker: str = field(default_factory=worker_name)
    stages: dict[str, float] | None = None  # seconds per stage, when the task was timed
    rss_mb: float | None = None  # the worker's peak RSS, when the task was timed
    payload_bytes: int = 0  # what the video's payload puts in the object store
    # How far the worker's private RSS has grown since its first group, read when the video's group was
    # sent (on the group's last result; 0 on the others): the driver recycles a worker past
    # ``PipelineConfig.recycle_rss_mb`` (``rss_growth_mb``).
    rss_growth_mb: float = 0.0
    # the error is the storage's (it could not serve, after its retries), not the video's: the
    # driver retries the video later instead of writing its row (``cluster.scheduler``)
    unavailable: bool = False
    # How its frames were read (x3d.decode.READ_WAYS: fast, mmaction2, sequential, pyav,
    # rawframes); "" when it did not decode.
    frames_read: str = ""
    # (unit, index): the driver's name for the video, set by ``decode_unit`` and echoed back in
    # the model actor's reply, so the driver learns what a group held without opening it.
    place: tuple[int, int] = (-1, -1)
