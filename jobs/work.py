"""The per-video work of a decode task, and the model spec every worker receives.

``decode_item`` is what a decode task executes and ``jobs.inference.ModelRunner`` what a model
actor does; both are plain Python, so tests and notebooks can call them directly and the Ray
layer (``cluster/pipeline.py``) only decides where and when they run. Nothing here imports Ray
or torch: decode workers are recycled every few dozen videos, and each start that loads torch
costs ~2 s of CPU and ~220 MB (bench/RESULTS.md, "Decode workers without torch").
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import numpy as np

import x3d
from jobs import storage
from jobs.datasets import VideoItem


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ModelSpec:
    """What every worker needs to know about the model, small enough to ship everywhere."""

    preset: x3d.Preset  # the object, not its name: presets registered at run time travel too
    views: int
    protocol: str | None = None
    precision: str = "fp32"  # forward pass: "fp32" (the reference) or "bf16" autocast

    def test_protocol(self) -> x3d.TestProtocol:
        return self.preset.protocol(self.protocol)


@dataclass
class DecodeResult:
    """Outcome of decoding one video: ``views`` is None exactly when ``error`` is set."""

    error: str | None
    num_views: int = 0
    decode_ms: float = 0.0
    worker: str = field(default_factory=worker_name)


def _source_for(item: VideoItem) -> x3d.decode.VideoSource:
    """Local files are handed to decord by path; remote objects arrive as bytes, no temp file."""
    if item.kind == "rawframes":
        from jobs.rawframes import rawframe_loader

        return x3d.RawFrames(load=rawframe_loader(item), num_frames=int(item.num_frames or 0), name=item.key)
    if storage.is_remote(item.uri):
        return storage.read_bytes(item.uri)
    return storage.local_path(item.uri)


def quiet_decoder_logs() -> None:
    """decord/FFmpeg print native warnings for every broken file; the error row says it once.

    A decode worker decodes one video at a time, so it may mute the native stderr output
    process-wide (``x3d.decode.quiet_native_logs`` says how and why).
    """
    x3d.decode.quiet_native_logs()


def decode_item(item: VideoItem, spec: ModelSpec) -> tuple[DecodeResult, np.ndarray | None]:
    """Read and cut one video into uint8 views. Bad input becomes an error result, never a raise."""
    quiet_decoder_logs()
    start = time.perf_counter()
    try:
        prepared = x3d.prepare_views(_source_for(item), spec.preset, spec.views, spec.protocol)
    except (x3d.DecodeError, storage.StorageError) as exc:
        return DecodeResult(error=str(exc), decode_ms=ms_since(start)), None
    except Exception as exc:  # an unexpected decoder failure must still be a row, not a crash
        return DecodeResult(error=f"{item.key}: {type(exc).__name__}: {exc}".splitlines()[0], decode_ms=ms_since(start)), None
    return DecodeResult(error=None, num_views=int(prepared.views.shape[0]), decode_ms=ms_since(start)), prepared.views


def ms_since(start: float) -> float:
    """Milliseconds since a ``time.perf_counter()`` reading."""
    return (time.perf_counter() - start) * 1000.0
