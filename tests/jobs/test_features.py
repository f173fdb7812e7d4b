"""Feature vectors beside the labels and predictions (``--save-features``).

Without Ray: the layout the flags ask for and the one an output keeps, the label index's
backfill rule (``--backfill-features``) on real Parquet histories (index saved and rebuilt,
compaction), the evaluate rows. With a real local Ray: a label run whose rows carry the
vectors the library gives, whose rerun adds nothing, and the DuckDB nearest-neighbour query
of docs/embeddings.md over its table; then features turned on for an output labelled without
them, and the backfill.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import x3d
from cluster.config import VideoOutcome
from jobs import label_state, label_store, results
from jobs.errors import JobError
from jobs.evaluate import outcome_row
from jobs.features import FeatureLayout, FeatureOptions, claim_layout, feature_layout, feature_matrix, read_layout, vector_values
from jobs.label import _History, plan_label, read_labels, run_label
from jobs.schemas import PREDICTION_SCHEMA
from tests.jobs.labeljob import LABEL_TEST, label_config, write_label_videos
from tests.label_history import MODEL, SHA, VIEWS, row, write_run
from worker.spec import DecodeResult
from worker.items import VideoItem
from x3d import storage

LAYOUT = FeatureLayout("backbone", "float16", 8)
RUN_A, RUN_B = "20261101T010000Z-aaaaaa", "20261102T010000Z-bbbbbb"


def _vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=LAYOUT.dim).astype(np.float32)


def _featured(video: str, version: str, attempt: int, run_id: str, error: str | None = None, seed: int = 0) -> dict:
    out = row(video, version, attempt, run_id, error=error)
    out["features"] = None if error else vector_values(_vector(seed), LAYOUT)
    return out


# ====================================================================== layout (no Ray)


def test_layout_from_the_flags():
    s, m = x3d.get_preset("x3d_s"), x3d.get_preset("x3d_m")
    assert feature_layout(FeatureOptions(), s) is None  # off by default
    on = feature_layout(FeatureOptions(save_features=True), s)
    assert on == FeatureLayout("backbone", "float16", 432) and on.bytes_per_video == 864
    wide = feature_layout(FeatureOptions(save_features=True, feature_kind="pre_logits", features_dtype="float32"), m)
    assert wide == FeatureLayout("pre_logits", "float32", 2048) and wide.bytes_per_video == 8192
    assert wide.schema(PREDICTION_SCHEMA).field("features").type == pa.list_(pa.float32(), 2048)
    with pytest.raises(JobError, match="--backfill-features needs --save-features"):
        feature_layout(FeatureOptions(backfill_features=True), s)
    with pytest.raises(JobError, match="--features-dtype must be one of float16, float32"):
        feature_layout(FeatureOptions(save_features=True, features_dtype="bfloat16"), s)
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(432,\)"):
        vector_values(np.zeros(3), on)


def test_an_output_keeps_one_layout(tmp_path):
    out = str(tmp_path / "out")
    claim_layout(out, LAYOUT, write=False)  # a dry run records nothing
    assert read_layout(out) is None
    claim_layout(out, LAYOUT)
    claim_layout(out, LAYOUT)  # the same again: fine
    assert read_layout(out) == LAYOUT
    with pytest.raises(JobError, match=r"stores backbone float16\[8\] features; this run asks for backbone float32\[8\]"):
        claim_layout(out, FeatureLayout("backbone", "float32", 8))


# ====================================================================== backfill rule and storage (no Ray)


def _infos(videos: list[str]) -> list[storage.ObjectInfo]:
    return [storage.ObjectInfo(uri=v, size=10, mtime=1.0, etag=None) for v in videos]


def _decisions(index: label_state.LabelIndex, backfill: bool, listed: list[tuple[str, str]]) -> dict[str, tuple[bool, int, bool]]:
    history = _History(index, label_state.Scope(MODEL, SHA, VIEWS), backfill)
    answers = list(history.needs_work(_infos([v for v, _ in listed]), [ver for _, ver in listed], max_attempts=3))
    given_up = {f"{v}@{ver}" for (v, ver), (todo, _, _, labelled) in zip(listed, answers) if not todo and not labelled}
    assert given_up == {"bad@v1"}, given_up  # never labelled, out of attempts: given up, not "already labelled"
    return {f"{v}@{ver}": a[:3] for (v, ver), a in zip(listed, answers)}


def _label_history(out: str) -> None:
    """Run A without features; then features on (run B): new videos, a changed one, a failure."""
    write_run(out, RUN_A, [row(f"a{i}", "v1", 1, RUN_A) for i in range(3)]
              + [row("bad", "v1", k, RUN_A, error="decode failed") for k in (1, 2, 3)])
    claim_layout(out, LAYOUT)
    write_run(out, RUN_B, [_featured("b0", "v1", 1, RUN_B, seed=1), _featured("b1", "v1", 1, RUN_B, seed=2),
                           _featured("a2", "v2", 1, RUN_B, seed=3), _featured("flaky", "v1", 1, RUN_B, error="timeout")],
              shard_size=3, layout=LAYOUT)


LISTED = [("a0", "v1"), ("a1", "v1"), ("a2", "v1"), ("a2", "v2"), ("b0", "v1"), ("b1", "v1"), ("bad", "v1"), ("flaky", "v1"), ("new", "v1")]
#: (process?, attempts so far, a backfill?) per listed version
PLAIN = {"a0@v1": (False, 1, False), "a1@v1": (False, 1, False), "a2@v1": (False, 1, False), "a2@v2": (False, 1, False),
         "b0@v1": (False, 1, False), "b1@v1": (False, 1, False), "bad@v1": (False, 3, False), "flaky@v1": (True, 1, False),
         "new@v1": (True, 0, False)}
BACKFILL = {**PLAIN, "a0@v1": (True, 1, True), "a1@v1": (True, 1, True), "a2@v1": (True, 1, True)}


def test_backfill_counts_versions_without_features_as_not_done(tmp_path):
    out = str(tmp_path / "out")
    _label_history(out)
    index = label_state.load_index(out, log=lambda m: None)
    assert _decisions(index, False, LISTED) == PLAIN  # features on, no backfill: only what is new or failed
    assert _decisions(index, True, LISTED) == BACKFILL  # a version given up on stays given up

    # The index is derived state: rebuilt from the label files alone, it decides the same.
    shutil.rmtree(Path(out) / "label_index")
    rebuilt = label_state.load_index(out, log=lambda m: None)
    assert _decisions(rebuilt, False, LISTED) == PLAIN
    assert _decisions(rebuilt, True, LISTED) == BACKFILL

    # The rows a backfill writes (with features) make those versions done for both rules.
    RUN_C = "20261103T010000Z-cccccc"
    write_run(out, RUN_C, [_featured(f"a{i}", "v1", 2, RUN_C, seed=10 + i) for i in range(3)], layout=LAYOUT)
    again = label_state.load_index(out, log=lambda m: None)
    done = {k: (False, 2, False) for k in ("a0@v1", "a1@v1", "a2@v1")}
    assert _decisions(again, True, LISTED) == {**PLAIN, **done}


def test_read_labels_and_compaction_keep_the_vectors(tmp_path):
    out = str(tmp_path / "out")
    _label_history(out)
    table = read_labels(out)
    assert table.schema.field("features").type == pa.list_(pa.float16(), LAYOUT.dim)
    rows = {(r["video"], r["version"]): r["features"] for r in table.to_pylist()}
    assert rows[("a0", "v1")] is None and rows[("flaky", "v1")] is None  # before features / failed
    assert [r["attempt"] for r in table.to_pylist() if r["video"] == "bad"] == [3]  # the latest of three, in one file
    np.testing.assert_allclose(np.asarray(rows[("b1", "v1")], np.float32), _vector(2), rtol=1e-3, atol=1e-3)
    before = feature_matrix(table)
    assert before.shape == (3, LAYOUT.dim) and before.dtype == np.float16

    stats = label_store.compact(out, log=lambda m: None)
    assert stats["files_merged"] >= 2
    after = read_labels(out)
    assert sorted(after.to_pylist(), key=lambda r: (r["video"], r["version"])) == sorted(table.to_pylist(), key=lambda r: (r["video"], r["version"]))
    # without features.json an output reads as before: no features column at all
    plain = str(tmp_path / "plain")
    write_run(plain, RUN_A, [row("x", "v1", 1, RUN_A)])
    assert "features" not in read_labels(plain).schema.names


def test_evaluate_rows_carry_the_vector(tmp_path):
    out = str(tmp_path / "run")
    layout = FeatureLayout("backbone", "float32", 4)
    item = VideoItem(key="a.mp4", uri="a.mp4", label=1)
    ok = VideoOutcome(0, 0, item, DecodeResult(None, num_views=3), np.full(400, 1 / 400, np.float32), None,
                      embedding=np.arange(4, dtype=np.float32))
    failed = VideoOutcome(0, 1, VideoItem(key="b.mp4", uri="b.mp4", label=2), DecodeResult("b.mp4: cannot decode"), None,
                          "b.mp4: cannot decode")
    classes = [str(i) for i in range(400)]
    rows = [outcome_row(o, classes, save_probs=False, layout=layout) for o in (ok, failed)]
    results.write_shard(out, 0, rows, layout.schema(PREDICTION_SCHEMA))
    table = results.read_predictions(out)
    assert table.schema == layout.schema(PREDICTION_SCHEMA)
    assert table.column("features").to_pylist() == [[0.0, 1.0, 2.0, 3.0], None]
    assert "features" not in outcome_row(ok, classes, save_probs=False)  # off: the row is as before


# ====================================================================== real label runs (Ray)


def _library_vectors(checkpoint: str, paths: list[Path]) -> dict[str, np.ndarray]:
    model = x3d.load_model("x3d_label_test", checkpoint=checkpoint)
    return {p.name: x3d.extract_features(model, str(p), views=1) for p in paths}


def nearest_query_from_the_docs(labels: Path, dim: int) -> str:
    """docs/embeddings.md's nearest-neighbour query, itself: its first ``sql`` block, pointed at
    ``labels`` with the model's width and the video as a parameter (so the page cannot drift)."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "embeddings.md").read_text()
    sql = page.split("```sql\n", 1)[1].split("```", 1)[0]
    sql = sql.replace("'labels/**/*.parquet'", f"'{labels}/**/*.parquet'")  # the same for every width (dim)
    sql, count = re.subn(r"WHERE a\.video = '[^']*'", "WHERE a.video = $query", sql)
    assert count == 1 and str(labels) in sql, "docs/embeddings.md's query changed shape: update this test"
    return sql


