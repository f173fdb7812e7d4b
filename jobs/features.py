"""The feature vectors the jobs store beside their scores (``--save-features``), and their layout.

The model actors compute a video's vector in the forward that scores it (``x3d.features``);
here is what the jobs do with it: the flags, the column's Arrow type (a fixed-size list, so
DuckDB casts it to ``FLOAT[dim]`` and numpy reads it as one ``(rows, dim)`` block) and the
one layout an output keeps. Every file of an output must hold the same type in ``features``
or the files no longer read as one table, so the label job records its layout in
``<output>/features.json`` on its first run with features and refuses another one later; an
evaluate run records it in ``run.json``, which ``--resume`` already holds to.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

import x3d
from jobs.cli import default
from jobs.errors import JobError
from jobs.schemas import with_features
from x3d import storage

__all__ = ["FEATURE_DTYPES", "FeatureLayout", "FeatureOptions", "claim_layout", "feature_layout", "feature_matrix", "read_layout", "vector_values"]

#: what ``--features-dtype`` may be: float16 halves the bytes (what it costs: docs/embeddings.md)
FEATURE_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
_LAYOUT_FILE = "features.json"


@dataclass(kw_only=True)
class FeatureOptions:
    """The flags of the jobs that can store embeddings (evaluate, label)."""

    save_features: bool = default("save_features")  # store each video's embedding beside its scores
    feature_kind: str = default("feature_kind")  # --features: a kind of x3d.features.FEATURE_KINDS
    features_dtype: str = default("features_dtype")  # a key of FEATURE_DTYPES
    backfill_features: bool = False  # label only: versions labelled without features count as not done


@dataclass(frozen=True)
class FeatureLayout:
    """What an output's ``features`` column holds: which vector, stored as what, how long."""

    kind: str
    dtype: str
    dim: int

    @property
    def value_type(self) -> pa.DataType:
        return FEATURE_DTYPES[self.dtype]

    @property
    def bytes_per_video(self) -> int:
        """Bytes one vector takes in memory and, as half or single floats compress little, about on disk."""
        return self.dim * np.dtype(self.dtype).itemsize

    def schema(self, base: pa.Schema) -> pa.Schema:
        return with_features(base, self.value_type, self.dim)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_layout(opts: FeatureOptions, preset: x3d.Preset) -> FeatureLayout | None:
    """The layout the flags ask for (None without ``--save-features``); a bad flag is a JobError."""
    if opts.backfill_features and not opts.save_features:
        raise JobError("--backfill-features needs --save-features")
    if not opts.save_features:
        return None
    try:
        x3d.features.check_feature_kind(opts.feature_kind)
    except ValueError as exc:
        raise JobError(f"--{exc}") from None
    if opts.features_dtype not in FEATURE_DTYPES:
        raise JobError(f"--features-dtype must be one of {', '.join(FEATURE_DTYPES)}, got {opts.features_dtype!r}")
    return FeatureLayout(opts.feature_kind, opts.features_dtype, x3d.feature_dim(preset, opts.feature_kind))


def vector_values(embedding: np.ndarray | None, layout: FeatureLayout | None) -> np.ndarray | None:
    """A row's ``features`` value: the embedding in the layout's dtype (None stays None)."""
    if layout is None or embedding is None:
        return None
    values = np.asarray(embedding, dtype=np.float32).astype(layout.dtype)
    if values.shape != (layout.dim,):
        raise ValueError(f"embedding of shape {values.shape}, expected ({layout.dim},)")
    return values


def read_layout(output: str) -> FeatureLayout | None:
    """The layout of a label output's ``features`` column; None if no run stored features."""
    uri = storage.join(output, _LAYOUT_FILE)
    if not storage.exists(uri):
        return None
    data = json.loads(storage.read_bytes(uri))
    return FeatureLayout(data["kind"], data["dtype"], int(data["dim"]))


def claim_layout(output: str, layout: FeatureLayout, write: bool = True) -> None:
    """Make ``layout`` the output's (``write``: record it if none is), or refuse a different one."""
    current = read_layout(output)
    if current is None:
        if write:
            storage.write_bytes(storage.join(output, _LAYOUT_FILE), json.dumps(layout.as_dict(), indent=1).encode())
        return
    if current != layout:
        raise JobError(
            f"{output} stores {_describe(current)} features; this run asks for {_describe(layout)} "
            "(pass the same --features and --features-dtype, or use a new --output)"
        )


def _describe(layout: FeatureLayout) -> str:
    return f"{layout.kind} {layout.dtype}[{layout.dim}]"


def feature_matrix(table: pa.Table, column: str = "features") -> np.ndarray:
    """The non-null vectors of a ``features`` column as one ``(rows, dim)`` array (no copy per row)."""
    data = table.column(column).drop_null().combine_chunks()
    if len(data) == 0:
        return np.zeros((0, getattr(data.type, "list_size", 0)), np.float32)
    return data.flatten().to_numpy(zero_copy_only=False).reshape(len(data), data.type.list_size)

