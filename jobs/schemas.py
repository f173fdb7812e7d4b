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

__all__ = [
    "FEATURES_COLUMN",
    "JSON_FILES",
    "LABEL_MANIFEST_KEYS",
    "LABEL_SCHEMA",
    "PREDICTION_SCHEMA",
    "RUN_KEYS",
    "SUMMARY_KEYS",
    "TABLES",
    "features_field",
    "schema_markdown",
    "with_features",
]


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    meaning: str
    type_name: str | None = None  # how the reference page writes a type fixed per output


def _schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type, nullable=c.nullable, metadata={"doc": c.meaning}) for c in columns])


@dataclass(frozen=True)
class Key:
    """One key of a JSON file a job writes: its JSON type and what it means."""

    name: str
    type: str
    meaning: str


#: keys that mean the same in every JSON file they stand in (and in the label rows' columns of
#: the same name); a file's key table names them by a string
_SHARED_KEYS = {k.name: k for k in (
    Key("model", "string", "model preset"),
    Key("views", "int", "test views fused per video"),
    Key("protocol", "string", "test protocol"),
    Key("precision", "string", "`fp32`, `bf16` or `tf32`"),
    Key("checkpoint_sha256", "string", "sha256 of the checkpoint file"),
)}


def _keys(*keys: Key | str) -> tuple[Key, ...]:
    """A JSON file's keys in order, a name standing for the shared key of that name."""
    return tuple(_SHARED_KEYS[k] if isinstance(k, str) else k for k in keys)


#: how a video was scored: the last columns of both tables, the same in each
_SCORING_COLUMNS = (
    Column("decode_ms", pa.float32(), False, "wall time spent reading and decoding the video"),
    Column("infer_ms", pa.float32(), False, "this video's share of the model's forward time (0 on error)"),
    Column("worker", pa.string(), False, "`host:pid` of the process that scored it (or failed it)"),
    Column("frames_read", pa.string(), True, "how its frames were read: `fast` (random access, where it gives MMAction2's bytes), `mmaction2` "
           "(MMAction2's own call, where random access is inexact: open GOPs, edit lists, frame counts that disagree), `sequential` "
           "(`--true-frames` there: decoded in order), `pyav` (a video decord cannot read), `rawframes`; null when it did not decode "
           "(docs/frames.md)"),
)

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
    Column("failure", pa.string(), True, "whose failure the error is: `video` (it cannot be decoded, is too short, hung in a "
           "careful retry) or `infrastructure` (storage unavailable or a failed model call, after the retries; a rerun may "
           "succeed); null if it was scored"),
    *_SCORING_COLUMNS,
)

LABEL_COLUMNS = (
    Column("video", pa.string(), False, "the video's URI as listed"),
    Column("version", pa.string(), False, "what makes two listings of the URI the same video: `etag:...` (S3) or `size:...:mtime:...`"),
    Column("labels", pa.list_(pa.string()), False, "the top-k class names, best first (those under `--min-score` dropped); empty on error"),
    Column("scores", pa.list_(pa.float32()), False, "their fused scores, same order; empty on error"),
    Column("pred", pa.int32(), True, "the best class index; null on error"),
    Column("error", pa.string(), True, "one line saying why the video was not labelled; null if it was"),
    Column("failure", pa.string(), True, "whose failure the error is: `video` or `infrastructure` (not counted against "
           "`--max-attempts`: a later run retries it); null if it was labelled"),
    Column("attempt", pa.int16(), False, "1 for the first try of this version, counting up on each retry; an "
           "`infrastructure` failure counts no try (it repeats the tries so far, 0 if none)"),
    Column("etag", pa.string(), True, "the S3 ETag as listed; null for files"),
    Column("size", pa.int64(), True, "bytes as listed; null when the listed path could not be read"),
    Column("mtime", pa.float64(), True, "modification time as listed, seconds since the epoch"),
    Column("model", pa.string(), False, _SHARED_KEYS["model"].meaning),
    Column("checkpoint_sha256", pa.string(), False, _SHARED_KEYS["checkpoint_sha256"].meaning),
    Column("views", pa.int16(), False, _SHARED_KEYS["views"].meaning),
    Column("run_id", pa.string(), False, "the run that wrote the row (`<UTC time>-<6 hex>`; its manifest is `manifests/<run_id>.json`)"),
    *_SCORING_COLUMNS,
)

