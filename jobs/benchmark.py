"""The benchmark job: throughput per actor count, and where each batch's time goes.

It drives the evaluate job's own Ray pipeline (``cluster/pipeline.py``: decode tasks feed model
actors, sized by ``pipeline_config_for``), with two instrumented stand-ins plugged in through
``PipelineConfig.decode_fn`` / ``actor_body``: a decode task and a model actor that do exactly
what ``decode_item`` and ``ModelRunner.score`` do, step by step, on a lap timer.
The stages, the lap timer and the decode stand-in are in ``jobs.benchmark_decode`` (free of
torch, as the real decode task is), the report's table and chart in ``jobs.benchmark_report``.

Timing model. A *batch* is one actor call together with the decode tasks of its videos. Each
piece of work is wall-clocked end to end in the process that runs it (every decode task, the
actor call), and inside it a lap timer books each moment to the step that was running, with no
gaps between consecutive steps, so per batch::

    wall = sum(decode task walls) + actor call wall = read + decode + preprocess + h2d + forward + write + other

where ``other`` is the bookkeeping the lap timer deliberately passes over (unpacking arguments,
summing the decode tasks' timings) and stays small.
Time a batch spends *between* processes (queued, in the object store) is not work and is not in
``wall``; it shows as actors that are not busy (``actor_busy``), which is the number to look at
when throughput does not scale.

Stages: ``read`` reads the video's bytes (local or s3://; listing is timed once, ``list_s``),
``decode`` is decord decoding the sampled frames, ``preprocess`` is resize + crops (decode task)
plus batching, normalisation and memory layout (actor), ``h2d`` copies the uint8 batch to the
accelerator, ``forward`` is the network including the copy of the logits back, ``write`` fuses
views, builds the result rows and writes them as Parquet to ``<output>/scratch/`` through
``jobs.storage``. On CUDA each step ends with a synchronise, so the split is real.

Throughput is measured after a warm-up (``--warmup`` seconds and at least one finished batch
per actor) over ``repeats`` consecutive windows of ``duration`` seconds each: median and min/max
over the windows. A window counts the videos and clips the actors scored in it, each batch spread
over the time its call ran (a batch half inside a window counts half), so the rate is the
pipeline's steady-state rate even when a window is not much longer than a batch; a window that
holds fewer than two batches per actor is flagged in ``note``. Synthetic mode sends no pixels
through the pipeline: each actor scores one cached random uint8 batch, so the numbers are the
model's alone (plus the pipeline's dispatch). Without ``--checkpoint`` the weights are random:
speed does not depend on them, and the output says so.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import os
import platform
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

import x3d
from jobs import results, storage
from jobs.datasets import DatasetSpec, VideoItem
from jobs.evaluate import JobError
from jobs.inference import ModelRunner
from jobs.benchmark_decode import STAGE_MEANING, STAGES, Laps, make_decode, maxrss_mb
from jobs.benchmark_report import benchmark_heading, benchmark_markdown, benchmark_table, draw_chart
from jobs.work import ModelSpec
from x3d.predict import autocast_for, check_precision, to_device

__all__ = ["BenchmarkConfig", "STAGES", "run_benchmark", "benchmark_table", "draw_chart", "object_store_use", "parse_actor_counts"]

TOP_K = 5


@dataclass
class BenchmarkConfig:
    model: str = "x3d_s"
    views: int = 30
    protocol: str | None = None
    precision: str = "fp32"  # forward pass: "fp32" (the reference) or "bf16" autocast
    checkpoint: str | None = None  # None: random weights (speed only)
    dataset: DatasetSpec | None = None  # None: synthetic in-memory clips
    limit: int | None = None  # distinct videos to cycle through
    num_actors: Sequence[int] | None = None  # None: 1, 2, 4, ... up to the GPUs (1 on CPU)
    duration_s: float = 20.0
    warmup_s: float = 5.0
    repeats: int = 3
    batch_size: int | None = None
    output: str | None = None
    address: str | None = None
    local_cpus: int | None = None
    decode_timeout_s: float = 300.0
    quiet: bool = False


def parse_actor_counts(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique); raises ValueError on anything else."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--num-actors: expected counts like 1,2,4, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise ValueError(f"--num-actors: expected counts of at least 1 like 1,2,4, got {text!r}")
    return counts


# --------------------------------------------------------------------------- the model actor


class _Recorder:
    """Ray actor: collects the model actors' batch records for the driver.

    An actor hands over each batch's record before its call returns (after the batch's clock
    has stopped), so once the pipeline is done every record is here; the pipeline's actors are
    gone by then, which is why they do not keep the records themselves.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def take(self) -> list[dict[str, Any]]:
        out, self.records = self.records, []
        return out


