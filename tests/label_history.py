"""Synthetic label histories, written the way the label job writes them (no model, no Ray)."""

from __future__ import annotations

from collections import Counter

from jobs import label_store
from x3d import storage
from jobs.label import _write_rows

MODEL, SHA, VIEWS = "x3d_label_test", "ab" * 32, 1


def row(video: str, version: str, attempt: int, run_id: str, error: str | None = None) -> dict:
    return {
        "video": video, "version": version, "labels": [] if error else ["a", "b"], "scores": [] if error else [0.6, 0.3],
        "pred": None if error else 3, "error": error, "attempt": attempt, "etag": None, "size": 10, "mtime": 1.0,
        "model": MODEL, "checkpoint_sha256": SHA, "views": VIEWS, "run_id": run_id,
        "decode_ms": 1.0, "infer_ms": 2.0, "worker": "w",
    }


def write_run(output: str, run_id: str, rows: list[dict], shard_size: int = 256, flat: bool = False, layout=None) -> list[str]:
    """Write rows as shards of one run: ``flat`` is the layout of the code before the index;
    ``layout`` (a ``jobs.features.FeatureLayout``): the rows carry ``features``."""
    uris = []
    for shard, start in enumerate(range(0, len(rows), shard_size)):
        uri = (
            storage.join(output, "labels", f"part-{run_id}-{shard:05d}.parquet")
            if flat
            else label_store.part_uri(output, run_id, shard)
        )
        _write_rows(uri, rows[start : start + shard_size], layout)
        uris.append(uri)
    return uris


def row_counter(output: str) -> Counter:
    """(video, version, attempt) -> how many rows the table has for it: every value must be 1."""
    table = label_store.read_labels(output, latest_only=False, columns=["video", "version", "attempt"])
    return Counter(zip(*(table.column(c).to_pylist() for c in ("video", "version", "attempt"))))
