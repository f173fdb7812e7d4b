"""One model job's life, written once: check, load weights, join the cluster, size, run, stop.

Evaluate and label differ in what they read and what they write; everything between is here.
The order matters for the user: every check that needs no cluster runs first (a mistake costs
one line and no cluster time), then the cluster is joined and the pipeline sized (a cluster too
small is refused before anything is written), and only then does the job write its first byte.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import ray
import torch

import x3d
from cluster.config import PipelineConfig, Shard, VideoOutcome
from cluster.pipeline import run_pipeline
from cluster.runtime import pipeline_config_for, start_cluster, stop_cluster
from jobs.errors import JobError
from jobs.interrupts import deferred, interrupt_behind, pause_point, reinstall
from jobs.options import ClusterOptions, ModelOptions, RunOptions
from worker.spec import ModelSpec
from x3d.predict import check_precision

__all__ = ["LoadedWeights", "check_model", "load_weights", "run_model_job"]


def check_model(opts: ModelOptions) -> ModelSpec:
    """Preset, protocol, view count and precision, checked together; a bad one is a JobError.
    So is a decode deadline of 0 s or less (``decode_timeout_s``): it would fail every video."""
    timeout = getattr(opts, "decode_timeout_s", None)
    if timeout is not None and not timeout > 0:
        raise JobError(f"--decode-timeout must be more than 0 seconds, got {timeout}")
    try:
        preset = x3d.get_preset(opts.model)
        spec = ModelSpec(preset, opts.views, preset.protocol(opts.protocol).name, precision=opts.precision,
                         frames="true" if opts.true_frames else "mmaction2")
        spec.view_plan  # noqa: B018 - raises for a view count the protocol does not have
        check_precision(opts.precision)
    except ValueError as exc:
        raise JobError(str(exc)) from None
    return spec


@dataclass(frozen=True)
class LoadedWeights:
    """The weights every actor receives, and what the outputs record about them."""

    state_dict: dict[str, torch.Tensor]
    source: str | None  # what the user asked for (or the preset's URL); None: random init
    sha256: str | None


def load_weights(opts: ModelOptions, random_ok: bool = False) -> LoadedWeights:
    """``x3d.load_model`` with the job's error type; ``random_ok`` (the benchmark) allows no
    checkpoint at all, which gives seeded random weights: speed does not depend on them."""
    preset = x3d.get_preset(opts.model)
    if opts.checkpoint is None and random_ok:
        torch.manual_seed(0)
        return LoadedWeights(x3d.build_model(preset).state_dict(), None, None)
    if opts.checkpoint is None and preset.default_weights is None:
        raise JobError(f"{preset.name} has no published weights; pass --checkpoint")
    try:
        model = x3d.load_model(preset, opts.checkpoint)
    except x3d.CheckpointError as exc:
        raise JobError(f"{exc}; check --checkpoint and --model") from None
    source = opts.checkpoint or preset.default_weights.url
    return LoadedWeights(model.state_dict(), source, model.checkpoint_sha256)


def size_for(opts: ClusterOptions, spec: ModelSpec, num_actors: int | None) -> PipelineConfig:
    """The pipeline sized to the connected cluster, with the job's batch size and deadline; a
    partition (evaluate's ``--partition i/n``) sizes to its share of the GPUs."""
    part = getattr(opts, "partition", None)
    config = pipeline_config_for(spec, num_actors=num_actors, batch_size=opts.batch_size, decode_timeout_s=opts.decode_timeout_s,
                                 actors_per_gpu=opts.actors_per_gpu, share=(part.index, part.count) if part else (0, 1),
                                 gpus=getattr(opts, "gpus", "auto"), gpu_wait_s=getattr(opts, "gpu_wait_s", 0.0))
    config = dataclasses.replace(config, storage_outage_s=getattr(opts, "storage_outage_s", config.storage_outage_s))
    options = runner_options(opts)
    return dataclasses.replace(config, runner_options=options) if options else config


def pool_line(config: PipelineConfig) -> str:
    """What the run asked the cluster for, for its log: where its actors score, and whether the
    pool follows the cluster."""
    where = "on GPUs" if config.actor_gpus else "on CPUs (no GPU on the cluster, or --gpus 0)"
    grows = ", one more per GPU that joins" if config.actors_grow else ""
    return f"{config.num_actors} model actor(s) {where}{grows}, {config.decode_slots} decode slot(s) to start"


def runner_options(opts: Any) -> dict[str, Any]:
    """ModelRunner's keyword arguments from the model flags; empty for the defaults."""
    options: dict[str, Any] = {}
    layout = getattr(opts, "memory_format", "auto")
    if layout != "auto":
        options["channels_last"] = layout == "channels_last_3d"
    if getattr(opts, "compile", False):
        options["compile"] = True
    if getattr(opts, "save_features", False):  # the actors keep each video's embedding from the same forward
        options["feature_kind"] = opts.feature_kind
    return options


def _tell_waiting(line: str) -> None:
    """The pipeline waits on the cluster (``cluster.scheduler.Scheduler.stall_notice``): said
    even with ``--quiet``, as a run that looks hung is the one a user must not guess about."""
    print(f"waiting: {line}", file=sys.stderr, flush=True)


def run_model_job(
    opts: RunOptions,
    spec: ModelSpec,
    weights: LoadedWeights,
    shards: Iterable[Shard],
    on_shard: Callable[[int, list[VideoOutcome]], None],
    on_video: Callable[[VideoOutcome], None] = lambda outcome: None,
    on_sized: Callable[[PipelineConfig], None] = lambda config: None,
    run_name: str = "",
) -> list[dict[str, Any]]:
    """Join (or start) the cluster, size the pipeline, then ``on_sized`` (the job's first write),
    then score every shard; Ray is stopped again if this call started it. Returns the actors'
    descriptions. ``run_name`` tags the run's Ray metrics (docs/metrics.md)."""
    started = start_cluster(opts.address, opts.local_cpus)
    try:
        pause_point("startup")  # test hook (jobs.interrupts): a stop once the cluster is up, nothing written
        config = dataclasses.replace(size_for(opts, spec, opts.num_actors), run_name=run_name)
        on_sized(config)
        state_ref = ray.put(weights.state_dict)  # held for the run: replacement actors re-read it
        try:
            workers = run_pipeline(shards, config, state_ref, on_video=on_video, on_shard=on_shard, on_notice=_tell_waiting)
        except SystemError as exc:  # a signal's JobInterrupted, wrapped by Ray's native ray.wait
            stop = interrupt_behind(exc)
            if stop is None:
                raise
            raise stop from None
        return workers
    finally:
        ended = sys.exc_info()[0] is None
        with deferred():  # a stop while Ray shuts down waits for it (then JobInterrupted, 130 / 143)
            stop_cluster(started)
            if ended:
                pause_point("stopping")  # test hook: every shard is saved, Ray is shut down, the block not left
        # Ray's core worker leaves SIGTERM at its default when it shuts down: a SIGTERM between
        # the last video and the summary then killed the driver silently (exit 143, no line).
        reinstall()
