"""What earlier label runs did, in a form whose cost follows what is new, not what is old.

Deciding "already done / retry / give up" for a listed video needs, per (model, checkpoint,
views, uri, version): did any attempt succeed, and how many attempts were made. Reading every
earlier label row into Python for that costs time and memory in proportion to the history
(bench/RESULTS.md, "Label bookkeeping at scale"). Instead each output keeps an index under
``<output>/label_index/``::

    CURRENT.json          which segments make up the index and which runs it covers
    seg-<id>.parquet      sorted, unique uint64 ``key`` + ``ok`` (bool) + ``attempts`` (int16)

A key is the 64-bit BLAKE2b of the scope and the video version, so ten million entries are
110 MB of fixed-width numpy arrays, looked up with ``np.searchsorted`` a listing chunk at a
time. (Two versions colliding, about a 1-in-300 chance over 365 million keys, would only make
one version look done.)

The index is derived state: the label rows are the truth and are always written first. A run
appends one segment for its own rows and then atomically replaces ``CURRENT.json``; a kill
before that only leaves the run's rows uncovered, and the next run folds label files of runs
that ``CURRENT.json`` does not list into the index before planning. A missing or unreadable
index is rebuilt from the label files, streaming, with one line saying so. So a run killed at
any point never duplicates or loses a row.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from jobs import label_store
from jobs.parquet_writer import write_table
from x3d import storage

__all__ = ["LabelIndex", "Scope", "Segment", "keys_of", "load_index", "rebuild_index"]

SEGMENT_SCHEMA = pa.schema([("key", pa.uint64()), ("ok", pa.bool_()), ("attempts", pa.int16())])
MAX_SEGMENTS = 16  # more than this and the next save merges them into one
_KEY_COLUMNS = ["video", "version", "error", "attempt", "model", "checkpoint_sha256", "views", "run_id"]


@dataclass(frozen=True)
class Scope:
    """Rows count as "the same work" only for the same model, checkpoint and view count.

    ``features``: the narrower scope of rows that also stored a feature vector. A row with
    features is indexed under both scopes, so it is done for a plain run and for a backfill
    (``--backfill-features``: a version whose rows have no features is not done); one without
    only under the plain scope. An output's features have one layout (``jobs.features``), so
    "has features" is all the key needs to say.
    """

    model: str
    sha256: str
    views: int
    features: bool = False

    def prefix(self) -> bytes:
        base = f"{self.model}\x1f{self.sha256}\x1f{self.views}\x1f"
        return (base + "features\x1f" if self.features else base).encode()

    def with_features(self) -> "Scope":
        return Scope(self.model, self.sha256, self.views, features=True)


def keys_of(scope: Scope, uris: Iterable[str], versions: Iterable[str]) -> np.ndarray:
    """uint64 keys of video versions within a scope (stable across processes and machines)."""
    prefix = scope.prefix()
    blake = hashlib.blake2b
    return np.fromiter(
        (int.from_bytes(blake(prefix + f"{u}\x1f{v}".encode(), digest_size=8).digest(), "little") for u, v in zip(uris, versions)),
        dtype=np.uint64,
    )


def _reduce(key: np.ndarray, ok: np.ndarray, attempts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique keys; per key ok = any attempt succeeded, attempts = the most made.

    Written for 100M entries: one sort permutation, and the duplicate pass only when there are
    duplicates (retried videos), so the peak is about twice the arrays, not five times.
    """
    if not len(key):
        return key.astype(np.uint64), ok.astype(bool), attempts.astype(np.int16)
    order = np.argsort(key, kind="stable")
    key = key[order]
    ok, attempts = ok[order], attempts[order]
    del order
    new = np.empty(len(key), bool)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    if new.all():
        return key, ok, attempts.astype(np.int16, copy=False)
    starts = np.flatnonzero(new)
    del new
    return key[starts], np.logical_or.reduceat(ok, starts), np.maximum.reduceat(attempts, starts).astype(np.int16)


@dataclass
class Segment:
    key: np.ndarray
    ok: np.ndarray
    attempts: np.ndarray

    @classmethod
    def of(cls, key: np.ndarray, ok: np.ndarray, attempts: np.ndarray) -> "Segment":
        return cls(*_reduce(np.asarray(key, np.uint64), np.asarray(ok, bool), np.asarray(attempts, np.int16)))

    @classmethod
    def merge(cls, segments: list["Segment"]) -> "Segment":
        if not segments:
            return cls.of(np.zeros(0, np.uint64), np.zeros(0, bool), np.zeros(0, np.int16))
        return cls.of(*(np.concatenate([getattr(s, c) for s in segments]) for c in ("key", "ok", "attempts")))

    def table(self) -> pa.Table:
        return pa.table([self.key, self.ok, self.attempts], schema=SEGMENT_SCHEMA)


