#!/usr/bin/env python
"""Does memory stay flat as the dataset grows? The label job at 1x and 10x the videos.

    python bench/memory_flatness.py                    # 200 and 2,000 videos, x3d_tiny, 10 views
    python bench/memory_flatness.py --base 50 --factors 1,4

The videos are the sample val split (``x3d.sample_data``), hard-linked (or copied) under
distinct names until the folder holds ``base x factor`` of them, so every run decodes and scores
the same kind of video and only the count changes. Each run is the real nightly labeling job
(``jobs.label.run_label``: decode tasks, model actors, Parquet shards) on a fresh local Ray with
``--cpus`` CPUs, and is watched from outside by a sampler thread that reads ``/proc`` for every
Ray worker process (peak resident set per role, from the kernel's high-water mark ``VmHWM``) and
Ray's object-store use (as the benchmark job reads it).

Flat means: the 10x run's peaks match the 1x run's, and within a run the model actor's resident
set at the end is what it was a quarter of the way in. The pipeline bounds the videos in flight,
so neither should grow with the dataset; this script is the measurement. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray  # noqa: E402
import torch  # noqa: E402

from jobs.machine import cpu_model, load_average_text as load_average  # noqa: E402  (one machine description for every benchmark)
from jobs.machine import object_store_use  # noqa: E402
from jobs.label import LabelConfig, run_label  # noqa: E402
from x3d import sample_data  # noqa: E402

ROLES = (("actor", "ModelActor"), ("decode", "decode_item"), ("idle worker", "ray::IDLE"))


def _status_kib(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ray_workers() -> dict[int, str]:
    """pid -> role of every Ray worker process on this host (by its process title)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                title = fh.read(200).split(b"\0")[0].decode("utf-8", "replace")
        except OSError:
            continue
        if not title.startswith("ray::"):
            continue
        for role, marker in ROLES:
            if marker in title:
                found[int(entry)] = role
                break
    return found


@dataclass
class Samples:
    """What the sampler saw: time series of the actor's RSS and the store, peaks per role."""

    t: list[float] = field(default_factory=list)
    actor_rss_mb: list[float] = field(default_factory=list)
    store_mb: list[float] = field(default_factory=list)
    peak_mb: dict[str, float] = field(default_factory=dict)  # role -> max VmHWM of any process
    driver_peak_mb: float = 0.0
    pids: dict[str, set[int]] = field(default_factory=dict)


def sample_until(stop: threading.Event, out: Samples, interval_s: float) -> None:
    """Record one sample every ``interval_s`` until ``stop`` is set (a measurement thread)."""
    start = time.monotonic()
    while not stop.wait(interval_s):
        workers = _ray_workers()
        actor_now = 0.0
        for pid, role in workers.items():
            out.pids.setdefault(role, set()).add(pid)
            hwm = _status_kib(pid, "VmHWM")
            if hwm is not None:
                out.peak_mb[role] = max(out.peak_mb.get(role, 0.0), hwm / 1024)
            if role == "actor":
                rss = _status_kib(pid, "VmRSS")
                actor_now = max(actor_now, (rss or 0) / 1024)
        used, _ = object_store_use()
        out.t.append(time.monotonic() - start)
        out.actor_rss_mb.append(actor_now)
        out.store_mb.append((used or 0.0) / 2**20)
        out.driver_peak_mb = max(out.driver_peak_mb, (_status_kib(os.getpid(), "VmHWM") or 0) / 1024)


