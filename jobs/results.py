"""Per-video results as Parquet shards under `<output>/predictions/`.

A job splits its videos into shards and writes one file per finished shard,
`part-00007.parquet`. Each file is built in memory and written in one atomic step, so
a file that exists is complete: resuming a job means "skip the shards `list_shards`
reports", and a crash mid-write leaves only a hidden temp file that every reader ignores.
The schema is fixed (`PREDICTION_SCHEMA`) so shards from different workers, or from a
run that was resumed with another version, concatenate without casts.

Schema of `predictions/part-NNNNN.parquet`, one row per video:

| column         | type           | null | meaning                                                      |
|----------------|----------------|------|--------------------------------------------------------------|
| `video`        | string         | no   | the video's path exactly as written in the annotation file   |
| `label`        | int32          | yes  | ground-truth class index; null for unlabeled videos          |
| `pred`         | int32          | yes  | predicted class (argmax of the fused scores); null on error  |
| `pred_name`    | string         | yes  | label-map name of `pred`; null without a label map or on error |
| `topk_classes` | list<int32>    | no   | the k best classes, best first; empty on error               |
| `topk_scores`  | list<float32>  | no   | their fused scores, same order; empty on error               |
| `probs`        | list<float32>  | yes  | the whole fused score vector; null unless the job keeps it   |
| `num_views`    | int16          | no   | clips x crops fused into the scores; 0 on error              |
| `error`        | string         | yes  | one line saying why the video was not scored; null if it was |
| `decode_ms`    | float32        | no   | wall time spent reading and decoding the video               |
| `infer_ms`     | float32        | no   | wall time spent in the model for this video                  |
| `worker`       | string         | no   | which process scored it (e.g. host:pid or a Ray actor id)     |

A video that failed to decode is a row with `error` set, not a missing row, so every
video of the dataset is accounted for in the output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from jobs import storage

__all__ = [
    "PREDICTION_SCHEMA",
    "list_shards",
    "read_predictions",
    "shard_uri",
    "write_json",
    "write_shard",
    "write_text",
]

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("video", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("pred", pa.int32()),
        pa.field("pred_name", pa.string()),
        pa.field("topk_classes", pa.list_(pa.int32()), nullable=False),
        pa.field("topk_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("probs", pa.list_(pa.float32())),
        pa.field("num_views", pa.int16(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("decode_ms", pa.float32(), nullable=False),
        pa.field("infer_ms", pa.float32(), nullable=False),
        pa.field("worker", pa.string(), nullable=False),
    ]
)

_COLUMNS = frozenset(PREDICTION_SCHEMA.names)
_REQUIRED = tuple(f.name for f in PREDICTION_SCHEMA if not f.nullable)
_SHARD_NAME = re.compile(r"part-(\d{5,})\.parquet")


def shard_uri(output: str, shard_index: int) -> str:
    """Where shard `shard_index` of a job writing to `output` lives."""
    return storage.join(output, "predictions", f"part-{shard_index:05d}.parquet")


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    """Catch a misspelt or forgotten column here rather than as a confusing Arrow error."""
    for i, row in enumerate(rows):
        unknown = set(row) - _COLUMNS
        if unknown:
            raise ValueError(f"row {i}: unknown column(s) {', '.join(sorted(unknown))}")
        missing = [name for name in _REQUIRED if row.get(name) is None]
        if missing:
            raise ValueError(f"row {i}: missing value for {', '.join(missing)}")


def write_shard(output: str, shard_index: int, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write one shard's rows atomically and return its URI; missing nullable columns are null."""
    _check_rows(rows)
    table = pa.Table.from_pylist(list(rows), schema=PREDICTION_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    uri = shard_uri(output, shard_index)
    storage.write_bytes(uri, sink.getvalue().to_pybytes())
    return uri


def list_shards(output: str) -> dict[int, str]:
    """Finished shards by index. Temp files of interrupted writes are hidden and not listed."""
    prefix = storage.join(output, "predictions")
    shards = {}
    for info in storage.list_files(prefix, suffixes=(".parquet",)):
        match = _SHARD_NAME.fullmatch(info.uri[len(prefix):].lstrip("/"))
        if match:
            shards[int(match.group(1))] = info.uri
    return dict(sorted(shards.items()))


def read_predictions(output: str) -> pa.Table:
    """All finished shards as one table, in shard order."""
    uris = list(list_shards(output).values())
    if not uris:
        return PREDICTION_SCHEMA.empty_table()
    if storage.is_remote(output):
        # Read through storage rather than pyarrow's own S3 client, so credentials,
        # endpoints and error messages behave exactly as for every other read.
        tables = [pq.read_table(pa.BufferReader(storage.read_bytes(u)), schema=PREDICTION_SCHEMA) for u in uris]
        return pa.concat_tables(tables)
    paths = [storage.local_path(u) for u in uris]
    return ds.dataset(paths, schema=PREDICTION_SCHEMA, format="parquet").to_table()


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
