"""The nightly labeling job: top-k labels for every new or changed video under a prefix.

A video *version* is its URI plus its etag (S3) or size and mtime (files). A run labels only
versions that have no row yet for the same model, checkpoint and view count, so running the
same command again processes nothing, a crashed run continues where it stopped, and a failed
video is retried on later runs until it has failed ``max_attempts`` times. What is new is
decided against the per-output index of ``jobs.label_state``, not by reading old rows. Rows are
written per shard, atomically, under ``<output>/labels/date=YYYY-MM-DD/`` (``jobs.label_store``:
layout, compaction, reading; columns: ``jobs.schemas.LABEL_SCHEMA``); each run also leaves a manifest under
``<output>/manifests/``. Read the labels with ``read_labels`` (one row per video version: the
latest successful attempt, else its latest attempt) or with any Parquet reader.

With ``--save-features`` the rows also carry each video's feature vector (``jobs.features``);
``--backfill-features`` counts versions labelled without one as not done.

The input listing streams: work starts on the first shard while the listing is still going.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

import x3d
from cluster.config import INFRASTRUCTURE
from cluster.errors import ClusterError, InfrastructureDown
from cluster.config import Shard
from jobs.cli import default
from jobs import label_state, label_store, results
from jobs.datasets import VIDEO_EXTENSIONS
from jobs.errors import JobError, JobInterrupted, JobStopped
from jobs.features import FeatureLayout, FeatureOptions, claim_layout, feature_layout, vector_values
from jobs.interrupts import pause_point
from jobs.lifecycle import check_model, load_weights, run_model_job
from jobs.machine import bf16_cpu_warning
from jobs.metrics import topk_from_scores
from jobs.options import RunOptions
from jobs.parquet_writer import write_parquet
from jobs.preflight import check_label_features, check_label_input, check_output, is_list_file
from jobs.progress import Progress, quiet_stream as _quiet_stream
from jobs.schemas import LABEL_SCHEMA
from jobs.summary import FAILURES_SHOWN, failure_lines, times_text
from worker.items import VideoItem
from x3d import storage

__all__ = ["LabelConfig", "LABEL_SCHEMA", "compact_labels", "first_failure", "plan_label", "read_labels", "rebuild_label_index", "run_label", "given_up_text", "version_of"]


@dataclass(kw_only=True)
class LabelConfig(RunOptions, FeatureOptions):
    input: str
    output: str
    views: int = default("views", "label")
    top_k: int = default("top_k", "label")
    min_score: float = default("min_score", "label")
    since: str | None = None
    max_attempts: int = default("max_attempts", "label")
    retry_failed: bool = default("retry_failed", "label")  # videos given up after --max-attempts are tried once more


def version_of(info: storage.ObjectInfo) -> str:
    """What makes two listings of the same URI the same video: etag, else size and mtime."""
    if info.etag:
        return f"etag:{info.etag.strip(chr(34))}"
    return f"size:{info.size}:mtime:{info.mtime:.6f}" if info.mtime is not None else f"size:{info.size}"


def parse_since(text: str | None) -> float | None:
    """``--since``: an ISO date/time (UTC if no zone) or a look-back like ``36h`` / ``7d``."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return time.time() - float(match.group(1)) * unit
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise JobError(f"--since {text!r}: expected an ISO date (2026-11-24T00:00) or a look-back like 36h or 7d") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def list_input(source: str) -> Iterator[storage.ObjectInfo]:
    """Stream the videos of a folder / prefix, or of a list file (one path or URI per line)."""
    if is_list_file(source):
        base = source.rsplit("/", 1)[0] if "/" in source else "."
        text = storage.read_bytes(source).decode("utf-8-sig")
        for line in text.splitlines():
            path = line.strip().split()[0] if line.strip() else ""
            if not path or path.startswith("#"):
                continue
            uri = path if (storage.is_remote(path) or path.startswith("/")) else storage.join(base, path)
            try:
                yield storage.stat(uri)
            except storage.StorageError:
                yield storage.ObjectInfo(uri=uri, size=-1, mtime=None, etag=None)  # becomes an error row
        return
    yield from storage.list_files(source, VIDEO_EXTENSIONS)


def check_input(cfg: LabelConfig) -> None:
    """``--input`` and ``--output`` checked before any work (``jobs.preflight``, which the command
    line runs before torch and Ray are even imported)."""
    check_output(cfg.output)
    check_label_input(cfg.input)


