"""The evaluate job: score a labelled dataset with a checkpoint and report MMAction2's metrics.

Everything that can be wrong with the request (dataset files, checkpoint, flags) is checked
here before Ray starts, so a mistake costs one line and no cluster time. The work itself is
cut into fixed shards (position in the annotation file decides the shard), each written as
one Parquet file when its last video is done; ``--resume`` skips shards whose file exists.
With ``--partition i/n`` (``jobs.partition``) this driver scores only its share of the shards,
into the same output as the other partitions; the one that finds every shard there writes the
summary.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from cluster.errors import ClusterError, InfrastructureDown
from cluster.config import Shard
from jobs.cli import default
from jobs import results
from jobs.datasets import DatasetSpec, check_dataset, generate_dataset, iter_items, read_label_map
from jobs.errors import JobError, JobInterrupted, JobStopped
from jobs.features import FeatureLayout, FeatureOptions, feature_layout, vector_values
from jobs.interrupts import pause_point
from jobs.lifecycle import LoadedWeights, check_model, load_weights, pool_line, run_model_job
from jobs.machine import bf16_cpu_warning
from jobs.metrics import topk_from_scores
from jobs.options import RunOptions
from jobs.partition import Partition
from jobs.preflight import check_resume_target, run_differences
from jobs.progress import Progress, quiet_stream
from jobs.summary import FAILURES_SHOWN, build_summary, collect_versions, failure_lines, summary_markdown, summary_table, times_text
from worker.spec import ModelSpec
from worker.items import VideoItem
from x3d import storage

__all__ = ["EvaluateConfig", "JobError", "first_error", "prepare_evaluate", "run_evaluate", "outcome_row"]

TOP_K = 5


@dataclass(kw_only=True)
class EvaluateConfig(RunOptions, FeatureOptions):
    dataset: DatasetSpec
    output: str | None = None
    limit: int | None = None
    resume: bool = default("resume")
    retry_failed: bool = default("retry_failed")  # with resume: shards holding error rows are scored again
    save_probs: bool = default("save_probs")
    partition: Partition | None = None  # --partition i/n: only the shards numbered i modulo n; None: all


@dataclass(frozen=True)
class RunTimes:
    """This invocation's clock: the command's start (``time.monotonic``) and its two parts."""

    started: float
    startup_s: float  # imports, checks, weights, cluster and actors (sample generation apart)
    scoring_s: float  # the pipeline, from the first decode to the last row


@dataclass
class PreparedJob:
    config: EvaluateConfig
    spec: ModelSpec
    items: list[VideoItem]
    classes: Sequence[str]
    weights: LoadedWeights
    output: str
    manifest: dict[str, Any] = field(default_factory=dict)
    generate_s: float = 0.0  # making the sample videos (a generated dataset's first run)
    versions: dict[str, str] = field(default_factory=dict)  # collected at start-up (jobs.summary.collect_versions)
    subset: bool = False  # --limit left videos out: the dataset's published figures do not compare
    feature_layout: FeatureLayout | None = None  # with --save-features: what the features column holds

    @property
    def protocol(self) -> str:
        return str(self.spec.protocol)


def _default_output(cfg: EvaluateConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"runs/{cfg.dataset.name}-{cfg.model}-{cfg.views}v-{stamp}"


def _latest_run(cfg: EvaluateConfig) -> str | None:
    """For ``--resume`` without ``--output``: the newest local run of the same kind."""
    runs = sorted(glob.glob(f"runs/{cfg.dataset.name}-{cfg.model}-{cfg.views}v-*"))
    return runs[-1] if runs else None


def _fingerprint(items: Sequence[VideoItem]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.key}\t{item.label}\n".encode())
    return digest.hexdigest()


def prepare_evaluate(cfg: EvaluateConfig) -> PreparedJob:
    """All checks that need no cluster: dataset, flags, checkpoint, output and resume state."""
    spec = check_model(cfg)
    preset, protocol = spec.preset, spec.protocol
    if cfg.shard_size < 1:
        raise JobError("--shard-size must be at least 1")
    if cfg.backfill_features:
        raise JobError("--backfill-features is a label option (an evaluate run scores every video)")
    if cfg.partition is not None and not cfg.output:  # each partition would make a timestamped folder of its own
        raise JobError(f"--partition {cfg.partition} needs --output: every partition of a run writes into the same folder")
    layout = feature_layout(cfg, preset)
    output = cfg.output or (_latest_run(cfg) if cfg.resume else None) or _default_output(cfg)
    if cfg.resume and not cfg.output and not storage.exists(output):
        raise JobError(f"--resume without --output continues the newest runs/{cfg.dataset.name}-{cfg.model}-{cfg.views}v-*, "
                       "and there is none; pass --output, or drop --resume")
    results.check_output_folder(output)
    storage.check_writable(output)  # a missing bucket is one line now, not after Ray started
    generating = time.monotonic()
    generate_dataset(cfg.dataset, verbose=not cfg.quiet)
    generate_s = time.monotonic() - generating
    check_dataset(cfg.dataset)
    items = list(iter_items(cfg.dataset))
    subset = cfg.limit is not None and cfg.limit < len(items)
    if cfg.limit is not None:
        items = items[: cfg.limit]
    if not items:
        raise JobError(f"dataset {cfg.dataset.name!r} lists no videos")
    classes = read_label_map(cfg.dataset.label_map) if cfg.dataset.label_map else list(preset.classes)
    if len(classes) != preset.arch.num_classes:
        raise JobError(
            f"label map has {len(classes)} classes but {cfg.model} predicts {preset.arch.num_classes}; "
            "pass the matching --label-map or --model"
        )

    weights = load_weights(cfg)
    manifest = {
        "job": "evaluate",
        "dataset": cfg.dataset.name,
        "model": cfg.model,
        "views": cfg.views,
        "protocol": protocol,
        "precision": cfg.precision,
        "checkpoint_sha256": weights.sha256,
        "shard_size": cfg.shard_size,
        "num_videos": len(items),
        "videos_sha256": _fingerprint(items),
        "save_probs": cfg.save_probs,
        "features": layout.as_dict() if layout else None,
        "frames": spec.frames,
    }
    _check_resume(output, manifest, cfg.resume, cfg.partition)
    return PreparedJob(cfg, spec, items, classes, weights, output, manifest, generate_s, versions=collect_versions(), subset=subset,
                       feature_layout=layout)


def _check_resume(output: str, manifest: dict[str, Any], resume: bool, partition: Partition | None = None) -> None:
    """An output that holds a run may only be continued by the same run (its run.json equal to
    ``manifest``) and only with ``--resume``. A partition is the exception: the run.json it
    finds is usually another partition's (it holds no partition, so all partitions write the
    same bytes), and it needs ``--resume`` only once its own shards are there."""
    previous = results.read_run(output)
    if previous is None:
        if resume and results.list_shards(output):
            raise JobError(f"{output} has result shards but no run.json; it was not written by this tool")
        if resume:
            check_resume_target(output)  # a typo in --output would otherwise score everything again
        return
    changed = run_differences(previous, manifest)  # each as its flag with both values
    if partition is not None:
        if changed:
            raise JobError(f"--partition {partition}: this run differs from the one in {output}: {'; '.join(changed)}; "
                           "give every partition the same flags, or use a new --output")
        own = [i for i in results.list_shards(output) if partition.owns(i)]
        if own and not resume:
            raise JobError(f"{output} already holds {len(own)} shard(s) of partition {partition}; pass --resume to continue it")
        return
    if not resume:
        raise JobError(f"{output} already holds a run; pass --resume to continue it or choose another --output")
    if changed:
        raise JobError(f"--resume: this run differs from the one in {output}: {'; '.join(changed)}; "
                       "give the run's flags, or use a new --output")


def shard_items(items: Sequence[VideoItem], shard_size: int) -> list[tuple[int, Sequence[VideoItem]]]:
    return [(i // shard_size, items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


def outcome_row(outcome, classes: Sequence[str], save_probs: bool, layout: FeatureLayout | None = None) -> dict[str, Any]:
    """One Parquet row (see jobs/results.py for the schema) from a pipeline outcome; with a
    feature ``layout`` (``--save-features``) its ``features`` column too."""
    row: dict[str, Any] = {
        "video": outcome.item.key,
        "label": outcome.item.label,
        "num_views": outcome.num_views,
        "error": outcome.error,
        "failure": outcome.failure if outcome.error is not None else None,
        "decode_ms": float(outcome.decode_ms),
        "infer_ms": float(outcome.infer_ms),
        "worker": outcome.worker or "",
        "frames_read": outcome.frames_read,
        "pred": None,
        "pred_name": None,
        "topk_classes": [],
        "topk_scores": [],
        "probs": None,
    }
    if outcome.probs is not None:
        probs = np.asarray(outcome.probs, dtype=np.float32)
        top = topk_from_scores(probs, min(TOP_K, probs.size))[0]
        row.update(
            pred=int(top[0]),
            pred_name=classes[int(top[0])],
            topk_classes=[int(c) for c in top],
            topk_scores=[float(probs[c]) for c in top],
            probs=probs.tolist() if save_probs else None,
        )
    if layout is not None:
        row["features"] = vector_values(outcome.embedding, layout)
    return row


def _log(cfg: EvaluateConfig, message: str) -> None:
    if not cfg.quiet:
        print(message, file=sys.stderr, flush=True)


def first_error(output: str) -> str | None:
    """The error of the first failed video in ``output``'s predictions (for the one line that
    says nothing could be scored), None if none failed."""
    errors = results.read_predictions(output).column("error").to_pylist()
    return next((e for e in errors if e is not None), None)


def _failures(output: str) -> tuple[list[tuple[str, str]], int]:
    """(the first ``FAILURES_SHOWN`` failed videos with their errors, how many failed) in ``output``."""
    table = results.read_predictions(output).select(["video", "error"]).to_pydict()
    failed = [(v, e) for v, e in zip(table["video"], table["error"]) if e is not None]
    return failed[:FAILURES_SHOWN], len(failed)


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any] | None:
    """Run the whole job (or with ``cfg.partition`` its part) and return the summary (also
    written next to the predictions); None when a partition is done but other partitions'
    shards are still missing (one of them writes the summary).

    Times are taken from ``cfg.started_at`` (the command's start), so the reported wall time is
    the whole process's; the scoring rate is taken over the pipeline alone."""
    started = cfg.started_at if cfg.started_at is not None else time.monotonic()
    job = prepare_evaluate(cfg)
    shards = shard_items(job.items, cfg.shard_size)
    part = cfg.partition
    mine = shards if part is None else [(i, items) for i, items in shards if part.owns(i)]  # this driver's share
    if part is not None and not mine:  # more partitions than shards: this driver has nothing to do, and writes nothing
        print(f"evaluate: partition {part} has no shards of its own: the run has {len(shards)} shard(s) of {cfg.shard_size} videos "
              f"and partition {part} scores those numbered {part.index} modulo {part.count}; nothing to do "
              f"({job.output} is left as it is)", file=sys.stderr, flush=True)
        return None
    finished = results.list_shards(job.output) if cfg.resume else {}
    done = set(finished)
    if cfg.retry_failed:  # their good videos give the same rows again; the failed ones a new try
        done -= results.shards_with_errors(finished)
    if cfg.resume:  # the interrupted run's half-written shards: they are about to be written again
        # only those untouched for 10 minutes: another partition's write in progress stays
        storage.remove_stale_temp_files(results.predictions_uri(job.output))
    todo = [Shard(i, items) for i, items in mine if i not in done]
    todo_videos = sum(len(s.items) for s in todo)
    progress = Progress(todo_videos, stream=quiet_stream() if cfg.quiet else sys.stderr)
    done_here = {"videos": 0, "clips": 0}  # this invocation's work: a resumed run's throughput
    manifest_uri = results.run_uri(job.output)
    clock = {"scoring": None}

    done_mine = [items for i, items in mine if i in done]
    saved = {"shards": len(done_mine), "videos": sum(len(items) for items in done_mine), "run.json": bool(done)}
    share = "" if part is None else f" of partition {part}"
    total_videos = sum(len(items) for _, items in mine)

    def on_sized(pipe_cfg) -> None:  # the cluster fits the job: the first write
        clock["scoring"] = time.monotonic()
        # Every partition writes run.json, the same bytes (it names no partition), atomically:
        # two drivers that start together leave one whole file whichever writes last.
        storage.write_bytes(manifest_uri, json.dumps(job.manifest, indent=2).encode())
        saved["run.json"] = True
        _log(cfg, f"evaluate: {len(job.items)} videos in {len(shards)} shards -> {job.output}")
        if part is not None:
            _log(cfg, f"evaluate: partition {part}: {total_videos} videos in {len(mine)} shards (numbers {part.index} modulo {part.count})")
        if done_mine:
            _log(cfg, f"evaluate: resuming, {len(done_mine)} shards{share} already finished")
        _log(cfg, f"evaluate: {pool_line(pipe_cfg)}")
        warning = bf16_cpu_warning(cfg.precision, pipe_cfg.actor_gpus)
        if warning:
            print(f"evaluate: {warning}", file=sys.stderr, flush=True)  # even with --quiet: it is about the result's cost
        progress.start = time.monotonic()  # the elapsed time counts scoring, not start-up

    def on_video(outcome) -> None:
        done_here["videos"] += 1
        done_here["clips"] += outcome.num_views
        progress.update(1, int(outcome.error is not None))

    def on_shard(index: int, outcomes: list) -> None:
        layout = job.feature_layout
        rows = [outcome_row(o, job.classes, cfg.save_probs, layout) for o in outcomes]
        results.write_shard(job.output, index, rows, layout.schema(results.PREDICTION_SCHEMA) if layout else results.PREDICTION_SCHEMA)
        saved["shards"] += 1
        saved["videos"] += len(rows)
        pause_point("scoring")  # test hook (jobs.interrupts): a stop with shards saved and work left

    workers: list[dict[str, Any]] = []
    if todo:
        try:
            workers = run_model_job(cfg, job.spec, job.weights, todo, on_shard, on_video=on_video, on_sized=on_sized,
                                    run_name=f"evaluate {job.output}")
        except JobInterrupted as stop:  # Ray is down again; say what is safe and how to go on
            if saved["run.json"]:
                stop.output = job.output
                stop.finished = (
                    f"{saved['shards']} of {len(mine)} shards{share} ({saved['videos']} of {total_videos} videos) saved in {job.output}"
                )
            raise
        except InfrastructureDown:
            raise  # its own status (4) and line, written or not
        except (ClusterError, storage.StorageError) as exc:  # the cluster or the storage failed mid-run
            if not saved["run.json"]:
                raise  # nothing written: the request's one line, exit 2
            raise JobStopped(
                str(exc), job.output,
                f"{saved['shards']} of {len(mine)} shards{share} ({saved['videos']} of {total_videos} videos) saved in {job.output}",
            ) from None
        progress.close()
    elif not storage.exists(manifest_uri):  # nothing left to score: no cluster needed
        storage.write_bytes(manifest_uri, json.dumps(job.manifest, indent=2).encode())
    scored = time.monotonic()
    if part is not None and not todo and storage.exists(results.summary_uris(job.output)[0]):
        # a partition that scored nothing here: the summary another one wrote (with its figures) stays
        if not cfg.quiet:
            print(f"evaluate: partition {part}: its {len(mine)} shards were already saved and the run's summary is written; "
                  f"nothing to do -> {job.output}")
        return json.loads(storage.read_bytes(results.summary_uris(job.output)[0]))
    if part is not None:
        missing = len(shards) - len(set(results.list_shards(job.output)) & {i for i, _ in shards})
        if missing:  # other partitions are still at work (or not started): the last one writes the summary
            if not cfg.quiet:
                print(f"evaluate: partition {part} done: {len(mine)} shards ({total_videos} videos) saved in {job.output}; "
                      f"{missing} of the run's {len(shards)} shards are still missing (the other partitions'); "
                      "the partition that finishes last writes the summary")
            return None
    scoring_start = clock["scoring"] if clock["scoring"] is not None else scored
    times = RunTimes(started=started, startup_s=scoring_start - started - job.generate_s, scoring_s=scored - scoring_start)

    try:  # from here on every video is saved: a stop only leaves the summary to write
        pause_point("scored")
        summary = summarise(job, times, workers, videos_done=done_here["videos"], clips_done=done_here["clips"])
        failures, failed = _failures(job.output) if summary["num_failed"] else ([], 0)
    except JobInterrupted as stop:
        stop.output, stop.finished = job.output, f"every video is saved in {job.output}; the summary is not written"
        raise
    except Exception as exc:  # noqa: BLE001 - the scores are safe; say how to finish, in one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise JobStopped(
            f"the summary could not be written ({type(exc).__name__}: {first})", job.output,
            f"every video is scored and saved in {job.output}; --resume writes the summary without scoring again",
        ) from None
    if not cfg.quiet:
        print(summary_table(summary))
        print(f"scored {summary['num_ok']} of {summary['num_videos']} videos, {summary['num_failed']} failed; "
              f"{times_text(summary)}; results in {job.output}")
        where = f"{results.predictions_uri(job.output)} (figures with failures: {results.summary_uris(job.output)[1]})"
        for line in failure_lines(failures, failed, where):
            print(line, file=sys.stderr, flush=True)
    return summary