class _BenchActor:
    """Drop-in for the pipeline's model actor: ``ModelRunner.score`` on a lap timer."""

    def __init__(self, spec: ModelSpec, state_dict: Any, threads: int, batch_size: int | None):
        import ray

        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.runner = ModelRunner(spec, state_dict, device=device, threads=threads, batch_size=batch_size)
        self.cuda = self.runner.device.type == "cuda"
        self.synthetic: dict[tuple, np.ndarray] = {}
        self.recorder: Any = None
        self.handover_s: float | None = None  # the previous record's hand-over, itself reported

    def describe(self) -> dict[str, Any]:
        import ray

        info = self.runner.describe()
        info["node"] = ray.get_runtime_context().get_node_id()
        return info

    def pid(self) -> int:
        return os.getpid()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.runner.device)

    @torch.inference_mode()
    def score(self, *payloads: dict[str, Any]) -> tuple[list[np.ndarray], list[float], str]:
        import ray

        ctx = payloads[0]["ctx"]
        if self.recorder is None:
            self.recorder = ray.get_actor(ctx["recorder"])
        started_at, start = time.time(), time.perf_counter()
        runner = self.runner
        stages = dict.fromkeys(STAGES, 0.0)
        laps = Laps(stages)
        for p in payloads:  # what the decode tasks measured for these videos
            for name, seconds in p["stages"].items():
                stages[name] += seconds
        decode_wall = sum(p["wall"] for p in payloads)
        arrays = [p["views"] if "views" in p else self._synthetic_views(tuple(p["synthetic"]), laps) for p in payloads]
        laps.skip()
        data = torch.as_tensor(np.concatenate(arrays))
        laps.charge("preprocess")

        counts = [a.shape[0] for a in arrays]
        step = runner.batch_size or data.shape[0] or 1
        outputs = []
        for first in range(0, data.shape[0], step):  # x3d.predict_clips, a step at a time
            chunk = to_device(data[first : first + step], runner.device)
            self._sync()
            laps.charge("h2d")
            x = x3d.normalize(chunk, runner.protocol)
            if runner.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            self._sync()
            laps.charge("preprocess")
            with autocast_for(runner.device, runner.spec.precision):
                logits = runner.model(x)
            outputs.append(logits.float().cpu())
            laps.charge("forward")

        logits = torch.cat(outputs)
        probs, offset = [], 0
        for count in counts:
            probs.append(x3d.fuse_views(logits[offset : offset + count]).numpy().astype(np.float32))
            offset += count
        self._write([p["video"] for p in payloads], probs, ctx["sink"])
        laps.charge("write")

        model_wall = time.perf_counter() - start
        total = max(sum(counts), 1)
        record = {
            "t_start": started_at,
            "t_end": started_at + model_wall,
            "actor": runner.name,
            "videos": len(payloads),
            "clips": int(sum(counts)),
            "wall_s": decode_wall + model_wall,
            "decode_wall_s": decode_wall,
            "actor_wall_s": model_wall,
            "stages_s": stages,
            "actor_rss_mb": maxrss_mb(),
            "decode_rss_mb": max(p["rss_mb"] for p in payloads),
            "decode_workers": sorted({p["worker"] for p in payloads if "worker" in p}),
            "gpu_util": self._gpu_util(),
            "gpu_peak_mb": torch.cuda.max_memory_allocated(runner.device) / 2**20 if self.cuda else None,
            "handover_s": self.handover_s,
        }
        t = time.perf_counter()
        ray.get(self.recorder.add.remote(record))  # delivered before the pipeline sees the result
        self.handover_s = time.perf_counter() - t
        return probs, [stages["forward"] * 1e3 * c / total for c in counts], runner.name

    def _synthetic_views(self, shape: tuple, laps: Laps) -> np.ndarray:
        """One random uint8 batch per shape, made on first use (during warm-up), then reused;
        making it is this input's "read"."""
        if shape not in self.synthetic:
            laps.skip()
            self.synthetic[shape] = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
            laps.charge("read")
        return self.synthetic[shape]

    def _write(self, videos: list[str], probs: list[np.ndarray], sink: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        scores = np.stack(probs)
        k = min(TOP_K, scores.shape[1])
        top = np.argsort(scores, axis=1)[:, -k:][:, ::-1]
        table = pa.table(
            {
                "video": pa.array(videos, pa.string()),
                "pred": pa.array(top[:, 0].astype(np.int32)),
                "topk_classes": pa.array(top.astype(np.int32).tolist(), pa.list_(pa.int32())),
                "topk_scores": pa.array(np.take_along_axis(scores, top, 1).tolist(), pa.list_(pa.float32())),
                "probs": pa.array(scores.tolist(), pa.list_(pa.float32())),
            }
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes(storage.join(sink, f"actor-{os.getpid()}.parquet"), buffer.getvalue())

    def _gpu_util(self) -> float | None:
        if not self.cuda:
            return None
        try:
            return float(torch.cuda.utilization(self.runner.device))
        except Exception:  # no NVML in this image: utilisation unknown, not an error
            return None


# --------------------------------------------------------------------------- the driver side


class _VideoStream:
    """Items for the pipeline, pulled lazily from the dataset and cycled when it runs out."""

    def __init__(self, dataset: DatasetSpec | None, limit: int | None):
        self.dataset = dataset
        self.limit = limit
        self.seen: list[VideoItem] = []
        self.source: Iterator[VideoItem] | None = None
        self.list_s = 0.0
        self.count = 0
        if dataset is not None:
            from jobs.datasets import iter_items

            self.source = iter_items(dataset)

    def next(self) -> VideoItem:
        self.count += 1
        if self.dataset is None:
            return VideoItem(key=f"synthetic/{self.count:07d}", uri="synthetic", label=None)
        if self.source is not None and (self.limit is None or len(self.seen) < self.limit):
            t = time.perf_counter()
            item = next(self.source, None)
            self.list_s += time.perf_counter() - t
            if item is not None:
                self.seen.append(item)
                return item
            self.source = None
        if not self.seen:
            raise JobError(f"dataset {self.dataset.name!r} lists no videos")
        return self.seen[(self.count - 1) % len(self.seen)]


class _Trial:
    """One actor count: decides when warm-up ends and windows close, counts what arrives."""

    def __init__(self, cfg: BenchmarkConfig, stream: _VideoStream, num_actors: int, log: Callable[[str], None]):
        self.cfg = cfg
        self.stream = stream
        self.num_actors = num_actors
        self.log = log
        self.actors: list[dict[str, Any]] = []
        self.workers: set[str] = set()
        self.started = 0.0
        self.warm_end: float | None = None
        self.end: float | None = None
        self.give_up: float = math.inf
        self.done = 0
        self.failed = 0
        self.errors: list[str] = []
        self.store_peak: float | None = None
        self.store_capacity: float | None = None
        self._store_ok = True
        self._store_at = 0.0

    def on_start(self, actors: list[dict[str, Any]]) -> None:
        self.actors = actors
        self.started = time.time()
        # Warm-up must end; if no actor finishes a batch in this long, something is broken.
        self.give_up = self.started + self.cfg.warmup_s + max(120.0, self.cfg.repeats * self.cfg.duration_s)
        self.log(f"benchmark: {self.num_actors} actor(s) up, warming up")
        self._sample_store(force=True)

    def on_video(self, outcome: Any) -> None:
        now = time.time()
        self.done += 1
        if outcome.error is not None:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(outcome.error)
        else:
            self.workers.add(outcome.worker)
        if self.warm_end is None and now - self.started >= self.cfg.warmup_s and len(self.workers) >= self.num_actors:
            self.warm_end = now
            self.end = now + self.cfg.repeats * self.cfg.duration_s
            self.log(f"benchmark: {self.num_actors} actor(s) warm, timing {self.cfg.repeats} x {self.cfg.duration_s:g} s")
        self._sample_store()

    def shards(self) -> Iterator[Any]:
        from cluster.pipeline import Shard

        for index in itertools.count():
            now = time.time()
            if self.end is not None and now >= self.end:
                return
            if self.warm_end is None and now >= self.give_up:
                return
            if self.warm_end is None and self.done >= 20 and self.failed == self.done:
                return  # nothing decodes: stop rather than cycle through errors
            yield Shard(index, [self.stream.next()])

    def _sample_store(self, force: bool = False) -> None:
        """Object-store bytes in use across the cluster, at most twice a second."""
        now = time.monotonic()
        if not self._store_ok or (not force and now - self._store_at < 0.5):
            return
        self._store_at = now
        used, capacity = object_store_use()
        if used is None:
            self._store_ok = False
            return
        self.store_peak = max(self.store_peak or 0.0, used)
        self.store_capacity = capacity

    def windows(self, records: list[dict[str, Any]]) -> list[dict[str, float]]:
        """Rates per timed window, each batch counted over the time its actor call ran: a batch
        half inside a window counts half, so a window shorter than a batch still has a rate."""
        d = self.cfg.duration_s
        out = []
        for k in range(self.cfg.repeats):
            lo, hi = self.warm_end + k * d, self.warm_end + (k + 1) * d
            shares = [(_inside(r, lo, hi), r) for r in records]
            out.append(
                {
                    "videos_per_s": sum(f * r["videos"] for f, r in shares) / d,
                    "clips_per_s": sum(f * r["clips"] for f, r in shares) / d,
                }
            )
        return out


def _inside(record: dict[str, Any], lo: float, hi: float) -> float:
    """The fraction of a batch's actor call that ran between ``lo`` and ``hi`` (epoch seconds)."""
    start, end = record["t_start"], record["t_end"]
    if end <= start:
        return 1.0 if lo < end <= hi else 0.0
    return max(0.0, min(end, hi) - max(start, lo)) / (end - start)


def object_store_use() -> tuple[float | None, float | None]:
    """(bytes used, bytes available) in the object store, summed over nodes; (None, None) when
    this Ray does not expose it (the raylets' store stats are not public API)."""
    try:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
        stats = reply.store_stats
        used = float(stats.object_store_bytes_used)
        return used, used + float(stats.object_store_bytes_avail)
    except Exception:
        return None, None


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None, "windows": []}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "windows": [round(v, 4) for v in values],
    }