@pytest.mark.slow
def test_label_run_saves_features_and_a_rerun_adds_nothing(tmp_path, ray_local, checkpoint):
    duckdb = pytest.importorskip("duckdb")
    videos = tmp_path / "videos"
    paths = write_label_videos(videos, 4)
    shutil.copy(paths[0], videos / "copy_of_clip_00.mp4")  # a duplicate under another name
    out = str(tmp_path / "labels")
    dim = x3d.feature_dim(LABEL_TEST)

    first = run_label(label_config(str(videos), out, checkpoint, save_features=True))
    assert (first["labelled"], first["failed"]) == (5, 0)
    assert first["features"] == {"kind": "backbone", "dtype": "float16", "dim": dim} and not first["backfill_features"]
    table = read_labels(out)
    assert table.schema.field("features").type == pa.list_(pa.float16(), dim)
    expected = _library_vectors(checkpoint, paths)
    for r in table.to_pylist():
        name = Path(r["video"]).name
        vector = np.asarray(r["features"], np.float32)
        reference = expected["clip_00.mp4" if name.startswith("copy_of") else name]
        assert vector.shape == (dim,)
        np.testing.assert_allclose(vector, reference, rtol=2e-3, atol=2e-3 * np.abs(reference).max())  # float16 storage
    rows_before = read_labels(out, latest_only=False).num_rows

    second = run_label(label_config(str(videos), out, checkpoint, save_features=True))
    assert (second["skipped"], second["new"], second["labelled"], second["failed"]) == (5, 0, 0, 0)
    assert read_labels(out, latest_only=False).num_rows == rows_before
    plan = plan_label(label_config(str(videos), out, checkpoint, save_features=True))
    assert (plan["to_process"], plan["features_bytes"]) == (0, 0)
    write_label_videos(tmp_path / "more", 1, start_seed=50)[0].rename(videos / "later.mp4")
    plan = plan_label(label_config(str(videos), out, checkpoint, save_features=True))
    assert (plan["to_process"], plan["features_bytes"]) == (1, dim * 2)

    # docs/embeddings.md's nearest-neighbour query: the copy is the nearest, at cosine ~1
    query = str(paths[0])
    found = duckdb.execute(nearest_query_from_the_docs(Path(out) / "labels", dim), {"query": query}).fetchall()
    assert len(found) == 4  # LIMIT 10 over the other four videos
    assert Path(found[0][0]).name == "copy_of_clip_00.mp4" and found[0][1] > 0.9999
    assert found[1][1] < found[0][1]
    # and numpy: one (videos, dim) block
    matrix = feature_matrix(read_labels(out, columns=["video", "features"]))
    assert matrix.shape == (5, dim)


