"""The jobs' output tables, defined and documented in one place.

Each column is declared once, with its type, whether it may be null and what it means; the
Arrow schemas the writers validate against and the reference page ``docs/output-schemas.md``
(``python -m jobs.schemas > docs/output-schemas.md``; a test holds the two equal) are both made
from these declarations, so the documentation cannot drift from what the files hold.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pyarrow as pa

__all__ = ["LABEL_SCHEMA", "PREDICTION_SCHEMA", "TABLES", "schema_markdown"]


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    meaning: str


def _schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type, nullable=c.nullable, metadata={"doc": c.meaning}) for c in columns])


PREDICTION_COLUMNS = (
    Column("video", pa.string(), False, "the video's path exactly as written in the annotation file"),
    Column("label", pa.int32(), True, "ground-truth class index; null for unlabeled videos"),
    Column("pred", pa.int32(), True, "predicted class (argmax of the fused scores); null on error"),
    Column("pred_name", pa.string(), True, "class name of `pred` (the label map's, else the model's); null on error"),
    Column("topk_classes", pa.list_(pa.int32()), False, "the 5 best classes, best first; empty on error"),
    Column("topk_scores", pa.list_(pa.float32()), False, "their fused scores, same order; empty on error"),
    Column("probs", pa.list_(pa.float32()), True, "the whole fused score vector; null on error and with `--no-save-probs`"),
    Column("num_views", pa.int16(), False, "clips x crops fused into the scores; 0 on error"),
    Column("error", pa.string(), True, "one line saying why the video was not scored; null if it was"),
    Column("decode_ms", pa.float32(), False, "wall time spent reading and decoding the video"),
    Column("infer_ms", pa.float32(), False, "this video's share of the model's forward time (0 on error)"),
    Column("worker", pa.string(), False, "`host:pid` of the process that scored it (or failed it)"),
)

LABEL_COLUMNS = (
    Column("video", pa.string(), False, "the video's URI as listed"),
    Column("version", pa.string(), False, "what makes two listings of the URI the same video: `etag:...` (S3) or `size:...:mtime:...`"),
    Column("labels", pa.list_(pa.string()), False, "the top-k class names, best first (those under `--min-score` dropped); empty on error"),
    Column("scores", pa.list_(pa.float32()), False, "their fused scores, same order; empty on error"),
    Column("pred", pa.int32(), True, "the best class index; null on error"),
    Column("error", pa.string(), True, "one line saying why the video was not labelled; null if it was"),
    Column("attempt", pa.int16(), False, "1 for the first try of this version, counting up on each retry"),
    Column("etag", pa.string(), True, "the S3 ETag as listed; null for files"),
    Column("size", pa.int64(), True, "bytes as listed; null when the listed path could not be read"),
    Column("mtime", pa.float64(), True, "modification time as listed, seconds since the epoch"),
    Column("model", pa.string(), False, "model preset"),
    Column("checkpoint_sha256", pa.string(), False, "sha256 of the checkpoint file"),
    Column("views", pa.int16(), False, "test views fused per video"),
    Column("run_id", pa.string(), False, "the run that wrote the row (`<UTC time>-<6 hex>`; its manifest is `manifests/<run_id>.json`)"),
    Column("decode_ms", pa.float32(), False, "wall time spent reading and decoding the video"),
    Column("infer_ms", pa.float32(), False, "this video's share of the model's forward time (0 on error)"),
    Column("worker", pa.string(), False, "`host:pid` of the process that scored it (or failed it)"),
)

PREDICTION_SCHEMA = _schema(PREDICTION_COLUMNS)
LABEL_SCHEMA = _schema(LABEL_COLUMNS)

#: (file, what one row is, columns): what the reference page documents
TABLES = (
    ("evaluate: `<output>/predictions/part-NNNNN.parquet`", "one row per video of the dataset", PREDICTION_COLUMNS),
    ("label: `<output>/labels/date=YYYY-MM-DD/*.parquet` (Hive partition column `date`: the run's UTC date)", "one row per attempt at a video version", LABEL_COLUMNS),
)


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return {"float": "float32", "double": "float64"}.get(str(t), str(t))


def schema_markdown() -> str:
    """The reference page of every output table (docs/output-schemas.md)."""
    out = [
        "# Output schemas",
        "",
        "Generated from `jobs/schemas.py` by `python -m jobs.schemas`; do not edit by hand (a test compares the two).",
        "",
    ]
    for title, row, columns in TABLES:
        out += [f"## {title}", "", f"{row[0].upper()}{row[1:]}.", "", "| column | type | null | meaning |", "|---|---|---|---|"]
        out += [f"| `{c.name}` | {_type_name(c.type)} | {'yes' if c.nullable else 'no'} | {c.meaning} |" for c in columns]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(schema_markdown())