def _summarise_trial(trial: _Trial, records: list[dict[str, Any]], pipe_cfg: Any) -> dict[str, Any]:
    n = trial.num_actors
    windows = trial.windows(records) if trial.warm_end is not None else []
    videos = _spread([w["videos_per_s"] for w in windows])
    clips = _spread([w["clips_per_s"] for w in windows])
    span = (trial.end - trial.warm_end) if trial.warm_end is not None else 0.0
    timed = [r for r in records if span and _inside(r, trial.warm_end, trial.end) > 0]

    batches = []
    totals = dict.fromkeys((*STAGES, "other"), 0.0)
    for r in timed:
        other = max(0.0, r["wall_s"] - sum(r["stages_s"].values()))
        for name in STAGES:
            totals[name] += r["stages_s"][name]
        totals["other"] += other
        batches.append(
            {
                "actor": r["actor"],
                "videos": r["videos"],
                "clips": r["clips"],
                "wall_ms": round(r["wall_s"] * 1e3, 3),
                "decode_wall_ms": round(r["decode_wall_s"] * 1e3, 3),
                "stages_ms": {name: round(r["stages_s"][name] * 1e3, 3) for name in STAGES},
                "other_ms": round(other * 1e3, 3),
            }
        )
    work = sum(totals.values())
    timed_videos = sum(r["videos"] for r in timed)
    stages = {
        name: {
            "seconds": round(totals[name], 4),
            "share": round(totals[name] / work, 4) if work > 0 else None,
            "ms_per_video": round(1e3 * totals[name] / timed_videos, 3) if timed_videos else None,
        }
        for name in totals
    }
    per_actor: dict[str, dict[str, float]] = {}
    for r in timed:
        a = per_actor.setdefault(r["actor"], {"videos": 0.0, "clips": 0.0, "busy_s": 0.0})
        share = _inside(r, trial.warm_end, trial.end)
        a["videos"] += share * r["videos"]
        a["clips"] += share * r["clips"]
        a["busy_s"] += share * r["actor_wall_s"]
    actors = [
        {
            "worker": name,
            "videos_per_s": round(a["videos"] / span, 4) if span else None,
            "clips_per_s": round(a["clips"] / span, 4) if span else None,
            "busy": round(a["busy_s"] / span, 4) if span else None,
        }
        for name, a in sorted(per_actor.items())
    ]
    utils = [r["gpu_util"] for r in timed if r["gpu_util"] is not None]
    handovers = [r["handover_s"] for r in timed if r["handover_s"] is not None]
    gpu_peaks = [r["gpu_peak_mb"] for r in records if r["gpu_peak_mb"] is not None]
    return {
        "num_actors": n,
        "actor_cpus": pipe_cfg.actor_cpus,
        "actor_gpus": pipe_cfg.actor_gpus,
        "decode_slots": pipe_cfg.decode_slots,
        "batch_views": pipe_cfg.batch_views,
        "accelerators": sorted({a.get("accelerator", "cpu") for a in trial.actors}),
        "videos_per_s": videos,
        "clips_per_s": clips,
        "per_actor": {
            "videos_per_s": round(videos["median"] / n, 4) if videos["median"] is not None else None,
            "clips_per_s": round(clips["median"] / n, 4) if clips["median"] is not None else None,
            "actors": actors,
        },
        "actor_busy": round(sum(a["busy"] or 0.0 for a in actors) / n, 4) if actors else None,
        # per batch, after its clock stops: the record's hand-over to the driver (benchmark cost)
        "handover_ms": round(1e3 * statistics.median(handovers), 3) if handovers else None,
        "accelerator_util": round(statistics.mean(utils), 1) if utils else None,
        "stages": stages,
        "memory": {
            "actor_peak_rss_mb": round(max((r["actor_rss_mb"] for r in records), default=0.0), 1) or None,
            "decode_peak_rss_mb": round(max((r["decode_rss_mb"] for r in records), default=0.0), 1) or None,
            # decode worker processes this trial used (all its batches, warm-up included): far more
            # than decode slots x (videos / max_decode_calls) means workers are being restarted
            "decode_processes": len({w for r in records for w in r.get("decode_workers", ())}) or None,
            "gpu_peak_mb": round(max(gpu_peaks), 1) if gpu_peaks else None,
            "object_store_peak_mb": round(trial.store_peak / 2**20, 1) if trial.store_peak is not None else None,
            "object_store_capacity_mb": round(trial.store_capacity / 2**20, 1) if trial.store_capacity else None,
        },
        "videos_done": trial.done,
        "videos_failed": trial.failed,
        "errors": trial.errors,
        "timed_s": round(span, 3),
        "note": (
            "fewer than 2 batches per actor and window: the rates rest on parts of batches; "
            "a longer --duration steadies them"
            if len(timed) < 2 * n * trial.cfg.repeats
            else None
        ),
        "warmup_s": round(trial.warm_end - trial.started, 3) if trial.warm_end is not None else None,
        "timed_batches": len(batches),
        "batches": batches,
    }


