#!/usr/bin/env python
"""Does labeling's bookkeeping cost what is new, not what is old? Planning over big histories.

    python bench/label_scale.py                       # histories of 1M and 10M rows
    python bench/label_scale.py --sizes 100000000     # the once-recorded 100M run
    python bench/label_scale.py --listing 10000000    # plus: 10M listed keys through a simulated lister

For each size a synthetic history is written straight into the documented layout
(``labels/date=YYYY-MM-DD/part-<run>-00000.parquet``, one million rows a file, 128k-row row
groups, one run a day), with no index: exactly what code from before the index leaves, only
bigger (``--flat256``: as the code before the index wrote it, flat, one file per 256 rows).
Then, each step in its own process, timed from outside, peak RSS its ``VmHWM`` (Linux):

* ``rebuild``: the first command on such a history builds the index (``--rebuild-index``);
* ``plan``: ``label --plan`` with 1,000 new videos in the input folder;
* ``run``: the real ``run_label`` over those 1,000 videos with the model half replaced by a
  no-op (every video "succeeds" at once): index load, listing, shard writes, index update;
* ``listing`` (``--listing N``): ``_select`` over N simulated listed keys, all already in the
  history except 1,000, with a ``--since`` that drops a tenth of them during the listing.

Nothing here is asserted; the numbers go to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS_PER_FILE = 1_000_000
NEW_VIDEOS = 1000
MODEL, VIEWS = "x3d_tiny", 10


def video_uri(i: int) -> str:
    return f"s3://videos/incoming/cam-{i % 997:03d}/clip_{i:010d}.mp4"


def write_history(output: str, rows: int, sha: str, flat256: bool = False) -> None:
    """``rows`` label rows of x3d_tiny/10 views, as runs would have written them, built columnar."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs import label_store

    classes = pa.array([f"class_{c}" for c in range(400)])
    rng = np.random.default_rng(0)
    for f, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        run_id = f"2026{1 + f // 28 % 12:02d}{1 + f % 28:02d}T010000Z-{f:06x}"
        ids = range(start, start + n)
        failed = rng.random(n) < 0.001
        offsets = pa.array(np.arange(0, 5 * n + 1, 5, dtype=np.int32))
        table = pa.table(
            {
                "video": pa.array([video_uri(i) for i in ids]),
                "version": pa.array([f"etag:{i * 2654435761 % (1 << 64):016x}" for i in ids]),
                "labels": pa.ListArray.from_arrays(offsets, classes.take(pa.array(rng.integers(0, 400, 5 * n)))),
                "scores": pa.ListArray.from_arrays(offsets, pa.array(rng.random(5 * n, dtype=np.float32))),
                "pred": pa.array(rng.integers(0, 400, n, dtype=np.int32)),
                "error": pa.array(np.where(failed, "decode failed", None).tolist(), pa.string()),
                "attempt": pa.array(np.ones(n, np.int16)),
                "etag": pa.nulls(n, pa.string()),
                "size": pa.array(np.full(n, 1_000_000, np.int64)),
                "mtime": pa.array(np.full(n, 1.7e9)),
                "model": pa.array([MODEL] * n),
                "checkpoint_sha256": pa.array([sha] * n),
                "views": pa.array(np.full(n, VIEWS, np.int16)),
                "run_id": pa.array([run_id] * n),
                "decode_ms": pa.array(np.full(n, 100, np.float32)),
                "infer_ms": pa.array(np.full(n, 50, np.float32)),
                "worker": pa.array(["w"] * n),
            },
            schema=label_store.LABEL_SCHEMA,
        )
        if flat256:  # what the code before the index wrote: labels/part-<run>-<shard>.parquet, 256 rows
            folder = Path(output, "labels")
            folder.mkdir(parents=True, exist_ok=True)
            for shard, lo in enumerate(range(0, n, 256)):
                pq.write_table(table.slice(lo, 256), folder / f"part-{run_id}-{shard:05d}.parquet")
            continue
        path = Path(label_store.part_uri(output, run_id, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=128 * 1024, compression="zstd")


# --------------------------------------------------------------------------- the measured steps


def _config(output: str, videos: str, ckpt: str):
    from jobs.label import LabelConfig

    return LabelConfig(input=videos, output=output, model=MODEL, checkpoint=ckpt, views=VIEWS, quiet=False)


def step_rebuild(output: str, videos: str, ckpt: str) -> None:
    from jobs.label import rebuild_label_index

    rebuild_label_index(output)


def step_plan(output: str, videos: str, ckpt: str) -> None:
    from jobs.label import plan_label

    print(plan_label(_config(output, videos, ckpt)))


def step_run(output: str, videos: str, ckpt: str) -> None:
    """The real run_label; only the Ray pipeline is replaced by a model that does nothing."""
    import numpy as np

    import cluster.pipeline
    import cluster.runtime
    from cluster.pipeline import VideoOutcome
    from worker.spec import DecodeResult
    from jobs.label import run_label

    def no_op_pipeline(shards, config, state_ref, on_video=lambda o: None, on_shard=lambda i, o: None):
        import x3d

        classes = x3d.get_preset(MODEL).arch.num_classes
        probs = np.linspace(0, 1, classes, dtype=np.float32)
        for shard in shards:
            outcomes = [VideoOutcome(shard.index, p, item, DecodeResult(None, num_views=1), probs, None) for p, item in enumerate(shard.items)]
            for o in outcomes:
                on_video(o)
            on_shard(shard.index, outcomes)

    import ray

    ray.put = lambda x: x  # run_label hands the weights to the pipeline through the object store
    cluster.pipeline.run_pipeline = no_op_pipeline
    cluster.runtime.start_cluster = lambda address, cpus=None: False
    cluster.runtime.stop_cluster = lambda started: None
    cluster.runtime.pipeline_config_for = lambda *a, **k: None
    print({k: v for k, v in run_label(_config(output, videos, ckpt)).items() if k in ("listed", "skipped", "new", "labelled")})


def step_listing(output: str, videos: str, ckpt: str, count: int) -> None:
    """``_select`` over ``count`` simulated S3 keys (a generator, as the paginated lister is)."""
    from jobs import label
    from x3d import storage

    history_rows = int(os.environ["BENCH_HISTORY_ROWS"])

    def lister(_source):
        for i in range(count):
            fresh = i >= count - NEW_VIDEOS
            j = history_rows + i if fresh else i % history_rows
            old = not fresh and i % 10 == 0
            yield storage.ObjectInfo(video_uri(j), 1_000_000, 1.0e9 if old else 1.8e9, f"{j * 2654435761 % (1 << 64):016x}")

    label.list_input = lister
    cfg = _config(output, "simulated", ckpt)
    cfg.since = "2020-01-01"
    _, _, sha = label._load_checkpoint(cfg)
    history = label._history(output, MODEL, sha, VIEWS)
    counts = {"listed": 0, "older": 0, "skipped": 0, "new": 0, "retries": 0}
    for _ in label._select(cfg, history, counts):
        pass
    print(counts)


STEPS = {"rebuild": step_rebuild, "plan": step_plan, "run": step_run}


def _peak_kb() -> int:
    """This process's peak resident set. Not ru_maxrss: that keeps the forking parent's pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def measure(step: str, output: str, videos: str, ckpt: str, extra: list[str] = (), env: dict | None = None) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, last output line) of one step in a fresh process."""
    cmd = [sys.executable, __file__, "--step", step, "--output", output, "--videos", videos, "--ckpt", ckpt, *extra]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)})
    out = proc.stdout.read()
    status = proc.wait()
    wall = time.monotonic() - start
    if status:
        raise SystemExit(f"{step} failed:\n{out[-3000:]}")
    lines = out.strip().splitlines()
    return wall, int(lines[-1].split()[1]) / 1024, lines[-3] if len(lines) > 2 else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000,10000000", help="history rows, comma-separated")
    p.add_argument("--flat256", action="store_true", help="write histories in the pre-index layout: flat, 256-row files")
    p.add_argument("--listing", type=int, default=0, help="also list this many simulated keys over the largest history")
    p.add_argument("--workdir", help="where histories go [a temp folder, removed after]")
    p.add_argument("--step", choices=[*STEPS, "listing"], help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--videos", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:
        if args.step == "listing":
            step_listing(args.output, args.videos, args.ckpt, args.count)
        else:
            STEPS[args.step](args.output, args.videos, args.ckpt)
        print(f"\nVmHWM {_peak_kb()}")
        return

    import x3d

    work = Path(args.workdir or tempfile.mkdtemp(prefix="label_scale_"))
    ckpt = work / "tiny.pth"
    x3d.checkpoints.save_mmaction2_checkpoint(x3d.build_model(MODEL), ckpt)
    import hashlib

    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    videos = work / "new"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(NEW_VIDEOS):
        (videos / f"new_{i:04d}.mp4").write_bytes(b"x" * (i + 1))
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print("| history rows | label files | write s | rebuild s | rebuild MB | plan s | plan MB | no-op run s | no-op run MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    sizes = [int(s) for s in args.sizes.split(",")]
    for rows in sizes:
        output = work / f"out-{rows}"
        shutil.rmtree(output, ignore_errors=True)
        start = time.monotonic()
        write_history(str(output), rows, sha, flat256=args.flat256)
        written = time.monotonic() - start
        files = sum(1 for _ in output.rglob("*.parquet"))
        rb = measure("rebuild", str(output), str(videos), str(ckpt))
        pl = measure("plan", str(output), str(videos), str(ckpt))
        rn = measure("run", str(output), str(videos), str(ckpt))
        print(f"| {rows:,} | {files} | {written:.0f} | {rb[0]:.1f} | {rb[1]:.0f} | {pl[0]:.1f} | {pl[1]:.0f} | {rn[0]:.1f} | {rn[1]:.0f} |", flush=True)
        print(f"#   plan: {pl[2]}\n#   run: {rn[2]}", flush=True)
        if args.listing and rows == sizes[-1]:
            # the no-op run added 1,000 rows; relist with fresh ids past them
            ls = measure("listing", str(output), "", str(ckpt), ["--count", str(args.listing)], env={"BENCH_HISTORY_ROWS": str(rows)})
            print(f"# listing {args.listing:,} simulated keys over {rows:,} rows: {ls[0]:.1f} s, peak RSS {ls[1]:.0f} MB -> {ls[2]}", flush=True)
        if not args.workdir:
            shutil.rmtree(output, ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