@dataclass
class LabelIndex:
    """The loaded index: segments (each sorted and unique) and the runs whose rows they hold."""

    output: str
    segments: list[Segment] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # segment file names, as CURRENT.json lists them
    runs: set[str] = field(default_factory=set)

    @property
    def entries(self) -> int:
        return sum(len(s.key) for s in self.segments)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ok, attempts) per key: ok if any attempt succeeded, attempts 0 if never seen."""
        ok = np.zeros(len(keys), bool)
        attempts = np.zeros(len(keys), np.int16)
        for seg in self.segments:
            if not len(seg.key):
                continue
            pos = np.minimum(np.searchsorted(seg.key, keys), len(seg.key) - 1)
            hit = seg.key[pos] == keys
            ok |= hit & seg.ok[pos]
            attempts = np.where(hit, np.maximum(attempts, seg.attempts[pos]), attempts)
        return ok, attempts

    def add(self, segment: Segment, runs: Iterable[str], save: bool = True) -> None:
        """Fold new entries in, and (``save``) persist them: a segment first, then CURRENT.json."""
        self.runs |= set(runs)
        if not len(segment.key) and not save:
            return
        if len(segment.key):
            self.segments.append(segment)
        if not save:
            return
        superseded: list[str] = []
        if len(self.segments) > MAX_SEGMENTS:
            self.segments = [Segment.merge(self.segments)]
            superseded, self.names = self.names, [self._write_segment(self.segments[0])]
        elif len(segment.key):
            self.names.append(self._write_segment(segment))
        label_store.crash_point("index:after-segment")
        self._write_current()
        label_store.crash_point("index:after-current")
        for name in superseded:  # only now: until CURRENT.json changed, they were the index
            storage.delete(storage.join(_folder(self.output), name))
        self._sweep()

    def _sweep(self, older_than_s: float = 600.0) -> None:
        """Delete segments no CURRENT.json names: left by a kill between a segment and its commit.

        Only old ones, so a segment another process has just written and is about to commit
        is left alone.
        """
        now = time.time()
        for info in storage.list_files(_folder(self.output), (".parquet",)):
            name = info.uri.replace("\\", "/").rsplit("/", 1)[-1]
            if name not in self.names and info.mtime is not None and now - info.mtime >= older_than_s:
                storage.delete(info.uri)

    def _write_segment(self, segment: Segment) -> str:
        name = f"seg-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}.parquet"
        table = segment.table()
        write_table(storage.join(_folder(self.output), name), table, table.schema, row_group_size=1 << 20)
        return name

    def _write_current(self) -> None:
        current = {"format": 1, "segments": self.names, "runs": sorted(self.runs), "entries": self.entries}
        storage.write_bytes(_current(self.output), json.dumps(current, indent=1).encode())


def _folder(output: str) -> str:
    return storage.join(output, "label_index")


def _current(output: str) -> str:
    return storage.join(_folder(output), "CURRENT.json")


def _read_segment(uri: str) -> Segment:
    """Row group by row group into preallocated arrays: the peak is the arrays, not twice them."""
    filesystem, path = storage.arrow_filesystem(uri)
    with filesystem.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        n = parquet.metadata.num_rows
        out = Segment(np.empty(n, np.uint64), np.empty(n, bool), np.empty(n, np.int16))
        pos = 0
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=SEGMENT_SCHEMA.names)
            end = pos + table.num_rows
            out.key[pos:end] = table.column("key").to_numpy()
            out.ok[pos:end] = table.column("ok").to_numpy()
            out.attempts[pos:end] = table.column("attempts").to_numpy()
            pos = end
    return out


def _load_saved(output: str) -> LabelIndex | None:
    """The index as CURRENT.json describes it; None if there is none or any part is unreadable."""
    try:
        current = json.loads(storage.read_bytes(_current(output)))
        names = list(current["segments"])
        segments = [_read_segment(storage.join(_folder(output), n)) for n in names]
        return LabelIndex(output, segments, names, set(current["runs"]))
    except storage.StorageError:
        return None
    except (ValueError, KeyError, TypeError, OSError, pa.ArrowException):
        return None


def _entries_of(output: str, files: list[label_store.LabelFile], skip_runs: set[str]) -> tuple[Segment, set[str], int]:
    """Index entries of the rows in ``files`` from runs not in ``skip_runs``, streamed batch by batch.

    Where the output stores features their column is read too, only to see which rows have a
    vector: such a row is a second entry, in its scope's ``with_features``."""
    runs: set[str] = set()
    flt = ~ds.field("run_id").isin(sorted(skip_runs)) if skip_runs else None
    schema = label_store.label_schema(output)
    columns = _KEY_COLUMNS + (["features"] if "features" in schema.names else [])
    total = label_store.count_rows(output, files, filter=flt)  # Parquet metadata only, when unfiltered
    out = Segment(np.empty(total, np.uint64), np.empty(total, bool), np.empty(total, np.int16))
    featured: list[Segment] = []
    pos = 0
    for batch in label_store.scan(output, files, columns, filter=flt, schema=schema):
        if not batch.num_rows:
            continue
        cols = {c: batch.column(c) for c in columns}
        runs.update(pc.unique(cols["run_id"]).to_pylist())
        scope_cols = pa.table([cols["model"], cols["checkpoint_sha256"], cols["views"]], names=["m", "s", "v"])
        for s in scope_cols.group_by(["m", "s", "v"]).aggregate([]).to_pylist():  # most batches: one scope
            mask = pc.and_(pc.and_(pc.equal(cols["model"], s["m"]), pc.equal(cols["checkpoint_sha256"], s["s"])), pc.equal(cols["views"], s["v"]))
            part = {c: cols[c].filter(mask) for c in ("video", "version", "error", "attempt")}
            scope = Scope(s["m"], s["s"], s["v"])
            end = pos + len(part["video"])
            out.key[pos:end] = keys_of(scope, part["video"].to_pylist(), part["version"].to_pylist())
            out.ok[pos:end] = pc.is_null(part["error"]).to_numpy(zero_copy_only=False)
            out.attempts[pos:end] = part["attempt"].to_numpy()
            if "features" in cols:
                has = pc.is_valid(cols["features"].filter(mask)).to_numpy(zero_copy_only=False)
                if has.any():
                    keys = keys_of(scope.with_features(), part["video"].filter(has).to_pylist(), part["version"].filter(has).to_pylist())
                    featured.append(Segment(keys, out.ok[pos:end][has], out.attempts[pos:end][has]))
            pos = end
    if pos != total:
        raise storage.StorageError(f"{label_store.labels_dir(output)}: label files changed while the index was built; run again")
    if featured:  # outputs with features only: their entries join the plain ones
        out = Segment.merge([out, *featured])
        return out, runs, total
    return Segment(*_reduce(out.key, out.ok, out.attempts)), runs, total


