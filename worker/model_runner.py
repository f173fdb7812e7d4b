"""The model half of every job: one X3D on one device, scoring views of many videos at once.

What a model actor executes (``cluster/pipeline.py`` decides where), as a plain class that
tests and benchmarks call directly.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

import x3d
from worker.decode_task import ModelSpec, ms_since, worker_name
from worker.stages import NULL_TIMER, StageTimer
from x3d.features import check_features, fuse_features, predict_clips_with_features
from x3d.fusion import fold_batchnorm
from x3d.predict import check_precision, to_device
from x3d.protocol import fuse_views, gather_views

#: what a model actor receives per video: uint8 views ``(V, T, h, w, 3)``, or (the decode task's
#: payload) the distinct resized frames and the clip index into them (``x3d.views.PreparedFrames``)
Payload = Union[np.ndarray, tuple[np.ndarray, np.ndarray]]

__all__ = ["CPU_VOXELS_PER_FORWARD", "ModelRunner", "cpu_batch_size"]


#: On CPUs X3D is fastest when a forward is a couple of X3D-S clips, not all 30 views: its
#: activations then stay close to the cores (bench/RESULTS.md: X3D-S 2 clips per forward 2.6x
#: faster than 30, X3D-M best at 1, x3d_tiny best with all its views at once).
CPU_VOXELS_PER_FORWARD = 900_000


def cpu_batch_size(protocol: x3d.TestProtocol) -> int:
    """Clips per forward on a CPU: as many as fit ``CPU_VOXELS_PER_FORWARD`` input voxels."""
    return max(1, CPU_VOXELS_PER_FORWARD // (protocol.clip_len * protocol.crop_size**2))


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
        compile: bool = False,
        features: str | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        check_precision(spec.precision)
        self.protocol = spec.test_protocol()
        self.plan = self.protocol.view_plan(spec.views)
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
        self.compiled = compile
        self._copy_stream = None  # CUDA: the side stream host-to-device copies run on
        if compile:  # opt-in (the GPU benchmark compares it): the first batches pay the compile
            self.model = torch.compile(self.model, dynamic=True)
        # None on a CPU: the cache-sized default; on an accelerator, the whole call at once
        self.batch_size = batch_size or (cpu_batch_size(self.protocol) if self.device.type == "cpu" else None)
        self.name = worker_name()
        # "backbone" / "pre_logits": the forwards also give each clip's features, which
        # ``score_with_features`` hands back; None: ``score`` runs exactly as without them
        self.features = check_features(features) if features else None
        self._local = threading.local()  # each concurrent call's features (actor_concurrency > 1)

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
            "channels_last": self.channels_last,
            "compiled": self.compiled,
        }

    def timer(self) -> StageTimer:
        """A stage timer that waits for the device before each reading (the benchmark's)."""
        if self.device.type == "cuda":
            return StageTimer(sync=lambda: torch.cuda.synchronize(self.device))
        return StageTimer()

    def views_on_device(self, payload: Payload, timer: StageTimer = NULL_TIMER) -> torch.Tensor:
        """One video's uint8 views on the model's device.

        Frames cross to the device as they came (pinned and non-blocking on CUDA), and the clip
        gather and crops run there (``x3d.protocol.gather_views``): the same bytes as
        ``x3d.prepare_views``, with only the distinct frames copied.
        """
        if isinstance(payload, np.ndarray):
            data = to_device(_host_tensor(payload), self.device)
            timer.charge("h2d")
            return data
        frames, inverse = payload
        data = to_device(_host_tensor(frames), self.device)
        timer.charge("h2d")
        views = gather_views(data, torch.from_numpy(np.asarray(inverse, dtype=np.int64)), self.plan)
        timer.charge("preprocess")
        return views

    def score(self, payloads: Sequence[Payload], timer: StageTimer = NULL_TIMER) -> tuple[list[np.ndarray], list[float]]:
        """Fused probabilities per video, and each video's share of the forward time.

        ``timer`` (the benchmark's) is charged from its last mark, so make it just before.
        """
        if self.device.type == "cuda":
            return self._score_cuda(payloads, timer)
        start = time.perf_counter()
        views = [self.views_on_device(p, timer) for p in payloads]
        counts = [v.shape[0] for v in views]
        clips = torch.cat(views)
        timer.charge("preprocess")
        logits = self._forward(clips, timer)
        probs = self._fuse(logits, counts)
        timer.charge("forward")  # the fusion of views is part of the forward stage
        return probs, _shares(ms_since(start), counts)

    def score_with_features(
        self, payloads: Sequence[Payload], timer: StageTimer = NULL_TIMER
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
        """``score``, and each video's feature vector (float32, its views' mean); needs ``features``."""
        if self.features is None:
            raise ValueError("this runner was built without features=")
        self._local.features = []
        try:
            probs, infer_ms = self.score(payloads, timer)
            per_clip = torch.cat(self._local.features) if self._local.features else torch.empty(0, 0)
        finally:
            self._local.features = None
        vectors, offset = [], 0
        for payload in payloads:
            count = self._views_of(payload)
            vectors.append(fuse_features(per_clip[offset : offset + count]).numpy().astype(np.float32))
            offset += count
        return probs, vectors, infer_ms

    def _views_of(self, payload: Payload) -> int:
        if isinstance(payload, np.ndarray):
            return payload.shape[0]
        return np.asarray(payload[1]).shape[0] * self.plan.num_crops

    def _forward(self, clips: torch.Tensor, timer: StageTimer) -> torch.Tensor:
        collected = getattr(self._local, "features", None)
        if collected is not None:  # inside score_with_features: keep the features, return the logits
            logits, features = predict_clips_with_features(
                self.model,
                clips,
                self.protocol,
                self.features,
                self.batch_size,
                channels_last=self.channels_last,
                precision=self.spec.precision,
                on_step=timer.charge,
            )
            collected.append(features)
            return logits
        return x3d.predict_clips(
            self.model,
            clips,
            self.protocol,
            self.batch_size,
            channels_last=self.channels_last,
            precision=self.spec.precision,
            on_step=timer.charge,
        )

    @staticmethod
    def _fuse(logits: torch.Tensor, counts: list[int]) -> list[np.ndarray]:
        probs, offset = [], 0
        for count in counts:
            probs.append(fuse_views(logits[offset : offset + count]).numpy().astype(np.float32))
            offset += count
        return probs

    def _score_cuda(self, payloads: Sequence[Payload], timer: StageTimer) -> tuple[list[np.ndarray], list[float]]:
        """The GPU path: every video's uint8 frames are copied on a side stream from pinned
        memory at once, and the forwards run on the compute stream chunk by chunk as their
        videos arrive, so the copies of later videos overlap the forwards of earlier ones."""
        start = time.perf_counter()
        device = self.device
        compute = torch.cuda.current_stream(device)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device)
        arrived = []
        with torch.cuda.stream(self._copy_stream):
            for payload in payloads:
                host = payload if isinstance(payload, np.ndarray) else payload[0]
                data = _host_tensor(host).pin_memory().to(device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._copy_stream)
                arrived.append((data, event))
        timer.charge("h2d")
        chunk = self.batch_size or 1 << 30
        logits, counts, pending, clips_pending = [], [], [], 0
        for (data, event), payload in zip(arrived, payloads):
            compute.wait_event(event)
            data.record_stream(compute)  # allocated on the copy stream, used on this one
            if isinstance(payload, np.ndarray):
                views = data
            else:
                views = gather_views(data, torch.from_numpy(np.asarray(payload[1], dtype=np.int64)), self.plan)
            pending.append(views)
            counts.append(views.shape[0])
            clips_pending += views.shape[0]
            if clips_pending >= chunk:
                timer.charge("preprocess")
                logits.append(self._forward(torch.cat(pending), timer))
                pending, clips_pending = [], 0
        if pending:
            timer.charge("preprocess")
            logits.append(self._forward(torch.cat(pending), timer))
        probs = self._fuse(torch.cat(logits), counts)
        timer.charge("forward")
        return probs, _shares(ms_since(start), counts)


def _shares(elapsed_ms: float, counts: list[int]) -> list[float]:
    """Each video's share of a call's time, by its clips."""
    total = max(sum(counts), 1)
    return [elapsed_ms * c / total for c in counts]


def _host_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a (possibly read-only) array without a copy.

    Arrays resolved from Ray's object store are read-only views of shared memory; they are
    only ever read here (copied to the device or gathered), so torch's warning about writes
    to a non-writable array does not apply.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