def read_labels(output: str, latest_only: bool = True, filter=None, columns: list[str] | None = None) -> pa.Table:
    """All label rows; with ``latest_only`` one row per (video, version): its latest successful
    attempt, else its latest attempt (a failed later attempt never hides a good label).

    Reads through ``pyarrow.dataset`` (see ``jobs.label_store``): ``filter`` (a dataset
    expression, which may use the ``date`` partition) and ``columns`` are pushed into the scan.
    """
    return label_store.read_labels(output, latest_only=latest_only, filter=filter, columns=columns)


@dataclass
class _History:
    """What earlier runs did for this model/checkpoint/views, as the label index holds it.

    ``backfill`` (``--backfill-features``): a version counts as done only if a row of it stored
    features. One labelled before without them is processed whatever its attempts (it decoded
    then, so it is not a broken file); one never labelled keeps the ``--max-attempts`` rule."""

    index: label_state.LabelIndex
    scope: label_state.Scope
    backfill: bool = False

    def needs_work(self, infos: Sequence[storage.ObjectInfo], versions: Sequence[str], max_attempts: int) -> Iterator[tuple[bool, int, bool, bool]]:
        """Per listed version: (whether to process it, attempts so far, whether it is a backfill
        of one labelled without features, whether it was ever labelled), a chunk at a time. A
        version not processed was labelled, or given up on after ``max_attempts`` failures."""
        uris = [i.uri for i in infos]
        ok, attempts = self.index.lookup(label_state.keys_of(self.scope, uris, versions))
        labelled = np.zeros(len(ok), bool)
        if self.backfill:
            labelled = ok
            ok, _ = self.index.lookup(label_state.keys_of(self.scope.with_features(), uris, versions))
        for done, tried, before in zip(ok.tolist(), attempts.tolist(), labelled.tolist()):
            yield (not done and (before or tried < max_attempts)), tried, before and not done, done or before


def _history(output: str, model: str, sha256: str, views: int, quiet: bool = False, save: bool = True, backfill: bool = False) -> _History:
    log = (lambda _m: None) if quiet else print
    return _History(label_state.load_index(output, log=log, save=save), label_state.Scope(model, sha256, views), backfill)


@dataclass
class _Todo:
    info: storage.ObjectInfo
    version: str
    attempt: int


_CHUNK = 1000  # listed videos looked up in the index at a time (an S3 listing page)


def _select(cfg: LabelConfig, history: _History, counts: dict[str, int]) -> Iterator[_Todo]:
    since = parse_since(cfg.since)
    listing = iter(list_input(cfg.input))
    while True:
        chunk: list[storage.ObjectInfo] = []
        pulled = 0
        for info in itertools.islice(listing, _CHUNK):
            pulled += 1
            counts["listed"] += 1
            if since is not None and info.mtime is not None and info.mtime < since:
                counts["older"] += 1
                continue
            chunk.append(info)
        versions = [version_of(info) for info in chunk]
        for info, version, (todo, attempts, backfill, labelled) in zip(chunk, versions, history.needs_work(chunk, versions, _attempts_allowed(cfg))):
            if not todo:
                counts["skipped" if labelled else "given_up"] += 1  # given up: failed --max-attempts times, never labelled
                continue
            counts["backfilled" if backfill else "retries" if attempts else "new"] += 1
            yield _Todo(info, version, attempts + 1)
        if pulled < _CHUNK:
            return


def _last_rate(output: str) -> tuple[float | None, float]:
    """The last run's scoring rate and its start-up seconds (0 if it did not record them)."""
    latest = storage.join(output, "manifest.json")
    if not storage.exists(latest):
        return None, 0.0
    last = json.loads(storage.read_bytes(latest))
    return last.get("videos_per_s"), float(last.get("startup_s") or 0.0)


