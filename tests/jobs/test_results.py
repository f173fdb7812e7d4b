"""jobs.results: the Parquet shards, locally and on S3, and the JSON/text helpers."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from jobs import results
from jobs.results import PREDICTION_SCHEMA
from x3d import storage

ROOT = Path(__file__).resolve().parents[2]


def scored(video: str, label: int | None = 3, pred: int = 3) -> dict:
    return {
        "video": video,
        "label": label,
        "pred": pred,
        "pred_name": f"class {pred}",
        "topk_classes": [pred, 1, 2, 0, 4],
        "topk_scores": np.array([0.5, 0.2, 0.1, 0.1, 0.05], dtype=np.float32),
        "probs": [0.1] * 10,
        "num_views": 30,
        "decode_ms": 12.5,
        "infer_ms": 3.25,
        "worker": "host:123",
        "frames_read": "fast",
    }


def failed(video: str) -> dict:
    return {
        "video": video,
        "label": 7,
        "topk_classes": [],
        "topk_scores": [],
        "num_views": 0,
        "error": "decode failed: moov atom not found",
        "failure": "video",
        "decode_ms": 1.0,
        "infer_ms": 0.0,
        "worker": "host:123",
        "frames_read": None,
    }


def test_schema_types():
    types = {f.name: (str(f.type), f.nullable) for f in PREDICTION_SCHEMA}
    assert types == {
        "video": ("string", False),
        "label": ("int32", True),
        "pred": ("int32", True),
        "pred_name": ("string", True),
        "topk_classes": ("list<item: int32>", False),
        "topk_scores": ("list<item: float>", False),
        "probs": ("list<item: float>", True),
        "num_views": ("int16", False),
        "error": ("string", True),
        "failure": ("string", True),
        "decode_ms": ("float", False),
        "infer_ms": ("float", False),
        "worker": ("string", False),
        "frames_read": ("string", True),
    }


def test_the_schema_page_is_generated_from_the_schemas():
    """docs/output-schemas.md (linked from the README) is what ``python -m jobs.schemas`` prints,
    and every column of both tables is documented there with its meaning."""
    from jobs.schemas import LABEL_SCHEMA, schema_markdown

    page = (ROOT / "docs" / "output-schemas.md").read_text()
    assert page == schema_markdown(), "regenerate: python -m jobs.schemas > docs/output-schemas.md"
    for schema in (PREDICTION_SCHEMA, LABEL_SCHEMA):
        for field in schema:
            assert f"| `{field.name}` |" in page
            assert field.metadata and field.metadata[b"doc"], field.name
    readme = (ROOT / "README.md").read_text()
    assert "docs/output-schemas.md" in readme and "| `pred_name`" not in readme  # linked, not copied


def test_shard_uri():
    assert results.shard_uri("s3://bkt/run1", 7) == "s3://bkt/run1/predictions/part-00007.parquet"
    assert results.shard_uri("s3://bkt/run1/", 123456) == "s3://bkt/run1/predictions/part-123456.parquet"
    assert results.shard_uri("runs/a", 0) == os.path.join("runs/a", "predictions", "part-00000.parquet")


def test_local_write_list_and_read(tmp_path: Path):
    out = str(tmp_path / "run")
    uri1 = results.write_shard(out, 1, [scored("b.mp4"), failed("c.mp4")])
    uri0 = results.write_shard(out, 0, [scored("a.mp4", label=None, pred=5)])
    results.write_shard(out, 2, [])  # an empty shard is still a finished shard
    assert results.list_shards(out) == {0: uri0, 1: uri1, 2: results.shard_uri(out, 2)}

    table = results.read_predictions(out)
    assert table.schema == PREDICTION_SCHEMA
    rows = table.to_pylist()
    assert [r["video"] for r in rows] == ["a.mp4", "b.mp4", "c.mp4"]  # shard order
    assert rows[0]["label"] is None and rows[0]["pred"] == 5
    assert rows[1]["topk_scores"] == pytest.approx([0.5, 0.2, 0.1, 0.1, 0.05])
    assert rows[1]["num_views"] == 30
    assert rows[2] == {
        **failed("c.mp4"),
        "pred": None,
        "pred_name": None,
        "probs": None,
    }
    # Any Parquet reader sees the same thing.
    assert ds.dataset(str(tmp_path / "run" / "predictions")).to_table().num_rows == 3


def test_listing_ignores_foreign_and_temp_files(tmp_path: Path):
    out = tmp_path / "run"
    results.write_shard(str(out), 3, [scored("a.mp4")])
    for name in (".part-00004.parquet.0123abcd.tmp", "part-5.parquet", "notes.parquet", "part-00006.json"):
        (out / "predictions" / name).write_bytes(b"junk")
    (out / "predictions" / "nested").mkdir()
    (out / "predictions" / "nested" / "part-00008.parquet").write_bytes(b"junk")
    assert list(results.list_shards(str(out))) == [3]
    assert results.read_predictions(str(out)).num_rows == 1


def test_nothing_written_yet(tmp_path: Path):
    assert results.list_shards(str(tmp_path / "run")) == {}
    empty = results.read_predictions(str(tmp_path / "run"))
    assert empty.num_rows == 0 and empty.schema == PREDICTION_SCHEMA


def test_rows_are_checked_before_writing(tmp_path: Path):
    missing_worker = {k: v for k, v in scored("a.mp4").items() if k != "worker"}
    with pytest.raises(ValueError, match=r"^row 1: missing value for worker$"):
        results.write_shard(str(tmp_path), 0, [scored("ok.mp4"), missing_worker])
    with pytest.raises(ValueError, match=r"^row 0: unknown column\(s\) top1$"):
        results.write_shard(str(tmp_path), 0, [{**scored("a.mp4"), "top1": 1}])
    assert results.list_shards(str(tmp_path)) == {}


def test_parquet_on_s3_round_trip(s3_env: str):
    out = f"s3://{s3_env}/runs/r1"
    results.write_shard(out, 0, [scored("a.mp4"), failed("b.mp4")])
    results.write_shard(out, 1, [scored("c.mp4", pred=1)])
    assert results.list_shards(out) == {0: f"{out}/predictions/part-00000.parquet", 1: f"{out}/predictions/part-00001.parquet"}

    table = results.read_predictions(out)
    assert table.schema == PREDICTION_SCHEMA
    assert table.column("video").to_pylist() == ["a.mp4", "b.mp4", "c.mp4"]
    assert table.column("error").to_pylist() == [None, "decode failed: moov atom not found", None]

    raw = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/predictions/part-00001.parquet")))
    assert raw.schema.equals(PREDICTION_SCHEMA)
    assert raw.column("pred").to_pylist() == [1]


def test_json_and_text_helpers(tmp_path: Path, s3_env: str):
    metrics = {"acc/top1": np.float32(0.75), "counts": np.array([1, 2]), "name": "k400_val"}
    for base in (str(tmp_path), f"s3://{s3_env}/run"):
        results.write_json(storage.join(base, "metrics.json"), metrics)
        assert json.loads(storage.read_bytes(storage.join(base, "metrics.json"))) == {
            "acc/top1": 0.75,
            "counts": [1, 2],
            "name": "k400_val",
        }
        results.write_text(storage.join(base, "summary.md"), "# Résumé\n")
        assert storage.read_bytes(storage.join(base, "summary.md")).decode("utf-8") == "# Résumé\n"
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        results.write_json(str(tmp_path / "bad.json"), {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_table_round_trips_types_exactly(tmp_path: Path):
    results.write_shard(str(tmp_path), 0, [scored("a.mp4")])
    table = pq.read_table(results.shard_uri(str(tmp_path), 0))
    assert table.column("num_views").type == pa.int16()
    assert table.column("topk_classes").type == pa.list_(pa.int32())
