"""Every query in docs/ runs, as written, for every preset the docs name (issue 30).

docs/embeddings.md's DuckDB query used to cast the vectors to ``FLOAT[432]`` and failed on
x3d_tiny, the model that runs offline (``Cannot cast list with length 288 to array with length
432``), and no page said how long each preset's vector is. Here:

* the page's table of vector widths is held to ``x3d.feature_dim`` for every preset the package
  ships (read in a fresh process, so test presets do not count);
* each ``sql`` block of docs/ (embeddings.md's nearest neighbours, labeling.md's latest label)
  and embeddings.md's numpy block run unchanged but for the path and the video over a label
  output of each of those presets and each ``--features`` kind. The output is written by the
  label job's own writer with the layout the job gives that preset (``jobs.features``): a run
  without features, a backfill with them, a later failed attempt, a duplicate video. (A real
  label run with the DuckDB query is in tests/jobs/test_features.py.)

No Ray, no model: the queries depend only on the files' layout.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import x3d
from jobs.features import FeatureOptions, claim_layout, feature_layout, vector_values
from tests.label_history import row, write_run

duckdb = pytest.importorskip("duckdb")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUN_PLAIN, RUN_BACKFILL, RUN_FAILED = "20261101T010000Z-aaaaaa", "20261102T010000Z-bbbbbb", "20261103T010000Z-cccccc"
VIDEO = "s3://bucket/videos/{}.mp4"


def _blocks(page: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def _sql_blocks() -> dict[str, str]:
    """Every ``sql`` block of docs/, by page and number."""
    return {f"{page.name}#{i}": sql for page in sorted(DOCS.glob("*.md")) for i, sql in enumerate(_blocks(page.name, "sql"))}


def _width_table() -> dict[str, tuple[int, int]]:
    """embeddings.md's table: preset -> (backbone, pre_logits) widths."""
    text = (DOCS / "embeddings.md").read_text()
    return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(r"^\| `(x3d_\w+)` \| (\d+) \| (\d+) \|$", text, re.M)}


def _shipped_presets() -> list[str]:
    proc = subprocess.run([sys.executable, "-c", "import json, x3d; print(json.dumps(sorted(x3d.PRESETS)))"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_docs_state_every_shipped_presets_vector_widths():
    table = _width_table()
    assert sorted(table) == _shipped_presets(), "docs/embeddings.md's width table must name every shipped preset"
    for name, (backbone, pre_logits) in table.items():
        assert (x3d.feature_dim(name, "backbone"), x3d.feature_dim(name, "pre_logits")) == (backbone, pre_logits), name


def _label_output(folder: Path, preset: str, kind: str) -> int:
    """A label output as the job writes it for ``preset`` with ``--features kind``; returns the width.

    Videos a, b, c labelled without features, then backfilled with them (c's vector is a's: a
    duplicate), d new with one; then b's next attempt failed (no vector, an error)."""
    layout = feature_layout(FeatureOptions(save_features=True, feature_kind=kind), x3d.get_preset(preset))
    output = str(folder)
    write_run(output, RUN_PLAIN, [row(VIDEO.format(v), "v1", 1, RUN_PLAIN) for v in "abc"])
    claim_layout(output, layout)
    vectors = {v: np.random.default_rng(seed).normal(size=layout.dim) for v, seed in (("a", 1), ("b", 2), ("c", 1), ("d", 3))}
    backfill = []
    for v in "abcd":
        r = row(VIDEO.format(v), "v1", 2 if v != "d" else 1, RUN_BACKFILL)
        r["features"] = vector_values(vectors[v], layout)
        backfill.append(r)
    write_run(output, RUN_BACKFILL, backfill, layout=layout)
    write_run(output, RUN_FAILED, [{**row(VIDEO.format("b"), "v1", 3, RUN_FAILED, error="S3 error SlowDown"), "features": None}],
              layout=layout)
    return layout.dim


PRESETS = sorted(_width_table())


@pytest.mark.parametrize("kind", ["backbone", "pre_logits"])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_docs_query_runs_as_written_for_every_preset(preset: str, kind: str, tmp_path: Path):
    dim = _label_output(tmp_path, preset, kind)
    labels = tmp_path / "labels"
    sqls = _sql_blocks()
    assert set(sqls) == {"embeddings.md#0", "labeling.md#0"}, f"a query was added to or removed from docs/: test it here ({sorted(sqls)})"

    # embeddings.md: nearest neighbours of a; c is its duplicate, at cosine 1
    nearest = sqls["embeddings.md#0"].replace("'labels/**/*.parquet'", f"'{labels}/**/*.parquet'")
    nearest, count = re.subn(r"WHERE a\.video = '[^']*'", "WHERE a.video = $query", nearest)
    assert count == 1 and str(labels) in nearest, "docs/embeddings.md's query changed shape: update this test"
    found = duckdb.execute(nearest, {"query": VIDEO.format("a")}).fetchall()
    assert [v for v, _ in found][0] == VIDEO.format("c") and found[0][1] == pytest.approx(1.0, abs=1e-6)
    assert sorted(v for v, _ in found) == [VIDEO.format(v) for v in "bcd"]

    # labeling.md: the latest label of each video, never the failed attempt that came after a good one
    latest_sql = sqls["labeling.md#0"]
    assert latest_sql.count("'labels/**/*.parquet'") == 1, "docs/labeling.md's query changed shape: update this test"
    result = duckdb.sql(latest_sql.replace("'labels/**/*.parquet'", f"'{labels}/**/*.parquet'"))
    rows = {r["video"]: r for r in (dict(zip(result.columns, values)) for values in result.fetchall())}
    assert sorted(rows) == [VIDEO.format(v) for v in "abcd"]
    assert all(r["error"] is None for r in rows.values()) and rows[VIDEO.format("b")]["attempt"] == 2
    assert len(rows[VIDEO.format("d")]["features"]) == dim

    # embeddings.md's numpy block
    (block,) = _blocks("embeddings.md", "python")[1:2]
    assert block.count('"s3://bucket/labels/"') == 1 and block.count('"s3://bucket/videos/x.mp4"') == 1, block
    scope: dict = {}
    exec(block.replace('"s3://bucket/labels/"', repr(str(tmp_path))).replace('"s3://bucket/videos/x.mp4"', repr(VIDEO.format("a"))), scope)
    assert scope["vectors"].shape == (4, dim)
    assert scope["similar"][scope["videos"].index(VIDEO.format("c"))] == pytest.approx(1.0, abs=1e-5)
