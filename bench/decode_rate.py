#!/usr/bin/env python
"""Decode cost and object-store bytes per video, with the production decode task.

    python bench/decode_rate.py                      # 340x256 and 1920x1080, 10 s at 30 fps
    python bench/decode_rate.py --video my.mp4       # your own files too

For each video and (model, views): CPU and wall seconds of ``worker.decode_task.decode_item``
(read, decode the sampled frames, resize, cut to the crops' box: one core), the distinct frames
shipped, their bytes and today's views' bytes (what the decode task shipped before issue 15).
Synthetic clips are encoded once under ``--workdir`` (H.264, CRF 23).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

import x3d  # noqa: E402
from jobs.machine import cpu_model, load_average_text  # noqa: E402
from worker.decode_task import decode_item  # noqa: E402
from worker.spec import ModelSpec  # noqa: E402
from worker.items import VideoItem  # noqa: E402


def synthetic(path: Path, width: int, height: int, frames: int = 300) -> Path:
    """A moving-gradient H.264 clip (every frame differs, as in real video)."""
    if path.exists():
        return path
    import av

    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"crf": "23", "preset": "ultrafast", "threads": "1"}
        y, x = np.arange(height)[:, None], np.arange(width)[None, :]
        for t in range(frames):
            f = np.stack([(x + 7 * t) % 256 + 0 * y, (y + 3 * t) % 256 + 0 * x, ((x + y + t) // 4) % 256], -1).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/x3d-decode-rate")
    ap.add_argument("--video", action="append", default=[])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    videos = [("340x256 10 s", synthetic(work / "340x256.mp4", 340, 256)),
              ("1920x1080 10 s", synthetic(work / "1920x1080.mp4", 1920, 1080))] + [(v, Path(v)) for v in args.video]
    print(f"# decode_item per video, one process; {cpu_model()}; load {load_average_text()}")
    print("| video | model | views | decode CPU s | wall s | distinct frames | shipped MB | views MB | shipped / views |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path in videos:
        for model, views in (("x3d_s", 30), ("x3d_s", 10), ("x3d_m", 30), ("x3d_m", 10)):
            spec = ModelSpec(x3d.get_preset(model), views)
            item = VideoItem(name, str(path), None)
            decode_item(item, spec)  # warm: file cache, imports
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(args.repeats):
                result, (frames, inverse) = decode_item(item, spec)
            assert result.error is None, result.error
            cpu, wall = (time.process_time() - c0) / args.repeats, (time.perf_counter() - t0) / args.repeats
            proto = spec.test_protocol()
            plan = proto.view_plan(views)
            views_bytes = plan.views * proto.clip_len * plan.crop_size**2 * 3
            shipped = frames.nbytes + inverse.nbytes
            print(f"| {name} | {model} | {views} | {cpu:.3f} | {wall:.3f} | {frames.shape[0]} | {shipped / 1e6:.1f} "
                  f"| {views_bytes / 1e6:.1f} | {100 * shipped / views_bytes:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
