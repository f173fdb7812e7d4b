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
from worker.decode_task import ms_since
from worker.spec import ModelSpec, worker_name
from worker.stages import NULL_TIMER, StageTimer
from x3d.bn_fold import fold_batchnorm
from x3d.features import check_features, forward_with_features, fuse_features
from x3d.predict import autocast_for, check_precision, max_clips_per_forward, set_tf32_for, to_device, to_layout
from x3d.protocol import fuse_views, gather_views, normalize

#: what a model actor receives per video: uint8 views ``(V, T, h, w, 3)``, or (the decode task's
#: payload) the distinct resized frames and the clip index into them (``x3d.views.PreparedFrames``)
Payload = Union[np.ndarray, tuple[np.ndarray, np.ndarray]]

__all__ = ["CPU_VOXELS_PER_FORWARD", "ModelRunner", "Prepared", "cpu_batch_size", "plan_forwards"]


#: On CPUs X3D is fastest when a forward is a couple of X3D-S clips, not all 30 views: its
#: activations then stay close to the cores (bench/RESULTS.md: X3D-S 2 clips per forward 2.6x
#: faster than 30, X3D-M best at 1, x3d_tiny best with all its views at once).
CPU_VOXELS_PER_FORWARD = 900_000


def cpu_batch_size(protocol: x3d.TestProtocol) -> int:
    """Clips per forward on a CPU: as many as fit ``CPU_VOXELS_PER_FORWARD`` input voxels."""
    return max(1, CPU_VOXELS_PER_FORWARD // (protocol.clip_len * protocol.crop_size**2))


#: one forward's clips: (video in the call, first view, end view) spans, in the call's order
Spans = list[tuple[int, int, int]]


@dataclass
class Prepared:
    """A call cut into forwards: each forward's spans of views (``plan_forwards``), and the
    first forward's input already on the device (normalised, in the model's layout); ``ready``
    (CUDA) is recorded on the copy stream once it is there. The other forwards' inputs are made
    one ahead while the call computes, so a call never holds more than two of them."""

    payloads: Sequence[Payload]
    counts: list[int]  # clips per video, in order
    forwards: list[Spans]
    first: torch.Tensor | None = None
    ready: Any = None


def plan_forwards(counts: Sequence[int], size: int) -> list[Spans]:
    """The call's clips (every video's views, in order) cut every ``size`` clips: the forwards
    a whole-call tensor sliced by ``size`` would give, so the scores are the same bytes."""
    forwards: list[Spans] = []
    current: Spans = []
    room = size
    for video, count in enumerate(counts):
        begin = 0
        while begin < count:
            take = min(room, count - begin)
            current.append((video, begin, begin + take))
            begin, room = begin + take, room - take
            if room == 0:
                forwards.append(current)
                current, room = [], size
    if current:
        forwards.append(current)
    return forwards


class ModelRunner:
    """Holds one X3D on one device and scores batches that mix views of several videos.

    A call is two steps: ``prepare`` (its first forward's input: frames copied to the device,
    clips gathered, cropped and normalised there) and ``compute`` (the forwards, each next
    input made while the one before runs, fusion, and the one wait for the results). Inputs
    are made a forward at a time, so a call's device memory does not grow with its size. Only
    ``compute`` holds the runner's lock, so with two calls in flight (a Ray actor with
    ``max_concurrency`` 2) the next call is prepared while this one's forwards run; on CUDA
    inputs are made on a side stream, and ``compute`` waits for their events on the device.
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
        self.plan = spec.view_plan
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
        # "backbone" / "pre_logits": ``score_with_features``'s forwards also give each clip's
        # features; None: the runner scores only
        self.features = check_features(features) if features else None

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
        """The call's first forward on the device, and the plan of the rest; no lock held.

        A call's device memory is bounded by its forwards, not by its size: ``compute`` makes
        each later forward's input while the one before runs (docs/scaling.md states the bound).
        On CUDA everything here runs on the copy stream and nothing waits for the device.
        """
        counts = [self._views_of(p) for p in payloads]
        prepared = Prepared(payloads, counts, plan_forwards(counts, self.batch_size))
        if prepared.forwards:
            prepared.first, prepared.ready = self._make_input(prepared, 0, timer, {})
        return prepared

    def compute(self, prepared: Prepared, timer: StageTimer = NULL_TIMER) -> list[np.ndarray]:
        """Fused probabilities per video of a prepared call: its forwards, ``batch_size`` clips
        at a time, under the runner's lock; the logits' copy back is the one wait."""
        with self._compute_lock:
            return self._compute(prepared, timer)

    def logits(self, prepared: Prepared, timer: StageTimer = NULL_TIMER) -> torch.Tensor:
        """A prepared call's per-clip logits, float32 on the host, under the runner's lock:
        what ``compute`` fuses (the device checks compare them across devices)."""
        with self._compute_lock:
            return self._logits(prepared, timer)

    @torch.inference_mode()
    def _compute(self, prepared: Prepared, timer: StageTimer) -> list[np.ndarray]:
        probs = self._fuse(self._logits(prepared, timer), prepared.counts)
        timer.charge("forward")  # the fusion of views is part of the forward stage
        return probs

    def _logits(self, prepared: Prepared, timer: StageTimer) -> torch.Tensor:
        return self._forwards(prepared, timer, with_features=False)[0]

    @torch.inference_mode()
    def _forwards(self, prepared: Prepared, timer: StageTimer, with_features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The call's forwards: per-clip logits (float32, host) and, ``with_features``, per-clip
        features from the same forwards (``self.features``'s kind)."""
        cuda = self._copy_stream is not None
        stream = torch.cuda.current_stream(self.device) if cuda else None
        cache: dict[str, Any] = {}  # the straddling video's frames on the device, for the next forward
        out, feats, done = [], [], None
        x, ready = prepared.first, prepared.ready
        prepared.first = prepared.ready = None  # the call's tensors live only in this loop
        for step in range(len(prepared.forwards)):
            if ready is not None:
                stream.wait_event(ready)  # made on the copy stream, read on this one
                x.record_stream(stream)
            with autocast_for(self.device, self.spec.precision):
                if not with_features:
                    out.append(self.model(x).float())
                else:  # the same forward gives the features
                    logits, features = forward_with_features(self.model, x, self.features)
                    out.append(logits.float())
                    feats.append(features.float())
            x = None
            if cuda:
                # The next input is made while this forward runs, once the one before has
                # ended: without that wait the host runs ahead and each input takes new memory.
                if done is not None:
                    done.synchronize()
                done = torch.cuda.Event()
                done.record(stream)
            timer.charge("forward")  # (the benchmark's timer waits for this forward: no overlap when timed)
            if step + 1 < len(prepared.forwards):
                x, ready = self._make_input(prepared, step + 1, timer, cache)
        features = (torch.cat(feats).cpu() if feats else torch.empty(0, 0)) if with_features else None
        return (torch.cat(out).cpu() if out else torch.empty(0, 0)), features

    def _make_input(self, prepared: Prepared, step: int, timer: StageTimer, cache: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """One forward's input on the device: its videos' frames copied, its views gathered and
        cropped, normalised, in the model's layout; on CUDA on the copy stream, with the event
        that marks it ready. ``cache`` keeps the last video's frames there: a video cut between
        two forwards crosses once."""
        if self._copy_stream is None:
            return self._input(prepared, step, timer, cache), None
        with torch.cuda.stream(self._copy_stream):
            x = self._input(prepared, step, timer, cache)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return x, ready

    def _input(self, prepared: Prepared, step: int, timer: StageTimer, cache: dict[str, Any]) -> torch.Tensor:
        spans = prepared.forwards[step]
        arrived = []
        for video, _, _ in spans:  # every copy first, then every gather: a timed call waits twice, not per video
            if cache.get("video") != video:
                payload = prepared.payloads[video]
                if isinstance(payload, np.ndarray):
                    cache["data"] = payload  # whole views: only the span asked crosses
                else:
                    cache["data"] = (to_device(_host_tensor(payload[0]), self.device),
                                     to_device(_host_tensor(np.asarray(payload[1], dtype=np.int64)), self.device))
                cache["video"] = video
            arrived.append(cache["data"])
        timer.charge("h2d")
        views = []
        for (video, begin, end), data in zip(spans, arrived):
            if isinstance(data, np.ndarray):
                views.append(to_device(_host_tensor(data[begin:end]), self.device))
            else:
                views.append(gather_views(data[0], data[1], self.plan, begin, end))
        clips = views[0] if len(views) == 1 else torch.cat(views)
        del views, arrived
        x = to_layout(normalize(clips, self.protocol), self.channels_last)
        timer.charge("preprocess")
        return x

    def score_with_features(
        self, payloads: Sequence[Payload], timer: StageTimer = NULL_TIMER
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
        """``score``, and each video's feature vector (float32, its views' mean); needs ``features``."""
        if self.features is None:
            raise ValueError("this runner was built without features=")
        start = time.perf_counter()
        prepared = self.prepare(payloads, timer)
        with self._compute_lock:
            logits, per_clip = self._forwards(prepared, timer, with_features=True)
            probs = self._fuse(logits, prepared.counts)
            timer.charge("forward")
        vectors = [fuse_features(clips).numpy().astype(np.float32) for clips in torch.split(per_clip, prepared.counts)] \
            if prepared.counts else []
        return probs, vectors, _shares(ms_since(start), prepared.counts)

    def _views_of(self, payload: Payload) -> int:
        if isinstance(payload, np.ndarray):
            return payload.shape[0]
        return np.asarray(payload[1]).shape[0] * self.plan.num_crops

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