def plan_label(cfg: LabelConfig) -> dict[str, Any]:
    """``--plan``: what a run would do, without starting Ray. The estimate is the last run's
    start-up plus the videos at its scoring rate."""
    spec = check_model(cfg)
    check_input(cfg)
    layout = _check_features(cfg, spec.preset, write=False)
    sha = load_weights(cfg).sha256
    history = _history(cfg.output, cfg.model, sha, cfg.views, quiet=cfg.quiet, save=False, backfill=cfg.backfill_features)  # a dry run writes nothing
    counts = {"listed": 0, "older": 0, "skipped": 0, "given_up": 0, "new": 0, "retries": 0, "backfilled": 0}
    for _ in _select(cfg, history, counts):
        pass
    rate, startup_s = _last_rate(cfg.output)
    todo = counts["new"] + counts["retries"] + counts["backfilled"]
    counts["to_process"] = todo
    counts["estimated_s"] = (round(startup_s + todo / rate, 1) if todo else 0.0) if rate else None
    # the extra storage: one vector per video processed (half or single floats barely compress)
    counts["features_bytes"] = todo * layout.bytes_per_video if layout else 0
    return counts


def _check_features(cfg: LabelConfig, preset: x3d.Preset, write: bool = True) -> FeatureLayout | None:
    """The run's feature layout, which must be the output's (recorded by its first run with
    features, ``write``); a mismatch, or no ``--save-features`` on an output that stores vectors
    (its new rows would silently have none), is a JobError before any work."""
    layout = feature_layout(cfg, preset)
    if layout is not None:
        claim_layout(cfg.output, layout, write=write)
    else:
        check_label_features(cfg.output, save_features=False)
    return layout


def rebuild_label_index(output: str, quiet: bool = False) -> label_state.LabelIndex:
    """``--rebuild-index``: the index afresh from the label files (it is only ever derived from them)."""
    return label_state.rebuild_index(output, log=(lambda _m: None) if quiet else print)


def compact_labels(output: str, target_mb: float = label_store.DEFAULT_TARGET_MB, quiet: bool = False) -> dict[str, int]:
    """``--compact``: bring the index up to date, then merge the shard files of the runs it covers."""
    log = (lambda _m: None) if quiet else print
    index = label_state.load_index(output, log=log)
    return label_store.compact(output, target_mb, covered_runs=index.runs, log=log)