@pytest.mark.slow
def test_features_turned_on_label_only_new_versions_until_a_backfill(tmp_path, ray_local, checkpoint):
    videos = tmp_path / "videos"
    write_label_videos(videos, 3, start_seed=20)
    out = str(tmp_path / "labels")
    assert run_label(label_config(str(videos), out, checkpoint))["labelled"] == 3  # no features

    write_label_videos(tmp_path / "more", 1, start_seed=30)[0].rename(videos / "new.mp4")
    on = run_label(label_config(str(videos), out, checkpoint, save_features=True))
    assert (on["skipped"], on["new"], on["labelled"]) == (3, 1, 1)
    with_vector = {Path(r["video"]).name for r in read_labels(out).to_pylist() if r["features"] is not None}
    assert with_vector == {"new.mp4"}

    with pytest.raises(JobError, match="use a new --output"):
        run_label(label_config(str(videos), out, checkpoint, save_features=True, features_dtype="float32"))
    plan = plan_label(label_config(str(videos), out, checkpoint, save_features=True, backfill_features=True))
    assert (plan["backfilled"], plan["to_process"], plan["features_bytes"]) == (3, 3, 3 * x3d.feature_dim(LABEL_TEST) * 2)
    backfill = run_label(label_config(str(videos), out, checkpoint, save_features=True, backfill_features=True))
    assert (backfill["skipped"], backfill["backfilled"], backfill["labelled"]) == (1, 3, 3)
    latest = read_labels(out).to_pylist()
    assert len(latest) == 4 and all(r["features"] is not None for r in latest)
    assert sorted(r["attempt"] for r in latest) == [1, 2, 2, 2]  # the backfilled versions' second rows
    again = run_label(label_config(str(videos), out, checkpoint, save_features=True, backfill_features=True))
    assert (again["skipped"], again["labelled"]) == (4, 0)