def build_input(folder: Path, videos: list[Path], count: int) -> None:
    """``count`` distinct video files in ``folder``, cycling over ``videos`` (hard links if possible)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        source = videos[i % len(videos)]
        target = folder / f"v{i:06d}{source.suffix}"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def _at_fraction(samples: Samples, values: list[float], fraction: float) -> float | None:
    """Median of the samples around ``fraction`` of the run (a 10%-wide window)."""
    if not samples.t:
        return None
    end = samples.t[-1]
    window = [v for t, v in zip(samples.t, values) if abs(t / end - fraction) <= 0.05 and v > 0]
    return statistics.median(window) if window else None


def run_once(workdir: Path, videos: list[Path], count: int, args: argparse.Namespace) -> dict:
    folder = workdir / f"in-{count}"
    build_input(folder, videos, count)
    output = workdir / f"out-{count}"
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    samples, stop = Samples(), threading.Event()
    sampler = threading.Thread(target=sample_until, args=(stop, samples, args.interval), daemon=True)
    try:
        sampler.start()
        start = time.perf_counter()
        summary = run_label(
            LabelConfig(input=str(folder), output=str(output), model=args.model, views=args.views, quiet=True)
        )
        wall = time.perf_counter() - start
    finally:
        stop.set()
        sampler.join()
        ray.shutdown()
    fmt = lambda v: round(v, 1) if v is not None else None  # noqa: E731
    return {
        "videos": count,
        "labelled": summary["labelled"],
        "failed": summary["failed"],
        "wall_s": round(wall, 1),
        "videos_per_s": round(count / wall, 2),
        "actor_peak_mb": fmt(samples.peak_mb.get("actor")),
        "actor_rss_25_mb": fmt(_at_fraction(samples, samples.actor_rss_mb, 0.25)),
        "actor_rss_end_mb": fmt(_at_fraction(samples, samples.actor_rss_mb, 0.95)),
        "decode_peak_mb": fmt(max(samples.peak_mb.get("decode", 0.0), samples.peak_mb.get("idle worker", 0.0)) or None),
        "decode_workers": len(samples.pids.get("decode", set()) | samples.pids.get("idle worker", set())),
        "driver_peak_mb": fmt(samples.driver_peak_mb),
        "store_peak_mb": fmt(max(samples.store_mb, default=0.0)),
        "store_median_mb": fmt(statistics.median(samples.store_mb) if samples.store_mb else None),
        "samples": len(samples.t),
    }


COLUMNS = (
    ("videos", "videos"),
    ("wall_s", "wall s"),
    ("videos_per_s", "videos/s"),
    ("actor_peak_mb", "actor peak MB"),
    ("actor_rss_25_mb", "actor @25% MB"),
    ("actor_rss_end_mb", "actor @95% MB"),
    ("decode_peak_mb", "decode worker peak MB"),
    ("decode_workers", "decode pids"),
    ("driver_peak_mb", "driver peak MB"),
    ("store_peak_mb", "store peak MB"),
    ("store_median_mb", "store median MB"),
)


def render(rows: list[dict], args: argparse.Namespace, header: str) -> str:
    lines = [header, "", "| " + " | ".join(t for _, t in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join("" if row[k] is None else str(row[k]) for k, _ in COLUMNS) + " |")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        growth = []
        for key in ("actor_peak_mb", "decode_peak_mb", "driver_peak_mb", "store_peak_mb"):
            if first[key] and last[key]:
                growth.append(f"{key.replace('_mb', '')} x{last[key] / first[key]:.2f}")
        lines += ["", f"{last['videos'] // first['videos']}x the videos: " + ", ".join(growth)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=200, help="videos at 1x [200: the sample val split]")
    parser.add_argument("--factors", default="1,10", help="dataset sizes as multiples of --base [1,10]")
    parser.add_argument("--model", default="x3d_tiny")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray [2]")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples [0.5]")
    args = parser.parse_args(argv)
    factors = [int(f) for f in args.factors.split(",")]

    root = sample_data.ensure_sample_dataset(splits=("val",), workers=args.cpus)
    videos = [root / rel for rel, _ in sample_data.read_video_list(sample_data.list_file(root, "val"))]
    before = load_average()
    header = "\n".join(
        [
            "# Memory vs dataset size (label job, local Ray)",
            f"date:     {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"cpu:      {cpu_model()}; Ray num_cpus={args.cpus}",
            f"versions: ray {ray.__version__}, torch {torch.__version__}",
            f"job:      label, {args.model}, {args.views} views, sample val videos cycled to base {args.base} x {factors}",
            f"loadavg:  {before} (before)",
        ]
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="x3d-memflat-") as tmp:
        for factor in factors:
            row = run_once(Path(tmp), videos, args.base * factor, args)
            print(f"{row['videos']} videos: {row}", flush=True)
            rows.append(row)
    print()
    print(render(rows, args, header + f"\nloadavg:  {load_average()} (after)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