def run_label(cfg: LabelConfig) -> dict[str, Any]:
    """Label what is new or changed and return the run's manifest (also written). Times are
    taken from ``cfg.started_at`` (the command's start), as evaluate's are."""
    started = cfg.started_at if cfg.started_at is not None else time.monotonic()
    spec = check_model(cfg)
    check_input(cfg)
    preset = spec.preset
    weights = load_weights(cfg)
    sha = weights.sha256
    if not 1 <= cfg.top_k <= preset.arch.num_classes:
        raise JobError(f"--top-k must be between 1 and {preset.arch.num_classes}")
    if not 0.0 <= cfg.min_score <= 1.0:  # above 1 no label is kept and the videos count as done
        raise JobError(f"--min-score must be from 0 to 1 (scores are probabilities), got {cfg.min_score}")
    classes = preset.classes
    layout = _check_features(cfg, preset)
    history = _history(cfg.output, cfg.model, sha, cfg.views, quiet=cfg.quiet, backfill=cfg.backfill_features)
    storage.remove_stale_temp_files(storage.join(cfg.output, "labels"))  # left by a killed earlier run
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    counts = {"listed": 0, "older": 0, "skipped": 0, "given_up": 0, "new": 0, "retries": 0, "backfilled": 0, "labelled": 0, "failed": 0}
    shard_todos: dict[int, list[_Todo]] = {}
    failures: list[tuple[str, str]] = []  # the first few (video, error) of this run, for stderr
    written: list[label_state.Segment] = []  # this run's rows as index entries, saved at the end

    def shards() -> Iterator[Shard]:
        batch: list[_Todo] = []
        index = 0
        for todo in _select(cfg, history, counts):
            batch.append(todo)
            if len(batch) == cfg.shard_size:
                yield _as_shard(index, batch)
                index, batch = index + 1, []
        if batch:
            yield _as_shard(index, batch)

    def _as_shard(index: int, todos: list[_Todo]) -> Shard:
        shard_todos[index] = todos
        return Shard(index, [VideoItem(key=t.info.uri, uri=t.info.uri, label=None) for t in todos])

    def on_shard(index: int, outcomes: Sequence) -> None:
        todos = shard_todos.pop(index)
        rows = [_label_row(o, t, cfg, classes, sha, run_id, layout) for o, t in zip(outcomes, todos)]
        counts["labelled"] += sum(1 for r in rows if r["error"] is None)
        counts["failed"] += sum(1 for r in rows if r["error"] is not None)
        failures.extend((r["video"], r["error"]) for r in rows if r["error"] is not None and len(failures) < FAILURES_SHOWN)
        _write_rows(label_store.part_uri(cfg.output, run_id, index), rows, layout)
        written.append(_entries(history, rows))
        label_store.crash_point("label:after-shard")

    clock = {"scoring": None}

    def on_sized(pipe_cfg) -> None:
        clock["scoring"] = time.monotonic()
        warning = bf16_cpu_warning(cfg.precision, pipe_cfg.actor_gpus)
        if warning:
            print(f"label: {warning}", file=sys.stderr, flush=True)

    work = shards()
    first = next(work, None)
    if first is None:  # nothing new since the last run: no cluster needed
        return _finish_run(cfg, preset, sha, run_id, counts, started, time.monotonic(), layout)
    progress = Progress(None, stream=_quiet_stream() if cfg.quiet else None)
    try:
        run_model_job(
            cfg,
            spec,
            weights,
            itertools.chain([first], work),
            on_shard,
            on_video=lambda o: progress.update(1, int(o.error is not None)),
            on_sized=on_sized,
            run_name=f"label {cfg.output}",
        )
    except JobInterrupted as stop:  # every finished shard is saved; the next run folds them into the index
        if written:  # else nothing to resume: the same command again (a --resume there would be refused)
            stop.output = cfg.output
            stop.finished = f"{counts['labelled'] + counts['failed']} videos labelled by this run saved in {cfg.output}"
        raise
    except InfrastructureDown:
        raise  # its own status (4) and line, written or not
    except (ClusterError, storage.StorageError) as exc:  # the cluster or the storage failed mid-run
        if not written:
            raise  # no row written: the request's one line, exit 2
        raise JobStopped(str(exc), cfg.output, f"{counts['labelled'] + counts['failed']} videos labelled by this run saved in "
                         f"{cfg.output} (the next run does the rest)") from None
    progress.close()
    try:
        pause_point("scored")
        # every row of the run is on disk: only now record them in the index (see jobs.label_state)
        history.index.add(label_state.Segment.merge(written), [run_id])
        return _finish_run(cfg, preset, sha, run_id, counts, started, clock["scoring"], failures, layout)
    except JobInterrupted as stop:  # the rows are saved; a later run folds them into the index
        stop.output = cfg.output
        stop.finished = f"all {counts['labelled'] + counts['failed']} videos labelled by this run saved in {cfg.output}"
        raise


def _entries(history: _History, rows: list[dict[str, Any]]) -> label_state.Segment:
    """A shard's rows as index entries: 11 bytes a row, not the rows themselves; a row that
    stored features is also an entry of the features scope (``label_state.Scope``)."""
    keys = label_state.keys_of(history.scope, (r["video"] for r in rows), (r["version"] for r in rows))
    ok = np.array([r["error"] is None for r in rows], bool)
    attempts = np.array([r["attempt"] for r in rows], np.int16)
    featured = [i for i, r in enumerate(rows) if r.get("features") is not None]
    if featured:
        more = label_state.keys_of(history.scope.with_features(), (rows[i]["video"] for i in featured), (rows[i]["version"] for i in featured))
        keys, ok, attempts = np.concatenate([keys, more]), np.concatenate([ok, ok[featured]]), np.concatenate([attempts, attempts[featured]])
    return label_state.Segment.of(keys, ok, attempts)