@pytest.mark.slow
def test_evaluate_run_saves_pre_logits_and_resume_holds_the_layout(tmp_path, ray_local, checkpoint):
    from jobs.datasets import resolve_dataset
    from jobs.evaluate import EvaluateConfig, run_evaluate

    paths = write_label_videos(tmp_path / "videos", 3, start_seed=40)
    ann = tmp_path / "val.txt"
    ann.write_text("".join(f"{p.name} {i}\n" for i, p in enumerate(paths)))
    out = str(tmp_path / "run")

    def config(**kw) -> EvaluateConfig:
        spec = resolve_dataset(None, data_root=str(tmp_path / "videos"), ann_file=str(ann))
        return EvaluateConfig(dataset=spec, model="x3d_label_test", checkpoint=checkpoint, views=1, output=out, quiet=True,
                              shard_size=2, save_features=True, feature_kind="pre_logits", features_dtype="float32", **kw)

    summary = run_evaluate(config())
    assert summary["num_ok"] == 3
    table = results.read_predictions(out)
    hidden = LABEL_TEST.arch.head_hidden
    assert table.schema.field("features").type == pa.list_(pa.float32(), hidden)
    model = x3d.load_model("x3d_label_test", checkpoint=checkpoint)
    for video, vector in zip(table.column("video").to_pylist(), table.column("features").to_pylist()):
        expected = x3d.extract_features(model, str(tmp_path / "videos" / video), views=1, kind="pre_logits")
        np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-5)  # float32, BatchNorm folded in the actor
    with pytest.raises(JobError, match="differs from the one in .*: --save-features: --save-features --features pre_logits --features-dtype float16, 16 values here, .*float32, 16 values in the run"):
        run_evaluate(replace(config(resume=True), features_dtype="float16"))


def latest_label_query_from_the_docs(labels: Path) -> str:
    """docs/labeling.md's "latest label of each video" query, itself, pointed at ``labels``."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "labeling.md").read_text()
    sql = page.split("```sql\n", 1)[1].split("```", 1)[0]
    assert sql.count("'labels/**/*.parquet'") == 1, "docs/labeling.md's query changed shape: update this test"
    return sql.replace("'labels/**/*.parquet'", f"'{labels}/**/*.parquet'")


@pytest.mark.slow
def test_a_failed_backfill_never_hides_a_good_label(tmp_path, ray_local, checkpoint):
    """A backfill that cannot read a video that night writes a newer, failed attempt; the good
    label stays the one ``read_labels`` (and the docs' DuckDB query) return (issue 30)."""
    videos = tmp_path / "videos"
    (path,) = write_label_videos(videos, 1, start_seed=60)
    out = str(tmp_path / "labels")
    assert run_label(label_config(str(videos), out, checkpoint))["labelled"] == 1  # no features
    good = read_labels(out).to_pylist()
    # The same version (size and mtime) that no longer decodes: what a bad night looks like to the job.
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    backfill = run_label(label_config(str(videos), out, checkpoint, save_features=True, backfill_features=True))
    assert (backfill["backfilled"], backfill["labelled"], backfill["failed"]) == (1, 0, 1)
    every = read_labels(out, latest_only=False).to_pylist()
    assert sorted((r["attempt"], r["error"] is None) for r in every) == [(1, True), (2, False)]
    latest = read_labels(out).to_pylist()
    assert len(latest) == 1 and latest[0]["error"] is None and latest[0]["attempt"] == 1
    assert latest[0]["labels"] == good[0]["labels"] and latest[0]["run_id"] == good[0]["run_id"]
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(latest_label_query_from_the_docs(Path(out) / "labels")).fetchall()
    columns = [d[0] for d in duckdb.sql(latest_label_query_from_the_docs(Path(out) / "labels")).description]
    assert len(rows) == 1 and dict(zip(columns, rows[0]))["error"] is None and dict(zip(columns, rows[0]))["attempt"] == 1