PREDICTION_SCHEMA = _schema(PREDICTION_COLUMNS)
LABEL_SCHEMA = _schema(LABEL_COLUMNS)

#: The embedding column. Its element type and length are fixed per output (``--features``,
#: ``--features-dtype``, the model), so it is added to a schema by ``with_features`` and is in
#: the files only of outputs written with ``--save-features``.
FEATURES_COLUMN = Column(
    "features",
    pa.list_(pa.float16(), 432),
    True,
    "with `--save-features` only: the video's feature vector, its views averaged (`--features backbone`: the backbone's output "
    "pooled over space and time, MMAction2's FeatureHead, 432 for X3D-S/M; `pre_logits`: the head's 2048-d hidden layer); "
    "null on error and for versions labelled before features were on",
    type_name="fixed_size_list<float16 or float32>[dim]",
)


def features_field(value_type: pa.DataType, dim: int) -> pa.Field:
    """The ``features`` column for vectors of ``dim`` values of ``value_type``."""
    c = FEATURES_COLUMN
    return pa.field(c.name, pa.list_(value_type, dim), nullable=c.nullable, metadata={"doc": c.meaning})


def with_features(schema: pa.Schema, value_type: pa.DataType, dim: int) -> pa.Schema:
    """``schema`` plus the ``features`` column (last), typed for this output's vectors."""
    return schema.append(features_field(value_type, dim))


#: (file, what one row is, columns): what the reference page documents
TABLES = (
    ("evaluate: `<output>/predictions/part-NNNNN.parquet`", "one row per video of the dataset", PREDICTION_COLUMNS + (FEATURES_COLUMN,)),
    ("label: `<output>/labels/date=YYYY-MM-DD/*.parquet` (Hive partition column `date`: the run's UTC date)", "one row per attempt at a video version",
     LABEL_COLUMNS + (FEATURES_COLUMN,)),
)


_TIMES = (
    Key("videos_this_run", "int", "videos this invocation scored (a resumed or incremental run finds the others done)"),
    Key("wall_s", "float", "seconds the whole command took, from its start (imports and start-up included)"),
    Key("startup_s", "float", "of which start-up: imports, checks, weights, joining or starting Ray (sample generation excluded)"),
)
_RATE = Key("scoring_s", "float", "of which scoring: the pipeline from the cluster sized to the last row (model actors' start included)")

SUMMARY_KEYS = _keys(
    Key("dataset", "string", "the dataset's name (`custom` for one given by flags alone)"),
    "model",
    "views",
    "protocol",
    Key("precision", "string", "`fp32` (the reference), `bf16` autocast or `tf32` (TF32 convolutions and matmuls on GPUs)"),
    Key("checkpoint", "string", "the checkpoint asked for (path, URL or URI)"),
    "checkpoint_sha256",
    Key("num_videos", "int", "rows in the predictions: every video of the dataset (or of `--limit`)"),
    Key("num_ok", "int", "videos scored"),
    Key("num_failed", "int", "videos with an error row"),
    Key("failed_by_kind", "object", "`video` and `infrastructure`: the error rows by their `failure` column"),
    Key("num_labelled", "int", "videos with a ground-truth label (the accuracy's denominator with failures)"),
    Key("top1_acc", "float or null", "top-1 accuracy, a fraction (0-1) over the scored labelled videos, as MMAction2 computes it; null if none"),
    Key("top5_acc", "float or null", "top-5 accuracy, a fraction, same videos"),
    Key("mean_class_acc", "float or null", "mean per-class accuracy, a fraction, same videos"),
    Key("top1_acc_with_failures", "float or null", "top-1 with every failed labelled video counted as a miss, a fraction"),
    Key("top5_acc_with_failures", "float or null", "top-5, failures as misses, a fraction"),
    Key("mean_class_acc_with_failures", "float or null", "mean class accuracy, failures as misses, a fraction"),
    Key("published", "list", "the preset's published results measured on this dataset (its `published` tag in the registry) at this view count: "
        "`source`, `dataset`, `protocol`, `views`, `top1_acc`, `top5_acc` (fractions, like ours; null if not published); empty for other datasets"),
    *_TIMES,
    Key("generate_s", "float", "of which making the sample videos (0 once they exist)"),
    _RATE,
    Key("videos_per_s", "float or null", "`videos_this_run` / `scoring_s`"),
    Key("clips_per_s", "float or null", "clips (videos x views) this run / `scoring_s`"),
    Key("num_workers", "int", "model actors that scored"),
    Key("accelerators", "list", "their device names (`cpu` or the GPU's)"),
    Key("workers", "list", "each model actor of this run: `worker` (host:pid, the rows' `worker`), `node` (Ray node id), "
        "`device`, `gpu_ids` (the GPUs Ray granted it; empty on CPU)"),
    Key("versions", "object", "python, torch, ray, decord versions of the driver"),
    Key("output", "string", "the output folder or prefix"),
    Key("partition", "string or null", "`--partition` of the driver that wrote this summary (`i/n`; null for a run without): the accuracy and counts "
        "cover every partition's rows, `videos_this_run` and the times and rates that driver's alone"),
)