def rebuild_index(output: str, log: Callable[[str], None] = print, reason: str = "rebuilt", save: bool = True) -> LabelIndex:
    """Build the index afresh from every label file (streaming) and (``save``) save it as one segment."""
    start = time.monotonic()
    files = label_store.live_files(output)
    segment, runs, rows = _entries_of(output, files, set())
    index = LabelIndex(output)
    index.add(segment, runs, save=save)
    log(f"label index {reason}: {rows} rows from {len(files)} label files, {index.entries} versions, {time.monotonic() - start:.1f} s")
    return index


def load_index(output: str, log: Callable[[str], None] = print, save: bool = True) -> LabelIndex:
    """The index, brought up to date with every label file; built from the rows when missing.

    Label files of runs the index does not cover (a run killed before its index update, files
    written by code from before the index existed) are folded in first. ``save=False`` (``--plan``)
    keeps what it folds in memory: a plan beside a running job must not mark that job's
    half-written run as covered, or the rest of the run, if it were killed, would be missed.
    """
    index = _load_saved(output)
    if index is None:
        files = label_store.live_files(output)
        if not files:
            return LabelIndex(output)
        had = storage.exists(_current(output))
        return rebuild_index(output, log, "unreadable, rebuilt" if had else "missing, built", save=save)
    files = label_store.live_files(output)
    stale = [f for f in files if (label_store.run_of(f.name) or "") not in index.runs and not f.name.startswith("compact-")]
    if stale:
        start = time.monotonic()
        segment, runs, rows = _entries_of(output, stale, index.runs)
        index.add(segment, runs, save=save)
        log(f"label index: folded in {rows} rows of {len(runs)} earlier runs from {len(stale)} files not yet indexed ({time.monotonic() - start:.1f} s)")
    return index
