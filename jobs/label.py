"""The nightly labeling job: top-k labels for every new or changed video under a prefix.

A video *version* is its URI plus its etag (S3) or size and mtime (files). A run labels only
versions that have no row yet for the same model, checkpoint and view count, so running the
same command again processes nothing, a crashed run continues where it stopped, and a failed
video is retried on later runs until it has failed ``max_attempts`` times. Rows are written
per shard, atomically, under ``<output>/labels/`` (columns: ``jobs.schemas.LABEL_SCHEMA``); each run also leaves a manifest under
``<output>/manifests/``. Read the labels with ``read_labels`` (one row per video version: the
latest attempt) or with any Parquet reader.

The input listing streams: work starts on the first shard while the listing is still going.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import x3d
from cluster.pipeline import Shard
from jobs import results
from jobs.datasets import VIDEO_EXTENSIONS
from jobs.errors import JobError, JobInterrupted
from jobs.lifecycle import check_model, load_weights, run_model_job
from jobs.metrics import topk_from_scores
from jobs.options import RunOptions
from jobs.parquet_writer import write_parquet
from jobs.progress import Progress, quiet_stream as _quiet_stream
from jobs.schemas import LABEL_SCHEMA
from worker.items import VideoItem
from x3d import storage

__all__ = ["LabelConfig", "LABEL_SCHEMA", "run_label", "plan_label", "read_labels", "version_of"]

@dataclass(kw_only=True)
class LabelConfig(RunOptions):
    input: str
    output: str
    views: int = 10
    top_k: int = 5
    min_score: float = 0.0
    since: str | None = None
    max_attempts: int = 3


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
    if _is_list_file(source):
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


def _is_list_file(source: str) -> bool:
    return source.lower().endswith((".txt", ".csv", ".lst", ".list"))


def read_labels(output: str, latest_only: bool = True) -> pa.Table:
    """All label rows; with ``latest_only`` one row per (video, version): its latest attempt."""
    folder = storage.join(output, "labels")
    tables = [_read_parquet(info.uri) for info in storage.list_files(folder, (".parquet",))]
    if not tables:
        return LABEL_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    if not latest_only:
        return table
    cols = table.select(["video", "version", "attempt"]).to_pydict()
    best: dict[tuple[str, str], int] = {}
    for i, key in enumerate(zip(cols["video"], cols["version"])):
        if key not in best or cols["attempt"][i] > cols["attempt"][best[key]]:
            best[key] = i
    return table.take(sorted(best.values()))


def _read_parquet(uri: str) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)), schema=LABEL_SCHEMA)


@dataclass
class _History:
    """What earlier runs did for this model/checkpoint/views: version -> (ok, attempts)."""

    done: dict[tuple[str, str], tuple[bool, int]]

    def needs_work(self, uri: str, version: str, max_attempts: int) -> tuple[bool, int]:
        ok, attempts = self.done.get((uri, version), (False, 0))
        return (not ok and attempts < max_attempts), attempts


def _history(output: str, model: str, sha256: str, views: int) -> _History:
    table = read_labels(output, latest_only=False)
    done: dict[tuple[str, str], tuple[bool, int]] = {}
    cols = table.select(["video", "version", "error", "attempt", "model", "checkpoint_sha256", "views"]).to_pydict()
    for i in range(table.num_rows):
        if (cols["model"][i], cols["checkpoint_sha256"][i], cols["views"][i]) != (model, sha256, views):
            continue
        key = (cols["video"][i], cols["version"][i])
        ok, attempts = done.get(key, (False, 0))
        done[key] = (ok or cols["error"][i] is None, max(attempts, cols["attempt"][i]))
    return _History(done)


@dataclass
class _Todo:
    info: storage.ObjectInfo
    version: str
    attempt: int


def _select(cfg: LabelConfig, history: _History, counts: dict[str, int]) -> Iterator[_Todo]:
    since = parse_since(cfg.since)
    for info in list_input(cfg.input):
        counts["listed"] += 1
        if since is not None and info.mtime is not None and info.mtime < since:
            counts["older"] += 1
            continue
        version = version_of(info)
        todo, attempts = history.needs_work(info.uri, version, cfg.max_attempts)
        if not todo:
            counts["skipped"] += 1
            continue
        counts["retries" if attempts else "new"] += 1
        yield _Todo(info, version, attempts + 1)


def _last_rate(output: str) -> float | None:
    latest = storage.join(output, "manifest.json")
    if not storage.exists(latest):
        return None
    return json.loads(storage.read_bytes(latest)).get("videos_per_s")


def plan_label(cfg: LabelConfig) -> dict[str, Any]:
    """``--plan``: what a run would do, without starting Ray."""
    check_model(cfg)
    storage.check_writable(cfg.output)
    sha = load_weights(cfg).sha256
    history = _history(cfg.output, cfg.model, sha, cfg.views)
    counts = {"listed": 0, "older": 0, "skipped": 0, "new": 0, "retries": 0}
    for _ in _select(cfg, history, counts):
        pass
    rate = _last_rate(cfg.output)
    todo = counts["new"] + counts["retries"]
    counts["to_process"] = todo
    counts["estimated_s"] = round(todo / rate, 1) if rate else None
    return counts


def run_label(cfg: LabelConfig) -> dict[str, Any]:
    spec = check_model(cfg)
    preset = spec.preset
    storage.check_writable(cfg.output)  # before the weights and Ray: a missing bucket is one line now
    weights = load_weights(cfg)
    sha = weights.sha256
    if not 1 <= cfg.top_k <= preset.arch.num_classes:
        raise JobError(f"--top-k must be between 1 and {preset.arch.num_classes}")
    classes = preset.classes
    history = _history(cfg.output, cfg.model, sha, cfg.views)
    storage.remove_stale_temp_files(storage.join(cfg.output, "labels"))  # left by a killed earlier run
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    counts = {"listed": 0, "older": 0, "skipped": 0, "new": 0, "retries": 0, "labelled": 0, "failed": 0}
    shard_todos: dict[int, list[_Todo]] = {}

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
        rows = [_label_row(o, t, cfg, classes, sha, run_id) for o, t in zip(outcomes, todos)]
        counts["labelled"] += sum(1 for r in rows if r["error"] is None)
        counts["failed"] += sum(1 for r in rows if r["error"] is not None)
        _write_rows(storage.join(cfg.output, "labels", f"part-{run_id}-{index:05d}.parquet"), rows)

    start = time.monotonic()
    work = shards()
    first = next(work, None)
    if first is None:  # nothing new since the last run: no cluster needed
        return _finish_run(cfg, preset, sha, run_id, counts, start)
    progress = Progress(None, stream=_quiet_stream() if cfg.quiet else None)
    try:
        run_model_job(
            cfg,
            spec,
            weights,
            itertools.chain([first], work),
            on_shard,
            on_video=lambda o: progress.update(1, int(o.error is not None)),
        )
    except JobInterrupted as stop:  # every finished shard is saved; the next run skips those videos
        stop.output = cfg.output
        stop.finished = f"{counts['labelled'] + counts['failed']} videos labelled by this run saved in {cfg.output}"
        raise
    progress.close()
    return _finish_run(cfg, preset, sha, run_id, counts, start)


def _finish_run(cfg: LabelConfig, preset: x3d.Preset, sha: str, run_id: str, counts: dict[str, int], start: float) -> dict[str, Any]:
    wall = time.monotonic() - start
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
        **counts,
        "wall_s": round(wall, 3),
        "videos_per_s": round(done / wall, 3) if done and wall > 0 else None,
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    results.write_json(storage.join(cfg.output, "manifests", f"{run_id}.json"), manifest)
    if done:
        results.write_json(storage.join(cfg.output, "manifest.json"), manifest)
    for folder in (cfg.output, storage.join(cfg.output, "labels"), storage.join(cfg.output, "manifests")):
        storage.remove_orphan_temp_files(folder)  # killed writes of earlier runs; live writes hold a lock
    if not cfg.quiet:
        print(
            f"label: {counts['listed']} listed, {counts['skipped']} already labelled, "
            f"{counts['labelled']} labelled, {counts['failed']} failed in {wall:.1f} s -> {cfg.output}"
        )
    return manifest


def _label_row(outcome, todo: _Todo, cfg: LabelConfig, classes: Sequence[str], sha: str, run_id: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "video": todo.info.uri,
        "version": todo.version,
        "labels": [],
        "scores": [],
        "pred": None,
        "error": outcome.error,
        "attempt": todo.attempt,
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
    }
    if outcome.probs is not None:
        probs = np.asarray(outcome.probs, dtype=np.float32)
        top = [int(c) for c in topk_from_scores(probs, cfg.top_k)[0] if probs[c] >= cfg.min_score]
        row.update(labels=[classes[c] for c in top], scores=[float(probs[c]) for c in top], pred=int(np.argmax(probs)))
    return row


def _write_rows(uri: str, rows: list[dict[str, Any]]) -> None:
    write_parquet(uri, rows, LABEL_SCHEMA)
