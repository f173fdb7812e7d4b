"""Where label rows live, how they are read, and how small shard files are merged.

Layout under ``<output>/labels/``, Hive-style so DuckDB, Polars, Spark and ``pyarrow.dataset``
prune by date without opening files::

    labels/date=2026-11-24/part-<run_id>-<shard>.parquet   one file per shard, as a run writes it
    labels/date=2026-11-24/compact-<id>.parquet            many shards merged by ``compact``
    labels/_compactions/<id>.json                          what a compaction replaced (its commit)
    labels/part-<run_id>-<shard>.parquet                   the older flat layout: still read

Compaction must never let a reader see a row twice or zero times, and a compaction killed at
any point must leave a valid table. The rule that makes this provable is small: a
``compact-<id>`` file counts only once ``_compactions/<id>.json`` exists, and every file that
manifest names under ``replaces`` stops counting at that same moment. The merged file is
written before the manifest and the replaced files are deleted after it, so each row is
counted in exactly one place at every instant. A reader takes the manifests before and after
listing the files and starts again if they changed, or if a file it chose vanished before it
was read (a compaction finished meanwhile). Only one compaction may run at a time per output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from jobs.features import read_layout
from jobs.parquet_writer import write_table
from jobs.schemas import LABEL_SCHEMA
from x3d import storage

__all__ = [
    "LABEL_SCHEMA",
    "DEFAULT_TARGET_MB",
    "LabelFile",
    "compact",
    "crash_point",
    "label_schema",
    "live_files",
    "part_uri",
    "count_rows",
    "read_labels",
    "run_of",
    "scan",
]

#: the Hive partition column: the UTC date of the run that wrote the row
PARTITION = pa.schema([pa.field("date", pa.string())])
DEFAULT_TARGET_MB = 128
ROW_GROUP_ROWS = 128 * 1024

_PART = re.compile(r"part-(\d{8}T\d{6}Z-[0-9a-f]+)-\d+\.parquet")
_COMPACT = re.compile(r"compact-([0-9a-f]{16})\.parquet")
_DATE_DIR = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_MANIFESTS = "_compactions"
_READ_TRIES = 40
_READ_PAUSE_CAP_S = 1.0  # between tries of a read that met a file a compaction removed


def crash_point(name: str) -> None:
    """Test hook: ``X3D_LABEL_CRASH_AT=<name>`` SIGKILLs this process here, as a lost node would."""
    if os.environ.get("X3D_LABEL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def labels_dir(output: str) -> str:
    return storage.join(output, "labels")


def date_of_run(run_id: str) -> str:
    """Run ids start with their UTC start time (``20261124T010203Z-ab12cd``)."""
    return f"{run_id[0:4]}-{run_id[4:6]}-{run_id[6:8]}"


def part_uri(output: str, run_id: str, shard: int) -> str:
    """Where shard ``shard`` of run ``run_id`` is written."""
    return storage.join(labels_dir(output), f"date={date_of_run(run_id)}", f"part-{run_id}-{shard:05d}.parquet")


def run_of(name: str) -> str | None:
    """The run id in a shard file's name; None for compacted (or foreign) files."""
    match = _PART.fullmatch(name.rsplit("/", 1)[-1])
    return match.group(1) if match else None


@dataclass(frozen=True)
class LabelFile:
    """One Parquet file that currently counts: ``rel`` is its path under ``labels/``."""

    uri: str
    rel: str
    size: int

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]

    @property
    def partition(self) -> str | None:
        """Its date partition: the folder it is in, else (flat layout) its run's date."""
        match = _DATE_DIR.search(self.rel)
        if match:
            return match.group(1)
        run = run_of(self.name)
        return date_of_run(run) if run else None


# --------------------------------------------------------------------------- which files count


def _rel(folder: str, uri: str) -> str:
    return uri[len(folder) :].lstrip("/").replace(os.sep, "/")


def _manifests(folder: str) -> dict[str, dict]:
    out = {}
    for info in storage.list_files(storage.join(folder, _MANIFESTS), (".json",)):
        name = info.uri.replace(os.sep, "/").rsplit("/", 1)[-1]
        try:
            out[name[: -len(".json")]] = json.loads(storage.read_bytes(info.uri))
        except storage.StorageError:  # deleted by a compaction's clean-up since the listing
            out[name[: -len(".json")]] = {"outputs": [], "replaces": [], "gone": True}
    return out


def _snapshot(output: str) -> tuple[list[LabelFile], dict[str, dict], list[LabelFile]]:
    """(files that count, committed manifests, uncommitted compaction outputs) from one stable view."""
    folder = labels_dir(output)
    for _ in range(_READ_TRIES):
        try:
            before = _manifests(folder)
            files = [
                LabelFile(info.uri, _rel(folder, info.uri), info.size)
                for info in storage.list_files(folder, (".parquet",))
                if not _rel(folder, info.uri).startswith(_MANIFESTS + "/")
            ]
            after = _manifests(folder)
        except FileNotFoundError:  # a local file deleted between its folder scan and its stat
            continue
        if before.keys() == after.keys() and not any(m.get("gone") for m in after.values()):
            break
    else:
        raise storage.StorageError(f"{folder}: compactions kept changing the folder while it was listed")
    committed = {rel for m in after.values() for rel in m["outputs"]}
    replaced = {rel for m in after.values() for rel in m["replaces"]}
    live, orphans = [], []
    for f in files:
        if f.rel in replaced:
            continue
        if _COMPACT.fullmatch(f.name) and f.rel not in committed:
            orphans.append(f)
            continue
        live.append(f)
    return live, after, orphans


