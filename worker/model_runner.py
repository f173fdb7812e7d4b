"""The model half of every job: one X3D on one device, scoring views of many videos at once.

What a model actor executes (``cluster/pipeline.py`` decides where), as a plain class that
tests and benchmarks call directly.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

import x3d
from worker.decode_task import ModelSpec, ms_since, worker_name
from worker.stages import NULL_TIMER, StageTimer
from x3d.bn_fold import fold_batchnorm
from x3d.features import check_features, forward_with_features, fuse_features, predict_clips_with_features
from x3d.predict import autocast_for, check_precision, max_clips_per_forward, set_tf32_for, to_device, to_layout
from x3d.protocol import fuse_views, gather_views, normalize

#: what a model actor receives per video: uint8 views ``(V, T, h, w, 3)``, or (the decode task's
#: payload) the distinct resized frames and the clip index into them (``x3d.views.PreparedFrames``)
Payload = Union[np.ndarray, tuple[np.ndarray, np.ndarray]]

__all__ = ["CPU_VOXELS_PER_FORWARD", "ModelRunner", "Prepared", "cpu_batch_size"]


#: On CPUs X3D is fastest when a forward is a couple of X3D-S clips, not all 30 views: its
#: activations then stay close to the cores (bench/RESULTS.md: X3D-S 2 clips per forward 2.6x
#: faster than 30, X3D-M best at 1, x3d_tiny best with all its views at once).
CPU_VOXELS_PER_FORWARD = 900_000


def cpu_batch_size(protocol: x3d.TestProtocol) -> int:
    """Clips per forward on a CPU: as many as fit ``CPU_VOXELS_PER_FORWARD`` input voxels."""
    return max(1, CPU_VOXELS_PER_FORWARD // (protocol.clip_len * protocol.crop_size**2))


@dataclass
class Prepared:
    """A call's clips on the device, normalised and in the model's layout, and where they end:
    ``ready`` (CUDA) is recorded on the copy stream once they are there."""

    clips: torch.Tensor
    counts: list[int]  # clips per video, in order
    ready: Any = None


class ModelRunner:
    """Holds one X3D on one device and scores batches that mix views of several videos.

    A call is two steps: ``prepare`` (copy to the device, gather the clips, normalise) and
    ``compute`` (the forwards, fusion and the one wait for the results). Only ``compute`` holds
    the runner's lock, so with two calls in flight (a Ray actor with ``max_concurrency`` 2) the
    next call is prepared while this one's forwards run; on CUDA ``prepare`` runs on a side
    stream, and ``compute`` waits for its event on the device, not on the host.
    """

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
        cudnn_benchmark: bool = True,
        features: str | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        check_precision(spec.precision)
        # fp32 means fp32 on a GPU too: cuDNN's default TF32 moved fused probabilities by up to
        # 6.8e-3 on the test model; only the "tf32" precision allows it. Process-wide switches.
        set_tf32_for(spec.precision)
        self.protocol = spec.test_protocol()
        self.plan = self.protocol.view_plan(spec.views)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = self.device.type == "cuda"
        if cuda:  # every forward but a call's last has the same shape: tune each shape once
            torch.backends.cudnn.benchmark = cudnn_benchmark
        model = x3d.build_model(spec.preset)
        model.load_state_dict(dict(state_dict), strict=True)
        # BatchNorm folded into the convs: the same scores to ~1e-7 in fewer passes over
        # memory, which is what bounds X3D's speed (bench/RESULTS.md, "BatchNorm folding").
        self.fold_bn = fold_bn
        if fold_bn:
            model = fold_batchnorm(model)
        # CPUs run channels_last_3d (measured faster); on a GPU NCDHW is the default until the
        # device sweep (bench/gpu_sweep.py) measures both. Either way the conv input is made to
        # match (x3d.predict.to_layout): normalisation alone leaves channels_last_3d strides.
        self.channels_last = not cuda if channels_last is None else channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model.to(self.device).eval()
        self.compiled = compile
        if compile:  # opt-in (the GPU benchmark compares it): the first batches pay the compile
            self.model = torch.compile(self.model, dynamic=True)
        # Clips per forward: on a CPU the cache-sized default; on an accelerator the whole call,
        # both capped where an activation would pass 32-bit indexing (X3D-M: 151 clips).
        self.max_clips = max_clips_per_forward(spec.preset, self.protocol)
        default = cpu_batch_size(self.protocol) if not cuda else self.max_clips
        self.batch_size = min(batch_size or default, self.max_clips)
        self._copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self._compute_lock = threading.Lock()
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
            "max_clips_per_forward": self.max_clips,
            "channels_last": self.channels_last,
            "compiled": self.compiled,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if self.device.type == "cuda" else None,
        }

    def timer(self) -> StageTimer:
        """A stage timer that waits for the device before each reading (the benchmark's).

        On CUDA it waits for the calling thread's current stream only: the copy stream while a
        call is prepared, the compute stream while it runs, so timing one call does not wait
        for the other call in flight.
        """
        if self.device.type == "cuda":
            return StageTimer(sync=lambda: torch.cuda.current_stream(self.device).synchronize())
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
        index = to_device(_host_tensor(np.asarray(inverse, dtype=np.int64)), self.device)
        timer.charge("h2d")
        views = gather_views(data, index, self.plan)
        timer.charge("preprocess")
        return views

    def score(self, payloads: Sequence[Payload], timer: StageTimer = NULL_TIMER) -> tuple[list[np.ndarray], list[float]]:
        """Fused probabilities per video, and each video's share of the call's time.

        ``timer`` (the benchmark's) is charged from its last mark, so make it just before.
        Safe to call from two threads at once: the second call's preparation overlaps the
        first call's forwards.
        """
        start = time.perf_counter()
        prepared = self.prepare(payloads, timer)
        probs = self.compute(prepared, timer)
        return probs, _shares(ms_since(start), prepared.counts)

    @torch.inference_mode()
    def prepare(self, payloads: Sequence[Payload], timer: StageTimer = NULL_TIMER) -> Prepared:
        """The call's clips on the device, normalised, in the model's layout; no lock held.
        On CUDA everything runs on the copy stream and nothing waits for the device."""
        if self._copy_stream is None:
            views = [self.views_on_device(p, timer) for p in payloads]
            if self.device.type == "cpu":  # the CPU path normalises per forward, in predict_clips
                clips = torch.cat(views)
                timer.charge("preprocess")
                return Prepared(clips, [v.shape[0] for v in views])
            clips = to_layout(normalize(torch.cat(views), self.protocol), self.channels_last)
            timer.charge("preprocess")
            return Prepared(clips, [v.shape[0] for v in views])
        with torch.cuda.stream(self._copy_stream):
            # every copy first, then every gather: a timed call waits for the stream twice, not per video
            arrived = [self.views_on_device(p) if isinstance(p, np.ndarray) else
                       (to_device(_host_tensor(p[0]), self.device),
                        to_device(_host_tensor(np.asarray(p[1], dtype=np.int64)), self.device)) for p in payloads]
            timer.charge("h2d")
            views = [a if isinstance(a, torch.Tensor) else gather_views(a[0], a[1], self.plan) for a in arrived]
            clips = to_layout(normalize(torch.cat(views), self.protocol), self.channels_last)
            timer.charge("preprocess")
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return Prepared(clips, [v.shape[0] for v in views], ready)

    def compute(self, prepared: Prepared, timer: StageTimer = NULL_TIMER) -> list[np.ndarray]:
        """Fused probabilities per video of a prepared call: its forwards, ``batch_size`` clips
        at a time, under the runner's lock; the logits' copy back is the one wait."""
        with self._compute_lock:
            return self._compute(prepared, timer)

    @torch.inference_mode()
    def _compute(self, prepared: Prepared, timer: StageTimer) -> list[np.ndarray]:
        if self.device.type == "cpu":  # uint8 clips: predict_clips normalises per forward
            logits = self._forward(prepared.clips, timer)
        else:
            clips = prepared.clips
            if prepared.ready is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(prepared.ready)
                clips.record_stream(stream)  # made on the copy stream, read on this one
            collected = getattr(self._local, "features", None)
            out, feats = [], []
            with autocast_for(self.device, self.spec.precision):
                for begin in range(0, clips.shape[0], self.batch_size):
                    chunk = clips[begin : begin + self.batch_size]
                    if collected is None:
                        out.append(self.model(chunk).float())
                    else:  # inside score_with_features: the same forward gives the features
                        logits, features = forward_with_features(self.model, chunk, self.features)
                        out.append(logits.float())
                        feats.append(features.float())
            if collected is not None and feats:
                collected.append(torch.cat(feats).cpu())
            logits = torch.cat(out).cpu() if out else torch.empty(0, 0)
        probs = self._fuse(logits, prepared.counts)
        timer.charge("forward")  # the fusion of views is part of the forward stage
        return probs

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
        """Logits on the host of uint8 clips on the device: ``x3d.predict_clips`` (normalise,
        layout, forward), ``batch_size`` clips per forward; inside ``score_with_features`` the
        same forwards' features are kept for it."""
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