# --------------------------------------------------------------------------- machine and model


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def machine_description(actors: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    import ray

    versions = {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__, "numpy": np.__version__}
    try:
        import decord

        versions["decord"] = decord.__version__
    except ImportError:  # pragma: no cover
        versions["decord"] = None
    driver_gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    desc: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": affinity,
        "memory_gb": _memory_gb(),
        "gpus": driver_gpus,
        "actor_accelerators": sorted({a.get("accelerator", "cpu") for a in actors}),
        "versions": versions,
    }
    try:
        desc["load_average"] = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        desc["load_average"] = None
    if ray.is_initialized():
        total = ray.cluster_resources()
        desc["ray_cluster"] = {
            "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
            "cpus": total.get("CPU", 0.0),
            "gpus": total.get("GPU", 0.0),
            "object_store_gb": round(total.get("object_store_memory", 0.0) / 2**30, 2),
        }
    return desc


def _model_weights(cfg: BenchmarkConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    preset = x3d.get_preset(cfg.model)
    if cfg.checkpoint is None:
        torch.manual_seed(0)
        model = x3d.build_model(preset)
        return model.state_dict(), {"checkpoint": None, "weights": "random init (no --checkpoint: speed does not depend on the weights)"}
    model = x3d.build_model(preset)
    try:
        info = x3d.checkpoints.load_checkpoint_into(model, cfg.checkpoint, model_name=cfg.model)
    except x3d.CheckpointError as exc:
        raise JobError(str(exc)) from None
    return model.state_dict(), {"checkpoint": cfg.checkpoint, "checkpoint_sha256": info.sha256, "weights": "checkpoint"}


def _default_counts(gpus: int) -> list[int]:
    if gpus < 1:
        return [1]
    counts = [1 << i for i in range(gpus.bit_length()) if 1 << i <= gpus]
    return counts if counts[-1] == gpus else counts + [gpus]


def _default_output(cfg: BenchmarkConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"runs/benchmark-{cfg.model}-{cfg.views}v-{stamp}"


# --------------------------------------------------------------------------- the job


def _check(cfg: BenchmarkConfig) -> tuple[x3d.Preset, str]:
    try:
        preset = x3d.get_preset(cfg.model)
        protocol = preset.protocol(cfg.protocol)
        protocol.view_plan(cfg.views)
        check_precision(cfg.precision)
    except ValueError as exc:
        raise JobError(str(exc)) from None
    if cfg.duration_s <= 0 or cfg.warmup_s < 0 or cfg.repeats < 1:
        raise JobError("--duration must be positive, --warmup at least 0 and --repeats at least 1")
    if cfg.dataset is not None:
        from jobs.datasets import check_dataset, generate_dataset

        generate_dataset(cfg.dataset, verbose=not cfg.quiet)
        check_dataset(cfg.dataset)
    return preset, protocol.name


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Run every actor count, write benchmark.json/.md/.png, return what benchmark.json holds."""
    import ray

    from cluster.pipeline import run_pipeline
    from cluster.runtime import cluster_shape, pipeline_config_for, start_cluster, stop_cluster

    log = (lambda message: None) if cfg.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    preset, protocol = _check(cfg)
    state_dict, weights = _model_weights(cfg)
    spec = ModelSpec(preset, cfg.views, protocol, precision=cfg.precision)
    plan = spec.test_protocol().view_plan(cfg.views)
    proto = spec.test_protocol()
    output = cfg.output or _default_output(cfg)
    # Actors write here (the write stage); absolute, so it does not depend on their working dir.
    sink = storage.join(output if storage.is_remote(output) else os.path.abspath(storage.local_path(output)), "scratch")
    synthetic = cfg.dataset is None
    stream = _VideoStream(cfg.dataset, cfg.limit)

    started = start_cluster(cfg.address, cfg.local_cpus)
    trials: list[dict[str, Any]] = []
    all_actors: list[dict[str, Any]] = []
    try:
        shape = cluster_shape()
        counts = list(cfg.num_actors) if cfg.num_actors else _default_counts(int(shape.gpus))
        configs = {}
        for n in counts:  # every count is checked before the first one runs
            pipe_cfg = pipeline_config_for(spec, num_actors=n, batch_size=cfg.batch_size, decode_timeout_s=cfg.decode_timeout_s)
            if synthetic:  # the stand-in decode task does no work: let it run beside the actors
                pipe_cfg = dataclasses.replace(pipe_cfg, decode_cpus=0.0, decode_slots=max(2, pipe_cfg.decode_slots))
            configs[n] = pipe_cfg
        log(
            f"benchmark: {cfg.model}, {cfg.views} views, {'synthetic clips' if synthetic else 'dataset ' + cfg.dataset.name}, "
            f"actors {','.join(map(str, counts))}: {cfg.warmup_s:g} s warm-up + {cfg.repeats} x {cfg.duration_s:g} s each -> {output}"
        )
        state_ref = ray.put(state_dict)
        for n in counts:
            recorder_name = f"x3d-benchmark-{uuid.uuid4().hex[:12]}"
            recorder = ray.remote(_Recorder).options(name=recorder_name, num_cpus=0).remote()
            ctx = {"recorder": recorder_name, "sink": sink}
            pipe_cfg = dataclasses.replace(configs[n], decode_fn=make_decode(ctx, synthetic), actor_body=_BenchActor)
            trial = _Trial(cfg, stream, n, log)
            run_pipeline(trial.shards(), pipe_cfg, state_ref, on_video=trial.on_video, on_start=trial.on_start)
            records = ray.get(recorder.take.remote())
            ray.kill(recorder)
            all_actors.extend(trial.actors)
            result = _summarise_trial(trial, records, pipe_cfg)
            if trial.warm_end is None:
                why = f": {trial.errors[0]}" if trial.errors else ""
                raise JobError(f"{n} actor(s) never finished warming up ({trial.done} videos, {trial.failed} failed{why})")
            trials.append(result)
            v = result["videos_per_s"]
            log(f"benchmark: {n} actor(s): {v['median']:.3g} videos/s (min {v['min']:.3g}, max {v['max']:.3g})")
            if result["note"]:
                log(f"benchmark: note: {result['note']}")
        machine = machine_description(all_actors)
    finally:
        stop_cluster(started)
    if not storage.is_remote(sink):
        shutil.rmtree(storage.local_path(sink), ignore_errors=True)

    report = {
        "job": "benchmark",
        "model": cfg.model,
        "views": cfg.views,
        "protocol": protocol,
        "precision": cfg.precision,
        "clip_shape": [proto.clip_len, plan.crop_size, plan.crop_size, 3],
        **weights,
        "input": "synthetic" if synthetic else cfg.dataset.name,
        "input_source": None if synthetic else (cfg.dataset.ann_file or cfg.dataset.data_root),
        "input_note": (
            "synthetic in-memory uint8 clips: no reading or decoding, the model alone"
            if synthetic
            else f"videos of dataset {cfg.dataset.name!r}, cycled if the benchmark outlasts them"
        ),
        "distinct_videos": None if synthetic else len(stream.seen),
        "list_s": None if synthetic else round(stream.list_s, 4),
        "batch_size": cfg.batch_size,
        "warmup_s": cfg.warmup_s,
        "duration_s": cfg.duration_s,
        "repeats": cfg.repeats,
        "stage_meaning": STAGE_MEANING,
        "machine": machine,
        "trials": trials,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "output": output,
    }
    results.write_json(storage.join(output, "benchmark.json"), report)
    table = benchmark_table(report)
    results.write_text(storage.join(output, "benchmark.md"), benchmark_markdown(report, table))
    storage.write_bytes(storage.join(output, "benchmark.png"), draw_chart(report))
    if not cfg.quiet:
        print(benchmark_heading(report))
        print(table)
        print(f"benchmark.json, benchmark.md, benchmark.png in {output}")
    return report