def live_files(output: str) -> list[LabelFile]:
    """The label files that make up the table now, each row in exactly one of them."""
    return _snapshot(output)[0]


# --------------------------------------------------------------------------- reading


def label_schema(output: str) -> pa.Schema:
    """``LABEL_SCHEMA``, plus ``features`` typed as ``<output>/features.json`` says once a run
    stored features: files without the column (runs before, or without ``--save-features``)
    read as null there."""
    layout = read_layout(output)
    return layout.schema(LABEL_SCHEMA) if layout else LABEL_SCHEMA


def _dataset(output: str, files: list[LabelFile], schema: pa.Schema | None = None) -> ds.Dataset:
    filesystem, base = storage.arrow_filesystem(labels_dir(output))
    paths = [f"{base.rstrip('/')}/{f.rel}" for f in files]
    return ds.dataset(
        paths,
        schema=(schema or LABEL_SCHEMA).append(PARTITION.field("date")),
        format="parquet",
        filesystem=filesystem,
        partitioning=ds.partitioning(PARTITION, flavor="hive"),
        partition_base_dir=base,
    )


def _retrying(output: str, read: Callable[[ds.Dataset], pa.Table], schema: pa.Schema | None = None) -> pa.Table:
    """Run ``read`` over the current files; again if a compaction removed one meanwhile.

    A read of many files can take longer than a compaction needs to commit its next merge, so
    on a busy machine back-to-back tries could all meet a removed file; the pause between tries
    grows (to ``_READ_PAUSE_CAP_S``) so that a reader outlasts a running compaction.
    """
    last: Exception | None = None
    for attempt in range(_READ_TRIES):
        files = live_files(output)
        if not files:
            return read(None)  # type: ignore[arg-type]
        try:
            return read(_dataset(output, files, schema))
        except (FileNotFoundError, OSError) as err:  # pyarrow's "file not found" is an OSError
            last = err
        time.sleep(min(_READ_PAUSE_CAP_S, 0.01 * 2**attempt))
    raise storage.StorageError(f"{labels_dir(output)}: cannot read the labels ({' '.join(str(last).split())[:200]})")


