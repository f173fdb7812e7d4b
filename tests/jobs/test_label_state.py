"""The label index and the partitioned, compacted label store, on real Parquet files (no Ray).

Crash safety is tested the hard way: a subprocess does the work and SIGKILLs itself at a
named point (``X3D_LABEL_CRASH_AT``); the table and index left behind are then checked and
the step rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from jobs import label_state, label_store
from x3d import storage
from tests.label_history import MODEL, SHA, VIEWS, row, row_counter, write_run

ROOT = Path(__file__).resolve().parents[2]
SCOPE = label_state.Scope(MODEL, SHA, VIEWS)
RUN_A, RUN_B, RUN_C = "20261101T010000Z-aaaaaa", "20261102T010000Z-bbbbbb", "20261103T010000Z-cccccc"


def _lookup(index: label_state.LabelIndex, videos: list[str], version: str = "v1") -> list[tuple[bool, int]]:
    ok, attempts = index.lookup(label_state.keys_of(SCOPE, videos, [version] * len(videos)))
    return list(zip(ok.tolist(), attempts.tolist()))


def _history(output: str) -> Counter:
    """Three runs, as the pre-index code wrote them (flat, 256-row files) and as runs write now."""
    ok = [row(f"v{i:04d}", "v1", 1, RUN_A) for i in range(600)]
    failed = [row("bad", "v1", 1, RUN_A, error="decode failed")]
    write_run(output, RUN_A, ok + failed, flat=True)
    retried = [row("bad", "v1", 2, RUN_B, error="decode failed")] + [row(f"w{i:03d}", "v1", 1, RUN_B) for i in range(30)]
    write_run(output, RUN_B, retried, shard_size=7)
    return row_counter(output)


def _run(code: str, crash_at: str | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("X3D_LABEL_CRASH_AT", None)
    if crash_at:
        env["X3D_LABEL_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, timeout=60).returncode


def test_history_from_before_the_index_gets_one_built_and_says_so(tmp_path):
    out = str(tmp_path / "out")
    before = _history(out)
    log: list[str] = []
    index = label_state.load_index(out, log=log.append)
    assert len(log) == 1 and "missing, built" in log[0] and f"{sum(before.values())} rows" in log[0]
    assert index.runs == {RUN_A, RUN_B}
    assert _lookup(index, ["v0000", "v0599", "w029", "bad", "never-seen"]) == [(True, 1), (True, 1), (True, 1), (False, 2), (False, 0)]
    assert _lookup(index, ["v0000"], version="v2") == [(False, 0)]  # a changed video is new work
    other = label_state.keys_of(label_state.Scope(MODEL, SHA, 10), ["v0000"], ["v1"])
    assert index.lookup(other)[0].tolist() == [False]  # another view count is another scope

    log.clear()
    again = label_state.load_index(out, log=log.append)
    assert log == [] and again.entries == index.entries  # saved: the next run just reads it


def test_rows_of_a_run_killed_before_its_index_update_are_folded_in(tmp_path):
    out = str(tmp_path / "out")
    _history(out)
    label_state.load_index(out, log=lambda m: None)
    write_run(out, RUN_C, [row("bad", "v1", 3, RUN_C), row("late", "v1", 1, RUN_C)])  # no index update: killed
    log: list[str] = []
    index = label_state.load_index(out, log=log.append)
    assert len(log) == 1 and "folded in 2 rows of 1 earlier runs" in log[0]
    assert _lookup(index, ["bad", "late"]) == [(True, 3), (True, 1)]
    assert RUN_C in label_state.load_index(out, log=log.append).runs and len(log) == 1


def test_unreadable_index_is_rebuilt(tmp_path):
    out = str(tmp_path / "out")
    _history(out)
    label_state.load_index(out, log=lambda m: None)
    Path(out, "label_index", "CURRENT.json").write_text("{not json")
    log: list[str] = []
    index = label_state.load_index(out, log=log.append)
    assert "unreadable, rebuilt" in log[0]
    assert _lookup(index, ["bad"]) == [(False, 2)]


def test_many_runs_keep_a_bounded_number_of_segments(tmp_path):
    out = str(tmp_path / "out")
    index = label_state.load_index(out, log=lambda m: None)
    for night in range(label_state.MAX_SEGMENTS + 3):
        keys = label_state.keys_of(SCOPE, [f"n{night}-{i}" for i in range(5)], ["v1"] * 5)
        index.add(label_state.Segment.of(keys, np.ones(5, bool), np.ones(5, np.int16)), [f"run{night}"])
    saved = json.loads(Path(out, "label_index", "CURRENT.json").read_text())
    assert len(saved["segments"]) <= label_state.MAX_SEGMENTS and saved["entries"] == 5 * (label_state.MAX_SEGMENTS + 3)
    assert sorted(p.name for p in Path(out, "label_index").glob("seg-*")) == sorted(saved["segments"])  # merged ones gone
    reloaded = label_state.load_index(out, log=lambda m: None)
    assert _lookup(reloaded, ["n0-0", "n18-4"]) == [(True, 1), (True, 1)]


_INDEX_UPDATE = f"""
from jobs import label_state
from tests.label_history import row, write_run
out = {{out!r}}
index = label_state.load_index(out, log=lambda m: None)
rows = [row("late-%d" % i, "v1", 1, "{RUN_C}") for i in range(40)]
write_run(out, "{RUN_C}", rows, shard_size=16)
keys = label_state.keys_of(label_state.Scope("{MODEL}", "{SHA}", {VIEWS}), [r["video"] for r in rows], ["v1"] * 40)
import numpy as np
index.add(label_state.Segment.of(keys, np.ones(40, bool), np.ones(40, np.int16)), ["{RUN_C}"])
"""


@pytest.mark.parametrize("point", ["index:after-segment", "index:after-current"])
def test_kill_during_the_index_update_loses_nothing(tmp_path, point):
    out = str(tmp_path / "out")
    before = _history(out)
    label_state.load_index(out, log=lambda m: None)
    assert _run(_INDEX_UPDATE.format(out=out), crash_at=point) == -9
    log: list[str] = []
    index = label_state.load_index(out, log=log.append)
    assert (len(log) == 1 and "folded in 40 rows" in log[0]) if point == "index:after-segment" else log == []
    assert all(ok and n == 1 for ok, n in _lookup(index, [f"late-{i}" for i in range(40)]))
    after = row_counter(out)
    assert set(after.values()) == {1} and sum(after.values()) == sum(before.values()) + 40
    segments = Path(out, "label_index").glob("seg-*.parquet")
    for old in segments:
        os.utime(old, (1e9, 1e9))  # long ago: an orphan of the kill may now be swept
    index.add(label_state.Segment.merge([]), ["sweep"])
    listed = json.loads(Path(out, "label_index", "CURRENT.json").read_text())["segments"]
    assert sorted(p.name for p in Path(out, "label_index").glob("seg-*.parquet")) == sorted(listed)


_COMPACT = """
from jobs import label_state, label_store
out = {out!r}
index = label_state.load_index(out, log=lambda m: None)
label_store.compact(out, target_mb={target}, covered_runs=index.runs, log=lambda m: None)
"""


@pytest.mark.parametrize("point", ["compact:after-output", "compact:after-manifest", "compact:after-first-delete"])
def test_kill_during_compaction_leaves_a_valid_table(tmp_path, point):
    out = str(tmp_path / "out")
    before = _history(out)
    label_state.load_index(out, log=lambda m: None)
    files_before = len(label_store.live_files(out))
    assert _run(_COMPACT.format(out=out, target=64), crash_at=point) == -9
    assert row_counter(out) == before  # every row exactly once, right after the kill
    label_store.compact(out, covered_runs=label_state.load_index(out, log=lambda m: None).runs, log=lambda m: None)
    assert row_counter(out) == before
    live = label_store.live_files(out)
    assert len(live) < files_before and all(f.name.startswith("compact-") for f in live)
    assert {f.partition for f in live} == {"2026-11-01", "2026-11-02"}  # flat files moved into their date
    on_disk = sorted(p.name for p in Path(out, "labels").rglob("*.parquet"))
    assert on_disk == sorted(f.name for f in live)  # nothing replaced is left behind
    log: list[str] = []
    assert _lookup(label_state.load_index(out, log=log.append), ["bad"]) == [(False, 2)] and log == []


def test_uncovered_runs_are_not_compacted(tmp_path):
    out = str(tmp_path / "out")
    _history(out)
    index = label_state.load_index(out, log=lambda m: None)
    write_run(out, RUN_C, [row(f"c{i}", "v1", 1, RUN_C) for i in range(10)], shard_size=2)  # still running
    label_store.compact(out, covered_runs=index.runs, log=lambda m: None)
    assert sum(1 for f in label_store.live_files(out) if label_store.run_of(f.name) == RUN_C) == 5


def test_reader_during_compaction_sees_every_row_once(tmp_path):
    out = str(tmp_path / "out")
    rows = [row(f"v{i:05d}", "v1", 1, RUN_A) for i in range(3000)]
    write_run(out, RUN_A, rows, shard_size=25)
    expected = row_counter(out)
    seen: list[Counter] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(row_counter(out))
            except BaseException as err:  # noqa: BLE001 - a failed read is a failed test
                errors.append(err)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for target_mb in (0.02, 0.08, 0.5):  # three rounds: compacted files get merged again
            label_store.compact(out, target_mb=target_mb, log=lambda m: None)
    finally:
        stop.set()
        thread.join()
    assert not errors, repr(errors[0]) if errors else ""
    assert len(seen) >= 2 and all(c == expected for c in seen)
    assert len(label_store.live_files(out)) == 1
    assert not list(Path(out, "labels", "_compactions").glob("*.json"))[1:]  # spent manifests are dropped


def test_read_labels_latest_only_and_partition_filter(tmp_path):
    out = str(tmp_path / "out")
    _history(out)
    latest = label_store.read_labels(out)
    assert latest.num_rows == 600 + 1 + 30 and latest.schema.names == label_store.LABEL_SCHEMA.names
    bad = [r for r in latest.to_pylist() if r["video"] == "bad"]
    assert [r["attempt"] for r in bad] == [2]
    nov2 = label_store.read_labels(out, latest_only=False, filter=ds.field("date") == "2026-11-02", columns=["video"])
    assert nov2.num_rows == 31  # the flat files of 2026-11-01 have no date folder yet
    assert label_store.read_labels(str(tmp_path / "empty")).num_rows == 0


def test_store_and_index_on_s3(s3_env):
    out = f"s3://{s3_env}/labels-out"
    before = _history(out)
    log: list[str] = []
    index = label_state.load_index(out, log=log.append)
    assert "missing, built" in log[0] and _lookup(index, ["bad"]) == [(False, 2)]
    label_store.compact(out, covered_runs=index.runs, log=lambda m: None)
    assert row_counter(out) == before
    assert all(f.name.startswith("compact-") for f in label_store.live_files(out))
    names = [i.uri for i in storage.list_files(f"{out}/labels", (".parquet",))]
    assert len(names) == 2 and all("/date=2026-11-0" in n for n in names)


def test_cli_compact_and_rebuild_index_need_no_input(tmp_path, capsys):
    import submit

    out = str(tmp_path / "out")
    before = _history(out)
    assert submit.main(["label", "--output", out, "--rebuild-index", "--compact", "--target-file-mb", "1"]) == 0
    printed = capsys.readouterr().out
    assert "label index rebuilt: 632 rows from 8 label files, 631 versions" in printed and "label compact: " in printed
    assert row_counter(out) == before and all(f.name.startswith("compact-") for f in label_store.live_files(out))
    with pytest.raises(SystemExit) as exit_:
        submit.main(["label", "--output", out])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "needs --input" in err
