#!/usr/bin/env python
"""Decode time per video of the ways frames can be read, on the awkward files of issue 31.

    python bench/frame_order.py                    # X3D-S, 30 views, 3 repeats, 160x128 files
    python bench/frame_order.py --views 10 --repeats 5

For each kind of tests/videos.py's ``awkward_videos`` (generated under ``--workdir``), the
median wall ms on one core of:

  fast       the sorted distinct indices, 32 at a time, by path (what the job read everywhere
             before issue 31; still its path where ``access_hazard`` finds nothing)
  mmaction2  MMAction2's call: a reader on the file's bytes, one get_batch of the clip-ordered
             indices, duplicates included
  scan       ``x3d.decode.access_hazard``'s pass over the packets (no decoding)
  job        ``x3d.decode.read_frames`` as the job calls it: decord's open, the scan, then the
             fast path or MMAction2's call
  true       ``read_frames(frames="true")``: the job's way, with sequential decoding (PyAV)
             where random access is inexact

No resize: decoding only. The machine's load is printed; the numbers are only comparable
within one run. A second table says how right each reading is: of the clip-ordered places, how
many hold the frame shown at their index (decoded in order with PyAV), for MMAction2's call and
the fast path, and decord's frame count against the frames shown.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import av  # noqa: E402  (before decord: decord 0.6's FFmpeg would shadow PyAV's VP9 encoder)
import numpy as np  # noqa: E402

from jobs.machine import cpu_model, load_average_text  # noqa: E402
from tests.videos import AWKWARD_KINDS, awkward_videos  # noqa: E402
from tests.x3d.mmaction_oracle import scene_frames  # noqa: E402
from x3d import decode  # noqa: E402
from x3d.protocol import clip_indices  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=30, choices=[10, 30])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/x3d-frame-order")
    args = parser.parse_args(argv)
    import decord

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as a decode task
    decode.quiet_native_logs()  # decord's FFmpeg complains about every concealed open-GOP frame
    files = awkward_videos(args.workdir, frames_for=scene_frames)

    def wanted_for(num_frames: int, fps: float | None) -> np.ndarray:
        return clip_indices(num_frames, fps, "x3d_s", args.views)

    def fast(path: Path) -> None:
        reader = decord.VideoReader(str(path), num_threads=1)
        unique = np.unique(wanted_for(len(reader), reader.get_avg_fps()))
        for i in range(0, unique.size, 32):
            reader.get_batch(unique[i : i + 32].tolist()).asnumpy()

    def mmaction2(path: Path) -> None:
        reader = decord.VideoReader(io.BytesIO(path.read_bytes()), num_threads=1)
        reader.get_batch(wanted_for(len(reader), reader.get_avg_fps()).reshape(-1)).asnumpy()

    def job(path: Path, frames: str = "mmaction2") -> str:
        return decode.read_frames(str(path), lambda info: wanted_for(info.num_frames, info.fps), frames=frames)[2].read

    ways = {"fast": fast, "mmaction2": mmaction2, "scan": lambda p: decode.access_hazard(str(p)),
            "job": job, "true": lambda p: job(p, "true")}
    print(f"# {cpu_model()}, one core; load {load_average_text()}; X3D-S {args.views} views; median of {args.repeats}; ms per video")
    print("| file | " + " | ".join(ways) + " | job reads | true reads |")
    print("|---|" + "---:|" * len(ways) + "---|---|")
    for name in AWKWARD_KINDS:
        path = files[name]
        cells = []
        for way in ways.values():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                way(path)
                times.append((time.perf_counter() - start) * 1000.0)
            cells.append(f"{statistics.median(times):.0f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {job(path)} | {job(path, 'true')} |")

    print("\n| file | decord's count | frames shown | places | right in MMAction2's call | right in the fast path |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in AWKWARD_KINDS:
        path = files[name]
        with av.open(str(path)) as container:
            shown = [decode._shown(frame) for frame in container.decode(video=0)]
        reader = decord.VideoReader(io.BytesIO(path.read_bytes()), num_threads=1)
        wanted = wanted_for(len(reader), reader.get_avg_fps()).reshape(-1)
        theirs = reader.get_batch(wanted).asnumpy()
        reader = decord.VideoReader(str(path), num_threads=1)
        unique, inverse = np.unique(wanted, return_inverse=True)
        fast_frames = np.concatenate([reader.get_batch(unique[i : i + 32].tolist()).asnumpy() for i in range(0, unique.size, 32)])[inverse]

        def right(frames: np.ndarray) -> int:
            return sum(int(i < len(shown) and np.array_equal(frame, shown[i])) for frame, i in zip(frames, wanted.tolist()))

        print(f"| {name} | {len(reader)} | {len(shown)} | {wanted.size} | {right(theirs)} | {right(fast_frames)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