def read_labels(
    output: str,
    latest_only: bool = True,
    filter: ds.Expression | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Label rows (all columns of ``label_schema``, ``features`` included where stored,
    unless ``columns``), optionally filtered.

    With ``latest_only`` one row per (video, version): its latest successful attempt, else (it
    never succeeded) its latest attempt, chosen by Arrow's group-by and join. ``filter`` is a ``pyarrow.dataset`` expression and may use the ``date``
    partition column (``ds.field("date") >= "2026-11-01"``), which skips whole folders.
    """
    schema = label_schema(output)
    wanted = list(columns or schema.names)
    if latest_only:
        wanted += [c for c in ("video", "version", "attempt", "error") if c not in wanted]

    def read(dataset: ds.Dataset | None) -> pa.Table:
        if dataset is None:
            return schema.append(PARTITION.field("date")).empty_table().select(wanted)
        return dataset.to_table(columns=wanted, filter=filter)

    table = _retrying(output, read, schema)
    if latest_only and table.num_rows:
        table = table.take(_latest_rows(table))
    return table.select(list(columns or schema.names))


def _latest_rows(table: pa.Table) -> pa.Array:
    """Row numbers of each (video, version)'s latest successful attempt, else its latest attempt,
    in table order: a failed later attempt (a ``--backfill-features`` run that could not read the
    video that night) never hides a good label."""
    ok = pc.is_null(table.column("error")).to_numpy(zero_copy_only=False)
    # successful attempts rank above every failed one, then the higher attempt wins
    rank = table.column("attempt").to_numpy(zero_copy_only=False).astype(np.int64) + np.where(ok, 1 << 32, 0)
    keys = pa.table([table.column("video"), table.column("version"), pa.array(rank), pa.array(np.arange(table.num_rows))],
                    names=["video", "version", "_rank", "_row"])
    best = keys.group_by(["video", "version"]).aggregate([("_rank", "max")])
    # inner: Arrow's default join is a left outer one, which keeps every attempt
    joined = keys.join(best, keys=["video", "version", "_rank"], right_keys=["video", "version", "_rank_max"], join_type="inner")
    first = joined.group_by(["video", "version"]).aggregate([("_row", "min")])  # a duplicate row counts once
    return pa.array(np.sort(first.column("_row_min").to_numpy()))


def count_rows(output: str, files: list[LabelFile], filter: ds.Expression | None = None) -> int:
    """How many rows the files hold (from their footers alone when there is no filter)."""
    return _dataset(output, files).count_rows(filter=filter) if files else 0


def scan(output: str, files: list[LabelFile], columns: list[str], filter: ds.Expression | None = None,
         schema: pa.Schema | None = None) -> Iterator[pa.RecordBatch]:
    """Stream record batches of some columns of some files: memory is one batch, not the history.
    ``schema`` (``label_schema``) is needed to read ``features``."""
    if not files:
        return
    yield from _dataset(output, files, schema).to_batches(
        columns=columns, filter=filter, batch_size=64 * 1024, batch_readahead=2, fragment_readahead=1
    )  # little read-ahead: a rebuild over 1M-row files must not hold several of them decoded


# --------------------------------------------------------------------------- compaction


@dataclass
class _Bin:
    partition: str
    files: list[LabelFile]


def _bins(files: list[LabelFile], target: int) -> list[_Bin]:
    """Greedy, per partition, in name order: files that together stay under ``target`` bytes."""
    by_part: dict[str, list[LabelFile]] = {}
    for f in files:
        by_part.setdefault(f.partition or "", []).append(f)
    out: list[_Bin] = []
    for part in sorted(by_part):
        current: list[LabelFile] = []
        size = 0
        for f in sorted(by_part[part], key=lambda f: f.rel):
            if current and size + f.size > target:
                out.append(_Bin(part, current))
                current, size = [], 0
            current.append(f)
            size += f.size
        out.append(_Bin(part, current))
    return [b for b in out if len(b.files) > 1]


def compact(output: str, target_mb: float = DEFAULT_TARGET_MB, covered_runs: set[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Merge small label files into files of about ``target_mb``, one committed bin at a time.

    Only shard files of runs in ``covered_runs`` (runs the label index already holds) are merged,
    so the index never has to look inside a compacted file to stay fresh; ``None`` merges all.
    Returns counts: files merged, files written, bytes before and after.
    """
    folder = labels_dir(output)
    live, manifests, orphans = _snapshot(output)
    _finish_committed(folder, manifests)
    for orphan in orphans:  # outputs of a compaction killed before its commit
        storage.delete(orphan.uri)
    target = int(target_mb * 1024 * 1024)

    def mergeable(f: LabelFile) -> bool:
        if f.size >= target * 0.8 or f.partition is None:
            return False
        if _COMPACT.fullmatch(f.name):
            return True
        run = run_of(f.name)
        return run is not None and (covered_runs is None or run in covered_runs)

    stats = {"files_merged": 0, "files_written": 0, "bytes_before": 0, "bytes_after": 0, "rows": 0}
    for bin_ in _bins([f for f in live if mergeable(f)], target):
        cid = uuid.uuid4().hex[:16]
        rel = f"date={bin_.partition}/compact-{cid}.parquet"
        rows, size = _write_merged(output, bin_.files, storage.join(folder, rel))
        crash_point("compact:after-output")
        manifest = {"outputs": [rel], "replaces": [f.rel for f in bin_.files], "rows": rows}
        storage.write_bytes(storage.join(folder, _MANIFESTS, f"{cid}.json"), json.dumps(manifest, indent=1).encode())
        crash_point("compact:after-manifest")
        for i, f in enumerate(bin_.files):
            storage.delete(f.uri)
            if i == 0:
                crash_point("compact:after-first-delete")
        stats["files_merged"] += len(bin_.files)
        stats["files_written"] += 1
        stats["bytes_before"] += sum(f.size for f in bin_.files)
        stats["bytes_after"] += size
        stats["rows"] += rows
    _drop_spent_manifests(output)
    log(
        f"label compact: {stats['files_merged']} files ({stats['bytes_before'] / 1e6:.1f} MB) merged into "
        f"{stats['files_written']} ({stats['bytes_after'] / 1e6:.1f} MB), {stats['rows']} rows -> {folder}"
    )
    return stats


def _write_merged(output: str, files: list[LabelFile], uri: str) -> tuple[int, int]:
    """Stream the files' rows into one Parquet file (the jobs' one writer), written atomically;
    with ``features`` wherever the output stores them (null for rows without)."""
    schema = label_schema(output)
    return write_table(uri, scan(output, files, schema.names, schema=schema), schema, row_group_size=ROW_GROUP_ROWS)



def _finish_committed(folder: str, manifests: dict[str, dict]) -> None:
    """Delete what committed compactions replaced but a kill left behind."""
    for manifest in manifests.values():
        for rel in manifest["replaces"]:
            storage.delete(storage.join(folder, rel))


def _drop_spent_manifests(output: str) -> None:
    """A manifest is spent once its outputs were merged away too and nothing it replaced is left."""
    folder = labels_dir(output)
    live, manifests, _ = _snapshot(output)
    present = {f.rel for f in live}
    for cid, manifest in manifests.items():
        if not any(rel in present for rel in manifest["outputs"]):
            if not any(storage.exists(storage.join(folder, rel)) for rel in manifest["replaces"]):
                storage.delete(storage.join(folder, _MANIFESTS, f"{cid}.json"))