def summarise(job: PreparedJob, times: RunTimes, workers: list[dict[str, Any]], videos_done: int, clips_done: int) -> dict[str, Any]:
    """The end of a run: metrics from the Parquet files, summary.json and summary.md.

    Uses only what ``prepare_evaluate`` gathered at start-up (versions included) and the files
    of the output: it imports nothing and needs no cluster, so a run that fails here is
    finished by ``--resume`` without scoring a video.
    """
    cfg = job.config
    table = results.read_predictions(job.output)
    summary = build_summary(
        table,
        dataset=cfg.dataset.name,
        model=cfg.model,
        views=cfg.views,
        protocol=job.protocol,
        checkpoint=job.weights.source,
        checkpoint_sha256=job.weights.sha256,
        wall_s=time.monotonic() - times.started,
        workers=workers,
        output=job.output,
        versions=job.versions,
        videos_done=videos_done,
        clips_done=clips_done,
        published_on=None if job.subset else cfg.dataset.published,  # a --limit subset is not what they measured
        startup_s=times.startup_s,
        generate_s=job.generate_s,
        scoring_s=times.scoring_s,
    )
    summary = _with_precision(summary, cfg.precision)
    summary["partition"] = None if cfg.partition is None else str(cfg.partition)
    pause_point("summary")
    results.write_json(results.summary_uris(job.output)[0], summary)
    markdown = summary_markdown(summary)
    if cfg.partition is not None:
        markdown += (f"- partition: written by partition {cfg.partition}; the accuracy and counts cover every partition's rows, "
                     f"the times and rates only this partition's driver\n")
    if cfg.precision != "fp32":
        markdown += f"- precision: {cfg.precision} autocast forward (fp32 is the reference)\n"
    results.write_text(results.summary_uris(job.output)[1], markdown)
    for folder in (job.output, results.predictions_uri(job.output)):  # killed writes of earlier runs
        storage.remove_orphan_temp_files(folder)
    return summary


def _with_precision(summary: dict[str, Any], precision: str) -> dict[str, Any]:
    """``precision`` placed right after ``protocol`` in summary.json."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        out[key] = value
        if key == "protocol":
            out["precision"] = precision
    out.setdefault("precision", precision)
    return out
