"""The model half of every job: one X3D on one device, scoring views of many videos at once.

What a model actor executes (``cluster/pipeline.py`` decides where), as a plain class that
tests and benchmarks call directly.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

import x3d
from worker.spec import ModelSpec, Payload, views_in, worker_name
from worker.stages import NULL_TIMER, StageTimer, ms_since
from x3d.bn_fold import fold_batchnorm
from x3d.features import check_feature_kind, fuse_features, with_clip_features
from x3d.predict import check_precision, logits_only, max_clips_per_forward, run_forwards, set_tf32_for, to_device, to_layout
from x3d.protocol import fuse_views, gather_views, normalize

__all__ = ["CPU_VOXELS_PER_FORWARD", "CallScores", "ModelRunner", "Prepared", "cpu_batch_size", "plan_forwards"]


#: On CPUs X3D is fastest when a forward is a couple of clips, not all its views: its
#: activations then stay close to the cores (bench/RESULTS.md, "The CPU fast path").
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
    counts: list[int]  # views per video, in order (``worker.spec.views_in``)
    forwards: list[Spans]
    first: torch.Tensor | None = None
    ready: Any = None


@dataclass
class CallScores:
    """What a call gives per video, in order: fused probabilities, each video's share of the
    call's time (ms, by its views), and its embedding when the runner has a feature kind."""

    probs: list[np.ndarray]
    shares_ms: list[float]
    embeddings: list[np.ndarray] | None = None


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

    ``score`` is a call: ``prepare`` (its first forward's input: frames copied to the device,
    clips gathered, cropped and normalised there), then the forwards (each next input made
    while the one before runs), the fusion, and the one wait for the results. Inputs are made
    a forward at a time, so a call's device memory does not grow with its size. Only the
    forwards hold the runner's lock, so with two calls in flight (a Ray actor with
    ``max_concurrency`` 2) the next call is prepared while this one's forwards run; on CUDA
    inputs are made on a side stream, and the forwards wait for their events on the device.
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
        feature_kind: str | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        check_precision(spec.precision)
        # fp32 means fp32 on a GPU too (cuDNN's default TF32 moves the fused probabilities off
        # MMAction2's): only the "tf32" precision allows it. Process-wide switches.
        set_tf32_for(spec.precision)
        self.protocol = spec.test_protocol()
        self.plan = spec.view_plan
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = self.device.type == "cuda"
        if cuda:  # every forward but a call's last has the same shape: tune each shape once
            torch.backends.cudnn.benchmark = cudnn_benchmark
        model = x3d.build_model(spec.preset)
        model.load_state_dict(dict(state_dict), strict=True)
        # BatchNorm folded into the convs: the same scores to float tolerance in fewer passes
        # over memory, which is what bounds X3D's speed (bench/RESULTS.md, "The CPU fast path").
        self.fold_bn = fold_bn
        if fold_bn:
            model = fold_batchnorm(model)
        # CPUs run channels_last_3d (faster: bench/RESULTS.md, "X3D forward: batch size on CPU");
        # on a GPU NCDHW is the default until the
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
        # x3d.features.FEATURE_KINDS: every forward also gives each clip's features, and a call
        # each video's embedding; None: the runner scores only. Decided here, once.
        self.feature_kind = check_feature_kind(feature_kind) if feature_kind else None
        self._forward = with_clip_features(self.model, feature_kind) if feature_kind else logits_only(self.model)

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

    @torch.inference_mode()
    def score(self, payloads: Sequence[Payload], timer: StageTimer = NULL_TIMER) -> CallScores:
        """Every video's fused probabilities, share of the call's time and (with a feature
        kind) embedding: the float32 mean of its views' features, from the same forwards.

        ``timer`` (the benchmark's) is charged from its last mark, so make it just before.
        Safe to call from two threads at once: the second call's preparation overlaps the
        first call's forwards.
        """
        start = time.perf_counter()
        prepared = self.prepare(payloads, timer)
        with self._compute_lock:
            logits, features = self._forwards(prepared, timer)
            probs = self._fuse(logits, prepared.counts)
            timer.charge("forward")  # the fusion of views is part of the forward stage
        embeddings = None
        if self.feature_kind:
            per_video = torch.split(features, prepared.counts) if prepared.counts else []
            embeddings = [fuse_features(clips).numpy().astype(np.float32) for clips in per_video]
        return CallScores(probs, _shares(ms_since(start), prepared.counts), embeddings)

    @torch.inference_mode()
    def prepare(self, payloads: Sequence[Payload], timer: StageTimer = NULL_TIMER) -> Prepared:
        """The call's first forward on the device, and the plan of the rest; no lock held.

        A call's device memory is bounded by its forwards, not by its size: ``_inputs`` makes
        each later forward's input while the one before runs (docs/scaling.md states the bound).
        On CUDA everything here runs on the copy stream and nothing waits for the device.
        """
        counts = [views_in(p, self.plan) for p in payloads]
        prepared = Prepared(payloads, counts, plan_forwards(counts, self.batch_size))
        if prepared.forwards:
            prepared.first, prepared.ready = self._make_input(prepared, 0, timer, {})
        return prepared

    def logits(self, prepared: Prepared, timer: StageTimer = NULL_TIMER) -> torch.Tensor:
        """A prepared call's per-clip logits, float32 on the host, under the runner's lock:
        what ``score`` fuses (the device checks compare them across devices)."""
        with self._compute_lock:
            return self._forwards(prepared, timer)[0]

    def _forwards(self, prepared: Prepared, timer: StageTimer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The call's forwards (``x3d.predict.run_forwards``, the library's one loop, over this
        runner's inputs): per-clip logits and, with a feature kind, per-clip features; float32
        on the host."""
        return run_forwards(self._forward, self._inputs(prepared, timer), self.spec.precision, timer.charge)

    def _inputs(self, prepared: Prepared, timer: StageTimer) -> Iterator[torch.Tensor]:
        """The call's forward inputs in turn, each made while the forward before it runs.

        On CUDA an input made on the copy stream is handed over once the compute stream waits
        for it; the next one is made only after the forward before the one just issued has
        ended: without that wait the host runs ahead and each input takes new memory.
        """
        cuda = self._copy_stream is not None
        stream = torch.cuda.current_stream(self.device) if cuda else None
        cache: dict[str, Any] = {}  # the straddling video's frames on the device, for the next forward
        done = None
        x, ready = prepared.first, prepared.ready
        prepared.first = prepared.ready = None  # the call's tensors live only in this loop
        for step in range(len(prepared.forwards)):
            if ready is not None:
                stream.wait_event(ready)  # made on the copy stream, read on this one
                x.record_stream(stream)
            yield x
            x = None  # run_forwards has issued this forward and holds the input no more
            if cuda:
                if done is not None:
                    done.synchronize()
                done = torch.cuda.Event()
                done.record(stream)
            if step + 1 < len(prepared.forwards):
                x, ready = self._make_input(prepared, step + 1, timer, cache)

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
