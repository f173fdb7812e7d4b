"""Per-video results as Parquet shards under `<output>/predictions/`.

A job splits its videos into shards and writes one file per finished shard,
`part-00007.parquet`. Each file is built in memory and written in one atomic step, so
a file that exists is complete: resuming a job means "skip the shards `list_shards`
reports", and a crash mid-write leaves only a hidden temp file that every reader ignores.
The schema is fixed (`PREDICTION_SCHEMA`) so shards from different workers, or from a
run that was resumed with another version, concatenate without casts.

The schema (`PREDICTION_SCHEMA`) is declared with the meaning of every column in `jobs/schemas.py`
(rendered as docs/output-schemas.md).

A video that failed to decode is a row with `error` set, not a missing row, so every
video of the dataset is accounted for in the output.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from jobs.errors import JobError
from jobs.parquet_writer import write_parquet
from jobs.schemas import PREDICTION_SCHEMA
from x3d import storage

__all__ = [
    "PREDICTION_SCHEMA",
    "check_output_folder",
    "list_shards",
    "read_predictions",
    "shard_uri",
    "write_json",
    "write_shard",
    "write_text",
]

_SHARD_NAME = re.compile(r"part-(\d{5,})\.parquet")


def check_output_folder(output: str, flag: str = "--output") -> None:
    """A local output that exists must be a folder: a file there would otherwise surface later
    as ``.../run.json: File exists`` or ``Not a directory``, after start-up."""
    if storage.is_remote(output):
        return
    path = storage.local_path(output)
    if os.path.exists(path) and not os.path.isdir(path):
        raise JobError(f"{flag} {output} is a file, not a folder; name a folder (it is made if missing)")


#: An evaluate output's layout, owned here: the run's settings (``--resume`` compares them), the
#: per-video shards, and the summary recomputed from them (json for programs, md for people)
RUN_FILE, PREDICTIONS, SUMMARY_JSON, SUMMARY_MD = "run.json", "predictions", "summary.json", "summary.md"


def run_uri(output: str) -> str:
    return storage.join(output, RUN_FILE)


def predictions_uri(output: str) -> str:
    return storage.join(output, PREDICTIONS)


def summary_uris(output: str) -> tuple[str, str]:
    """summary.json and summary.md of ``output``."""
    return storage.join(output, SUMMARY_JSON), storage.join(output, SUMMARY_MD)


#: run.json keys that came after the first runs, and what a run written before them did
RUN_DEFAULTS = {"precision": "fp32", "frames": "mmaction2"}


def read_run(output: str) -> dict[str, Any] | None:
    """``output``'s run.json, its missing later keys filled as ``RUN_DEFAULTS`` says; None if
    there is none. A file that is not JSON raises ValueError."""
    uri = run_uri(output)
    if not storage.exists(uri):
        return None
    return {**RUN_DEFAULTS, **json.loads(storage.read_bytes(uri))}


def shard_uri(output: str, shard_index: int) -> str:
    """Where shard `shard_index` of a job writing to `output` lives."""
    return storage.join(predictions_uri(output), f"part-{shard_index:05d}.parquet")


def write_shard(output: str, shard_index: int, rows: Sequence[Mapping[str, Any]], schema: pa.Schema = PREDICTION_SCHEMA) -> str:
    """Write one shard's rows atomically and return its URI; missing nullable columns are null.
    ``schema``: ``PREDICTION_SCHEMA``, or it with the run's ``features`` column."""
    return write_parquet(shard_uri(output, shard_index), rows, schema)


def list_shards(output: str) -> dict[int, str]:
    """Finished shards by index. Temp files of interrupted writes are hidden and not listed."""
    prefix = predictions_uri(output)
    shards = {}
    for info in storage.list_files(prefix, suffixes=(".parquet",)):
        match = _SHARD_NAME.fullmatch(info.uri[len(prefix):].lstrip("/"))
        if match:
            shards[int(match.group(1))] = info.uri
    return dict(sorted(shards.items()))


def shards_with_errors(shards: Mapping[int, str]) -> set[int]:
    """Which of the finished ``shards`` (``list_shards``' index -> uri) hold an error row
    (``--retry-failed``): each read once, its ``error`` column only."""
    found = set()
    for index, uri in shards.items():
        data = storage.read_bytes(uri) if storage.is_remote(uri) else storage.local_path(uri)
        errors = pq.read_table(pa.BufferReader(data) if isinstance(data, bytes) else data, columns=["error"]).column("error")
        if errors.null_count < len(errors):
            found.add(index)
    return found


def read_predictions(output: str) -> pa.Table:
    """All finished shards as one table, in shard order."""
    uris = list(list_shards(output).values())
    if not uris:
        return PREDICTION_SCHEMA.empty_table()
    if storage.is_remote(output):
        # Read through storage rather than pyarrow's own S3 client, so credentials,
        # endpoints and error messages behave exactly as for every other read.
        files = [storage.read_bytes(u) for u in uris]
        schema = _with_stored_features(pq.read_schema(pa.BufferReader(files[0])))
        return pa.concat_tables([pq.read_table(pa.BufferReader(f), schema=schema) for f in files])
    paths = [storage.local_path(u) for u in uris]
    schema = _with_stored_features(pq.read_schema(paths[0]))
    return ds.dataset(paths, schema=schema, format="parquet").to_table()


def _with_stored_features(first: pa.Schema) -> pa.Schema:
    """``PREDICTION_SCHEMA``, plus ``features`` as the run stored it (every shard of a run alike:
    ``--resume`` refuses other feature flags)."""
    if "features" not in first.names:
        return PREDICTION_SCHEMA
    return PREDICTION_SCHEMA.append(first.field("features"))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays in metrics
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json(uri: str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    write_text(uri, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_text(uri: str, text: str) -> None:
    """Write UTF-8 text atomically."""
    storage.write_bytes(uri, text.encode("utf-8"))
