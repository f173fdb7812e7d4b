#!/usr/bin/env python
"""Almost no work per video: is the Ray job, as a whole process, faster than a plain loop?

    python bench/tiny_job_vs_loop.py                 # 1,000 sample clips, x3d_tiny, 1 view
    python bench/tiny_job_vs_loop.py --videos 300 --views 10

The clips are the sample val split (``x3d.sample_data``: 1.5-3 s of 64 px-scale motion),
hard-linked under distinct names until there are ``--videos`` of them. Both sides are timed as
whole processes from the shell's point of view (interpreter start, imports, model load, Ray
start-up for the job), on the same files:

* loop: one process, ``x3d.load_model("x3d_tiny")`` then ``x3d.predict_video`` per file;
* job:  ``python submit.py label --input DIR --model x3d_tiny --views V`` (its own local Ray).

The two must agree: the job's top-1 per video is checked against the loop's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.machine import cpu_model, load_average_text  # noqa: E402
from x3d import sample_data  # noqa: E402

LOOP = r"""
import json, sys, time
import numpy as np
import x3d
folder, views, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = x3d.load_model("x3d_tiny")
top1 = {}
import os
for name in sorted(os.listdir(folder)):
    probs = x3d.predict_video(model, os.path.join(folder, name), views=views)
    top1[name] = int(np.argmax(probs))
json.dump(top1, open(out, "w"))
"""


def make_clips(folder: Path, count: int) -> None:
    cache = sample_data.sample_cache_dir()
    listing = sample_data.list_file(cache, "val")
    if not listing.exists():
        sample_data.generate_sample_dataset(cache, "val")
    sources = [cache / name for name, _ in sample_data.read_video_list(listing)]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = folder / f"clip{i:05d}.mp4"
        if not target.exists():
            os.link(sources[i % len(sources)], target)


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="tiny-bench-") as tmp:
        clips = Path(tmp) / "clips"
        make_clips(clips, args.videos)
        print(f"# x3d_tiny, {args.views} view(s), {args.videos} sample clips; {cpu_model()}, {os.cpu_count()} cores; load {load_average_text()}")
        loop_out = Path(tmp) / "loop.json"
        loop = timed([sys.executable, "-c", LOOP, str(clips), str(args.views), str(loop_out)], env)
        out = Path(tmp) / "job"
        job = timed([sys.executable, "submit.py", "label", "--input", str(clips), "--output", str(out), "--model", "x3d_tiny",
                     "--views", str(args.views), "--num-cpus", str(args.cpus), "--quiet"], env)
        import pyarrow.dataset as ds

        files = [p for p in out.rglob("*.parquet") if not p.name.startswith(".")]
        rows = ds.dataset([str(p) for p in files], format="parquet").to_table(columns=["video", "pred", "error"]).to_pylist()
        want = json.loads(loop_out.read_text())
        ok = sum(1 for r in rows if r["error"] is None and r["pred"] == want[Path(r["video"]).name])
        print("| run | wall s | videos/s |")
        print("|---|---|---|")
        print(f"| one-process loop over x3d.predict_video | {loop:.1f} | {args.videos / loop:.1f} |")
        print(f"| submit.py label (local Ray, {args.cpus} CPUs) | {job:.1f} | {args.videos / job:.1f} |")
        print(f"job / loop speed: {loop / job:.2f}x; top-1 equal on {ok}/{len(rows)} rows ({len(want)} videos); load after {load_average_text()}")


if __name__ == "__main__":
    main()
