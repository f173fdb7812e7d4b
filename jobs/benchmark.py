"""The benchmark job: throughput per actor count, and where each batch's time goes.

It drives the jobs' own Ray pipeline (``cluster/pipeline.py``: decode tasks feed model actors,
sized by ``pipeline_config_for``) with ``PipelineConfig.timed`` on: the production decode task
(``worker.decode_task.decode_item``) and model actor (``worker.model_runner.ModelRunner``) then
book each step to a ``worker.stages.StageTimer`` instead of the no-op one the jobs run with, so
what is measured is the jobs' code, not a copy. Each batch's rows are written by the driver
with the evaluate job's own writer (``jobs.results.write_shard``) into ``<output>/scratch/``.
The inputs are in ``jobs.benchmark_inputs``, one trial's windows and statistics in
``jobs.benchmark_trial``, the report's table and chart in ``jobs.benchmark_report``.

Timing model. A *batch* is one actor call together with the decode tasks of its videos. Each
piece of work is wall-clocked end to end in the process that runs it (every decode task, the
actor call), and inside it a lap timer books each moment to the step that was running, with no
gaps between consecutive steps, so per batch::

    wall = sum(decode task walls) + actor call wall = read + decode + preprocess + h2d + forward + write + other

plus the driver's write of the batch's rows (``write``), where ``other`` is the bookkeeping the
lap timer deliberately passes over and stays small.
Time a batch spends *between* processes (queued, in the object store) is not work and is not in
``wall``; it shows as actors that are not busy (``actor_busy``), which is the number to look at
when throughput does not scale.

Stages: ``read`` reads the video's bytes (local or s3://; listing is timed once, ``list_s``),
``decode`` is decord decoding the sampled frames, ``preprocess`` is resize + crops (decode task)
plus batching, normalisation and memory layout (actor), ``h2d`` copies the uint8 batch to the
accelerator, ``forward`` is the network including the copy of the logits back, ``write`` fuses
views, builds the result rows and writes them as Parquet to ``<output>/scratch/`` through
``x3d.storage``. On CUDA each step ends with a synchronise, so the split is real.

Throughput is measured after a warm-up (``--warmup`` seconds and at least one finished batch
per actor) over ``repeats`` consecutive windows of ``duration`` seconds each: median and min/max
over the windows. A window counts the videos and clips the actors scored in it, each batch spread
over the time its call ran (a batch half inside a window counts half), so the rate is the
pipeline's steady-state rate even when a window is not much longer than a batch; a window that
holds fewer than two batches per actor is flagged in ``note``. Synthetic mode replaces only the
decode task (``jobs.benchmark_inputs.synthetic_decode``: random uint8 frames of the real shape,
made once per worker), so the numbers are the model's and the pipeline's (object store,
dispatch), with no reading or decoding. Without ``--checkpoint`` the weights are random:
speed does not depend on them, and the output says so.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import ray

from cluster.config import VideoOutcome
from jobs.cli import default
from cluster.pipeline import run_pipeline
from cluster.runtime import cluster_shape, start_cluster, stop_cluster
from jobs import results
from jobs.benchmark_inputs import VideoStream, synthetic_decode
from jobs.benchmark_report import benchmark_heading, benchmark_markdown, benchmark_table, draw_chart
from jobs.benchmark_trial import Trial, summarise_trial
from jobs.datasets import DatasetSpec, check_dataset, generate_dataset
from jobs.cli import parse_actor_counts  # noqa: F401 - part of this module's interface
from jobs.errors import JobError
from jobs.evaluate import outcome_row
from jobs.lifecycle import check_model, load_weights, size_for
from jobs.machine import machine_description
from jobs.options import ClusterOptions, ModelOptions
from worker.stages import STAGE_MEANING, STAGES
from x3d import storage

__all__ = ["BenchmarkConfig", "STAGES", "run_benchmark", "benchmark_table", "draw_chart", "parse_actor_counts"]


@dataclass(kw_only=True)
class BenchmarkConfig(ModelOptions, ClusterOptions):
    # checkpoint None: random weights (speed does not depend on them)
    dataset: DatasetSpec | None = None  # None: synthetic in-memory clips
    limit: int | None = None  # distinct videos to cycle through
    num_actors: Sequence[int] | None = None  # None: 1, 2, 4, ... up to the GPUs x actors_per_gpu (1 on CPU)
    duration_s: float = default("duration_s", "benchmark")
    warmup_s: float = default("warmup_s", "benchmark")
    repeats: int = default("repeats", "benchmark")
    output: str | None = None


def _default_counts(gpus: int) -> list[int]:
    if gpus < 1:
        return [1]
    counts = [1 << i for i in range(gpus.bit_length()) if 1 << i <= gpus]
    return counts if counts[-1] == gpus else counts + [gpus]


def _default_output(cfg: BenchmarkConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"runs/benchmark-{cfg.model}-{cfg.views}v-{stamp}"


def _check(cfg: BenchmarkConfig):
    spec = check_model(cfg)
    if cfg.duration_s <= 0 or cfg.warmup_s < 0 or cfg.repeats < 1:
        raise JobError("--duration must be positive, --warmup at least 0 and --repeats at least 1")
    if cfg.dataset is not None:
        generate_dataset(cfg.dataset, verbose=not cfg.quiet)
        check_dataset(cfg.dataset)
    return spec


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Run every actor count, write benchmark.json/.md/.png, return what benchmark.json holds."""
    log = (lambda message: None) if cfg.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    spec = _check(cfg)
    weights = load_weights(cfg, random_ok=True)
    proto = spec.test_protocol()
    plan = spec.view_plan
    classes = spec.preset.classes
    output = cfg.output or _default_output(cfg)
    sink = storage.join(output if storage.is_remote(output) else os.path.abspath(storage.local_path(output)), "scratch")
    synthetic = cfg.dataset is None
    stream = VideoStream(cfg.dataset, cfg.limit)

    started = start_cluster(cfg.address, cfg.local_cpus)
    trials: list[dict[str, Any]] = []
    all_actors: list[dict[str, Any]] = []
    try:
        counts = list(cfg.num_actors) if cfg.num_actors else _default_counts(int(cluster_shape().gpus) * cfg.actors_per_gpu)
        configs = {}
        for n in counts:  # every count is checked before the first one runs
            pipe_cfg = dataclasses.replace(size_for(cfg, spec, n), timed=True)
            if synthetic:  # the stand-in decode task does no work: let it run beside the actors
                pipe_cfg = dataclasses.replace(pipe_cfg, decode_cpus=0.0, decode_slots=max(2, pipe_cfg.decode_slots), decode_fn=synthetic_decode)
            configs[n] = pipe_cfg
        log(
            f"benchmark: {cfg.model}, {cfg.views} views, {'synthetic clips' if synthetic else 'dataset ' + cfg.dataset.name}, "
            f"actors {','.join(map(str, counts))}: {cfg.warmup_s:g} s warm-up + {cfg.repeats} x {cfg.duration_s:g} s each -> {output}"
        )
        state_ref = ray.put(weights.state_dict)
        batch_index = 0
        for n in counts:
            trial = Trial(cfg, stream, n, log)

            def on_batch(record: dict[str, Any], outcomes: list[VideoOutcome], trial: Trial = trial) -> None:
                nonlocal batch_index
                start = time.perf_counter()  # the write stage: the jobs' own rows and writer
                results.write_shard(sink, batch_index, [outcome_row(o, classes, save_probs=True) for o in outcomes])
                batch_index += 1
                trial.on_batch(record, outcomes, time.perf_counter() - start)

            cpu = time.process_time()  # the driver's CPU: the pipeline loop and Ray's threads in it
            run_pipeline(trial.shards(), configs[n], state_ref, on_video=trial.on_video, on_start=trial.on_start, on_batch=on_batch)
            trial.driver_cpu_s = time.process_time() - cpu
            all_actors.extend(trial.actors)
            result = summarise_trial(trial, trial.records, configs[n])
            if trial.warm_end is None:
                why = f": {trial.errors[0]}" if trial.errors else ""
                raise JobError(f"{n} actor(s) never finished warming up ({trial.done} videos, {trial.failed} failed{why})")
            trials.append(result)
            v = result["videos_per_s"]
            log(f"benchmark: {n} actor(s): {v['median']:.3g} videos/s (min {v['min']:.3g}, max {v['max']:.3g}); "
                f"driver CPU {result['driver_cpu_ms_per_video']} ms/video, object store {result['payload_mb_per_video']} MB/video, "
                f"{result['decode_workers_per_1000']} decode workers per 1000 videos; units of {configs[n].unit_videos} videos")
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
        "protocol": spec.protocol,
        "precision": cfg.precision,
        "clip_shape": [proto.clip_len, plan.crop_size, plan.crop_size, 3],
        "checkpoint": weights.source,
        **({"checkpoint_sha256": weights.sha256, "weights": "checkpoint"} if weights.source else
           {"weights": "random init (no --checkpoint: speed does not depend on the weights)"}),
        "input": "synthetic" if synthetic else cfg.dataset.name,
        "input_source": None if synthetic else (cfg.dataset.ann_file or cfg.dataset.data_root),
        "input_note": (
            "synthetic uint8 frames of a 340x256 video (as the decode task ships them): no reading or decoding; the pipeline, the actor's crops and the model"
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
    written = "benchmark.json, benchmark.md"
    try:
        storage.write_bytes(storage.join(output, "benchmark.png"), draw_chart(report))
        written += ", benchmark.png"
    except ImportError:  # Pillow draws the chart; a bare GPU image may lack it, the numbers do not need it
        print("benchmark: no Pillow here, so no benchmark.png (the numbers are in benchmark.json and .md)", file=sys.stderr)
    if not cfg.quiet:
        print(benchmark_heading(report))
        print(table)
        print(f"{written} in {output}")
    return report
