"""The per-video work of every job, as plain functions and a plain class.

Nothing here imports Ray: ``decode_item`` and ``ModelRunner`` are what a decode task and a
model actor execute, so tests and notebooks can call them directly and the Ray layer
(``cluster/pipeline.py``) only decides where and when they run.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

import x3d
from jobs import storage
from jobs.datasets import VideoItem
from x3d.fusion import fold_batchnorm
from x3d.predict import check_precision
from x3d.protocol import fuse_views


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
    """decord/FFmpeg print native warnings for every broken file; the error row says it once."""
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
    except (ImportError, AttributeError):  # pragma: no cover
        pass


def decode_item(item: VideoItem, spec: ModelSpec) -> tuple[DecodeResult, np.ndarray | None]:
    """Read and cut one video into uint8 views. Bad input becomes an error result, never a raise."""
    quiet_decoder_logs()
    start = time.perf_counter()
    try:
        prepared = x3d.prepare_views(_source_for(item), spec.preset, spec.views, spec.protocol)
    except (x3d.DecodeError, storage.StorageError) as exc:
        return DecodeResult(error=str(exc), decode_ms=_ms_since(start)), None
    except Exception as exc:  # an unexpected decoder failure must still be a row, not a crash
        return DecodeResult(error=f"{item.key}: {type(exc).__name__}: {exc}".splitlines()[0], decode_ms=_ms_since(start)), None
    return DecodeResult(error=None, num_views=int(prepared.views.shape[0]), decode_ms=_ms_since(start)), prepared.views


#: On CPUs X3D is fastest when a forward is a couple of X3D-S clips, not all 30 views: its
#: activations then stay close to the cores (bench/RESULTS.md: X3D-S 2 clips per forward 2.6x
#: faster than 30, X3D-M best at 1, x3d_tiny best with all its views at once).
CPU_VOXELS_PER_FORWARD = 900_000


def cpu_batch_size(protocol: x3d.TestProtocol) -> int:
    """Clips per forward on a CPU: as many as fit ``CPU_VOXELS_PER_FORWARD`` input voxels."""
    return max(1, CPU_VOXELS_PER_FORWARD // (protocol.clip_len * protocol.crop_size**2))


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class ModelRunner:
    """Holds one X3D on one device and scores batches that mix views of several videos."""

    def __init__(
        self,
        spec: ModelSpec,
        state_dict: Mapping[str, torch.Tensor],
        device: str | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
        channels_last: bool | None = None,
        fold_bn: bool = True,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        check_precision(spec.precision)
        self.protocol = spec.test_protocol()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = x3d.build_model(spec.preset)
        model.load_state_dict(dict(state_dict), strict=True)
        # BatchNorm folded into the convs: the same scores to ~1e-7 in fewer passes over
        # memory, which is what bounds X3D's speed (bench/RESULTS.md, "BatchNorm folding").
        self.fold_bn = fold_bn
        if fold_bn:
            model = fold_batchnorm(model)
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model.to(self.device).eval()
        # None on a CPU: the cache-sized default; on an accelerator, the whole call at once
        self.batch_size = batch_size or (cpu_batch_size(self.protocol) if self.device.type == "cpu" else None)
        self.name = worker_name()

    def describe(self) -> dict[str, Any]:
        accel = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {
            "worker": self.name,
            "device": str(self.device),
            "accelerator": accel,
            "threads": torch.get_num_threads(),
            "precision": self.spec.precision,
            "fold_bn": self.fold_bn,
            "batch_size": self.batch_size,
        }

    def score(self, views: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
        """Fused probabilities per video, and each video's share of the forward time."""
        counts = [v.shape[0] for v in views]
        start = time.perf_counter()
        logits = x3d.predict_clips(
            self.model,
            np.concatenate(views),
            self.protocol,
            self.batch_size,
            channels_last=self.channels_last,
            precision=self.spec.precision,
        )
        elapsed = _ms_since(start)
        probs, offset = [], 0
        for count in counts:
            probs.append(fuse_views(logits[offset : offset + count]).numpy().astype(np.float32))
            offset += count
        total = max(sum(counts), 1)
        return probs, [elapsed * c / total for c in counts]