def _finish_run(cfg: LabelConfig, preset: x3d.Preset, sha: str, run_id: str, counts: dict[str, int], started: float,
                scoring_start: float, failures: Sequence[tuple[str, str]] = (),
                layout: FeatureLayout | None = None) -> dict[str, Any]:
    """Write the run's manifest (keys: ``jobs.schemas.LABEL_MANIFEST_KEYS``) and say what was done."""
    now = time.monotonic()
    wall, scoring = now - started, now - scoring_start
    done = counts["labelled"] + counts["failed"]
    manifest = {
        "run_id": run_id,
        "input": cfg.input,
        "model": cfg.model,
        "checkpoint": cfg.checkpoint or (preset.default_weights.url if preset.default_weights else None),
        "checkpoint_sha256": sha,
        "views": cfg.views,
        "precision": cfg.precision,
        "top_k": cfg.top_k,
        "min_score": cfg.min_score,
        "since": cfg.since,
        "max_attempts": cfg.max_attempts,
        "features": layout.as_dict() if layout else None,
        "backfill_features": cfg.backfill_features,
        **counts,
        "videos_this_run": done,
        "wall_s": round(wall, 3),
        "startup_s": round(wall - scoring, 3),
        "scoring_s": round(scoring, 3),
        "videos_per_s": round(done / scoring, 3) if done and scoring > 0 else None,
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    results.write_json(storage.join(cfg.output, "manifests", f"{run_id}.json"), manifest)
    if done:
        results.write_json(storage.join(cfg.output, "manifest.json"), manifest)
    labels = label_store.labels_dir(cfg.output)
    for folder in (cfg.output, labels, storage.join(labels, f"date={label_store.date_of_run(run_id)}"), storage.join(cfg.output, "manifests")):
        storage.remove_orphan_temp_files(folder)  # killed writes of earlier runs; live writes hold a lock
    if not cfg.quiet:
        print(
            f"label: {counts['listed']} listed, {counts['skipped']} already labelled, "
            + (f"{given_up_text(counts['given_up'], cfg.max_attempts)}, " if counts["given_up"] else "")
            + f"{counts['labelled']} labelled, {counts['failed']} failed; {times_text(manifest)} -> {cfg.output}"
        )
        where = f"{label_store.labels_dir(cfg.output)} (run {run_id})"
        for line in failure_lines(failures, counts["failed"], where, job="label"):
            print(line, file=sys.stderr, flush=True)
    return manifest


def given_up_text(count: int, max_attempts: int) -> str:
    """How the result line and ``--plan`` name the versions that failed ``--max-attempts`` times
    and were never labelled: given up, not done (a higher --max-attempts tries them again)."""
    return f"{count} given up after {max_attempts} failed attempts (not labelled; a higher --max-attempts retries them)"


def first_failure(output: str, run_id: str) -> str | None:
    """The error of one failed video of run ``run_id`` (for the line that says nothing could be
    labelled), None if none failed."""
    failed = (ds.field("run_id") == run_id) & ~ds.field("error").is_null()
    errors = read_labels(output, latest_only=False, filter=failed, columns=["error"]).column("error").to_pylist()
    return errors[0] if errors else None


def _attempts_allowed(cfg: LabelConfig) -> int:
    """--max-attempts, or with --retry-failed one more than any video has had."""
    return 2**15 - 1 if cfg.retry_failed else cfg.max_attempts


def _label_row(outcome, todo: _Todo, cfg: LabelConfig, classes: Sequence[str], sha: str, run_id: str,
               layout: FeatureLayout | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "video": todo.info.uri,
        "version": todo.version,
        "labels": [],
        "scores": [],
        "pred": None,
        "error": outcome.error,
        "failure": outcome.failure if outcome.error is not None else None,
        # an infrastructure failure is not the video's: it uses up none of its --max-attempts
        "attempt": todo.attempt - 1 if outcome.error is not None and outcome.failure == INFRASTRUCTURE else todo.attempt,
        "etag": todo.info.etag,
        "size": todo.info.size if todo.info.size >= 0 else None,
        "mtime": todo.info.mtime,
        "model": cfg.model,
        "checkpoint_sha256": sha,
        "views": cfg.views,
        "run_id": run_id,
        "decode_ms": float(outcome.decode_ms),
        "infer_ms": float(outcome.infer_ms),
        "worker": outcome.worker or "",
        "frames_read": outcome.frames_read,
    }
    if outcome.probs is not None:
        probs = np.asarray(outcome.probs, dtype=np.float32)
        top = [int(c) for c in topk_from_scores(probs, cfg.top_k)[0] if probs[c] >= cfg.min_score]
        row.update(labels=[classes[c] for c in top], scores=[float(probs[c]) for c in top], pred=int(np.argmax(probs)))
    if layout is not None:
        row["features"] = vector_values(outcome.embedding, layout)
    return row


def _write_rows(uri: str, rows: list[dict[str, Any]], layout: FeatureLayout | None = None) -> None:
    write_parquet(uri, rows, layout.schema(LABEL_SCHEMA) if layout else LABEL_SCHEMA)