RUN_KEYS = _keys(
    Key("job", "string", "`evaluate`"),
    Key("dataset", "string", "the dataset's name"),
    "model",
    "views",
    "protocol",
    "precision",
    "checkpoint_sha256",
    Key("shard_size", "int", "videos per Parquet file"),
    Key("num_videos", "int", "videos in the run"),
    Key("videos_sha256", "string", "sha256 over the videos' paths and labels, in order"),
    Key("save_probs", "bool", "whether `probs` is kept"),
    Key("features", "object or null", "with `--save-features`: `kind`, `dtype`, `dim` of the `features` column; null without"),
    Key("frames", "string", "`mmaction2` (MMAction2's frames) or `true` (`--true-frames`); runs written before it existed read `mmaction2`"),
)

LABEL_MANIFEST_KEYS = _keys(
    Key("run_id", "string", "`<UTC time>-<6 hex>`; the label rows' `run_id`"),
    Key("input", "string", "`--input`"),
    "model",
    Key("checkpoint", "string or null", "the checkpoint asked for, else the preset's URL"),
    "checkpoint_sha256",
    "views",
    "precision",
    Key("top_k", "int", "`--top-k`"),
    Key("min_score", "float", "`--min-score`"),
    Key("since", "string or null", "`--since` as given"),
    Key("max_attempts", "int", "`--max-attempts`"),
    Key("features", "object or null", "with `--save-features`: `kind`, `dtype`, `dim` of the `features` column (also in `<output>/features.json`); null without"),
    Key("backfill_features", "bool", "`--backfill-features`: versions labelled without features counted as not done"),
    Key("listed", "int", "videos the input listed"),
    Key("older", "int", "of which older than `--since`"),
    Key("skipped", "int", "of which already labelled"),
    Key("given_up", "int", "of which never labelled and given up on after `--max-attempts` failed attempts"),
    Key("new", "int", "of which new or changed"),
    Key("retries", "int", "of which failed before and tried again"),
    Key("backfilled", "int", "of which labelled before without features, done again for them (`--backfill-features`)"),
    Key("labelled", "int", "videos labelled by this run"),
    Key("failed", "int", "videos this run wrote an error row for"),
    *_TIMES,
    _RATE,
    Key("videos_per_s", "float or null", "`videos_this_run` / `scoring_s`; what `--plan` estimates with (plus `startup_s`)"),
    Key("finished_at", "string", "ISO 8601 UTC time the run ended"),
)

#: (file, what it is, keys): the JSON files the reference page documents
JSON_FILES = (
    ("evaluate: `<output>/summary.json`", "the run's accuracy, counts, times and versions; recomputed from the Parquet files", SUMMARY_KEYS),
    ("evaluate: `<output>/run.json`", "what was asked; written once the cluster fits, checked again by `--resume`", RUN_KEYS),
    ("label: `<output>/manifests/<run_id>.json`, `<output>/manifest.json`",
     "one per run; `manifest.json` is a copy of the latest run that processed any video", LABEL_MANIFEST_KEYS),
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
        out += [f"| `{c.name}` | {c.type_name or _type_name(c.type)} | {'yes' if c.nullable else 'no'} | {c.meaning} |" for c in columns]
        out.append("")
    for title, what, keys in JSON_FILES:
        out += [f"## {title}", "", f"{what[0].upper()}{what[1:]}.", "", "| key | type | meaning |", "|---|---|---|"]
        out += [f"| `{k.name}` | {k.type} | {k.meaning} |" for k in keys]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(schema_markdown())
