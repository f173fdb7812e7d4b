#!/usr/bin/env python
"""The pipeline's own ceiling: the real Ray pipeline with a decode and a model that cost nothing.

    python bench/pipeline_ceiling.py                          # 2,000 videos, 1 and 2 actors, no payload
    python bench/pipeline_ceiling.py --videos 1000 --actors 1,2,4 --payload frames --model x3d_s --views 30
    python bench/pipeline_ceiling.py --videos 8000 --actors 2 --decode-ms 75 --gpu-sizing \
        --set decode_slots=16 --set decode_cpus=0.1   # a real decode's pace, the job's GPU settings

``cluster.pipeline.run_pipeline`` runs unchanged; only its two stand-in hooks are set
(``PipelineConfig.decode_fn`` and ``PipelineConfig.actor_body``): the decode returns at once
(with no payload, or with a fresh copy of a uint8 payload of the real size for the model and views), the
actor returns zeros. What is left is what the job pays per video whatever the model: Ray tasks,
object refs, actor calls and the driver's bookkeeping. Reported per actor count:

* videos/s, steady: from the first outcome to the last (actor and worker start-up excluded),
  and with start-up: from the first submission;
* driver CPU ms per video (``time.process_time`` of this process: the pipeline loop and Ray's
  own threads in the driver), over the whole run, steady (first outcome to last), and over the
  middle 60% of outcomes (20% to 80%), where videos come in and go out at the same pace: "steady"
  leaves out the driver's work on the groups that arrived before the first outcome, which large
  groups delay. On short runs the middle 60% can still fall in the catch-up after start-up
  (outcomes faster than the decode gives videos: its videos/s above ``decode_slots`` /
  ``--decode-ms``), which reads low; the bench says so, and 8,000 videos avoid it;
* object-store bytes per video (the payload as shipped: what a real decode puts in the store);
* decode worker processes started, per 1,000 videos (distinct pids that ran a decode).

A fresh local Ray per run (``--cpus``, default 2), with the job's own Ray settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import ray  # noqa: E402

import x3d  # noqa: E402
from cluster.config import ActorReply  # noqa: E402
from cluster.pipeline import PipelineConfig, Shard, run_pipeline  # noqa: E402
from cluster.runtime import LOCAL_RAY_CONFIG  # noqa: E402
from cluster.sizing import ClusterShape, size_pipeline  # noqa: E402
from jobs.machine import cpu_model, load_average_text  # noqa: E402
from worker.spec import DecodeResult, ModelSpec  # noqa: E402
from worker.items import VideoItem  # noqa: E402

_CACHE: dict[str, object] = {}


def null_decode(item: VideoItem, spec: ModelSpec, timed: bool = False):
    """decode_item's signature; returns at once, or after $CEILING_DECODE_MS of sleep (a decode
    whose CPU is spent elsewhere: real per-video timing, so real group sizes, on a box with too
    few cores to decode for real). The payload is chosen by $CEILING_PAYLOAD."""
    kind = os.environ.get("CEILING_PAYLOAD", "none")
    pause_ms = float(os.environ.get("CEILING_DECODE_MS", "0"))
    if pause_ms > 0:
        time.sleep(pause_ms / 1000.0)
    if kind not in _CACHE:
        _CACHE[kind] = _payload(kind, spec)
    # A fresh copy per video, as a real decode makes: one cached array in every pair of a group
    # would be pickled once per group (pickle memoises repeated objects), flattering the store.
    return DecodeResult(error=None, num_views=spec.views), _fresh(_CACHE[kind])


def _fresh(payload):
    if payload is None:
        return None
    if isinstance(payload, tuple):
        return tuple(np.copy(p) for p in payload)
    return np.copy(payload)


def _payload(kind: str, spec: ModelSpec):
    if kind == "none":
        return None
    proto = spec.test_protocol()
    plan = proto.view_plan(spec.views)
    if kind == "views":  # today's payload: the cropped views
        return np.zeros((plan.views, proto.clip_len, plan.crop_size, plan.crop_size, 3), np.uint8)
    # the unique resized frames of a 340x256 video, and the clip index into them
    h, w = x3d.protocol.resized_size(256, 340, proto.resize_short)
    clips = plan.num_clips
    return np.zeros((clips * proto.clip_len, h, w, 3), np.uint8), np.arange(clips * proto.clip_len).reshape(clips, -1)


class NullActor:
    """ModelActor's shape; scores nothing."""

    def __init__(self, spec, state_dict, threads, batch_size):
        self.classes = len(spec.preset.classes)

    def describe(self):
        return {"worker": f"null:{os.getpid()}", "device": "none", "accelerator": "none"}

    def score(self, timed, *groups):
        results = [result for group in groups for result, _ in group]
        good = sum(result.error is None for result in results)
        return ActorReply(results, np.zeros((good, self.classes), np.float32), np.zeros(good), f"null:{os.getpid()}")


def payload_bytes(payload) -> int:
    if payload is None:
        return 0
    if isinstance(payload, tuple):
        return sum(payload_bytes(p) for p in payload)
    return int(getattr(payload, "nbytes", 0))


#: What ``cluster.sizing`` sets per event on a GPU cluster (``--gpu-sizing``): units, groups, calls, wake-ups.
GPU_EVENT_FIELDS = ("unit_videos", "clips_per_call", "group_ms", "group_videos", "wake_ms", "decode_bound_wake_ms",
                    "calls_per_actor")


def gpu_sized(spec: ModelSpec) -> dict:
    """The per-event settings the job itself uses on a GPU node (they do not depend on its size)."""
    config = size_pipeline(ClusterShape(cpus=16.0, gpus=1.0, nodes=1, node_cpus=16.0, cpu_nodes=1), spec)
    return {name: getattr(config, name) for name in GPU_EVENT_FIELDS}


def run_once(videos: int, actors: int, spec: ModelSpec, overrides: dict) -> dict:
    items = [VideoItem(key=f"null/{i:07d}", uri="null", label=None) for i in range(videos)]
    shard_size = 64
    shards = [Shard(i // shard_size, items[i : i + shard_size]) for i in range(0, videos, shard_size)]
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    sized = {"unit_videos": 32, "clips_per_call": 64 * spec.views}  # GPU-sized units and calls
    config = PipelineConfig(spec=spec, num_actors=actors, actor_cpus=0.25, decode_slots=2, decode_cpus=0.5,
                            decode_fn=null_decode, actor_body=NullActor, **{k: v for k, v in sized.items() if k in fields})
    config = dataclasses.replace(config, **overrides)
    decoders: set[str] = set()
    done = [0]
    first: list[float] = []
    cpu_first: list[float] = []

    middle = (videos // 5, videos - videos // 5)  # the 20% and 80% outcomes
    marks: dict[int, tuple[float, float]] = {}

    def on_video(outcome) -> None:
        done[0] += 1
        if not first:
            first.append(time.perf_counter())
            cpu_first.append(time.process_time())
        if done[0] in middle:
            marks[done[0]] = (time.process_time(), time.perf_counter())
        if outcome.decode.worker:
            decoders.add(outcome.decode.worker)

    cpu0, t0 = time.process_time(), time.perf_counter()
    run_pipeline(shards, config, None, on_video=on_video)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert done[0] == videos, (done[0], videos)
    steady = time.perf_counter() - first[0]
    cpu_steady = time.process_time() - cpu_first[0]
    return {
        "videos_per_s": (videos - 1) / steady,  # first outcome to last: actor and worker start-up excluded
        "start_s": first[0] - t0,
        "videos_per_s_wall": videos / wall,
        "driver_ms_per_video": 1e3 * cpu / videos,
        "driver_ms_per_video_steady": 1e3 * cpu_steady / (videos - 1),  # first outcome to last
        # the middle 60% of outcomes: in and out at the same pace, so the driver's CPU for the
        # groups that arrived before the first outcome is not left out (large groups delay it)
        "driver_ms_per_video_middle": 1e3 * (marks[middle[1]][0] - marks[middle[0]][0]) / (middle[1] - middle[0]),
        "videos_per_s_middle": (middle[1] - middle[0]) / (marks[middle[1]][1] - marks[middle[0]][1]),
        "decode_workers_per_1000": 1000 * len(decoders) / videos,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--model", default="x3d_s")
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--payload", choices=("none", "views", "frames"), default="none")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--decode-ms", type=float, default=0.0,
                    help="each null decode sleeps this long (e.g. 75: a 340x256 10 s clip); use with --set decode_slots=N")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a PipelineConfig field (int/float), e.g. --set max_decode_calls=1000000")
    ap.add_argument("--gpu-sizing", action="store_true",
                    help="units, groups, calls and wake-ups as the job sizes them for GPUs (cluster.sizing); --set applies on top")
    args = ap.parse_args()
    preset = x3d.get_preset(args.model)
    spec = ModelSpec(preset, args.views, preset.protocol(None).name)
    overrides = gpu_sized(spec) if args.gpu_sizing else {}
    for pair in args.set:
        name, value = pair.split("=", 1)
        overrides[name] = float(value) if "." in value else int(value)
    os.environ["CEILING_PAYLOAD"] = args.payload  # decode workers inherit it from the raylet
    os.environ["CEILING_DECODE_MS"] = str(args.decode_ms)
    shipped = payload_bytes(_payload(args.payload, spec))
    today = payload_bytes(_payload("views", spec))
    print(f"# pipeline ceiling: null decode + null model, {args.videos} videos, {args.model} {args.views} views, payload {args.payload}, "
          f"decode {args.decode_ms:g} ms")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; local Ray num_cpus={args.cpus}; load {load_average_text()}")
    print(f"overrides: {overrides or 'none'}")
    print(f"object-store bytes per video: {shipped:,} ({100 * shipped / today:.0f}% of today's views, {today:,})")
    print("| actors | videos/s (steady) | videos/s (with start-up) | start-up s | driver CPU ms/video | same, steady "
          "| videos/s, middle 60% | driver CPU ms/video, middle 60% | decode workers per 1000 videos |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in [int(a) for a in args.actors.split(",")]:
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", _system_config=LOCAL_RAY_CONFIG)
        try:
            r = run_once(args.videos, n, spec, overrides)
        finally:
            ray.shutdown()
        print(f"| {n} | {r['videos_per_s']:.0f} | {r['videos_per_s_wall']:.0f} | {r['start_s']:.2f} | {r['driver_ms_per_video']:.3f} "
              f"| {r['driver_ms_per_video_steady']:.3f} | {r['videos_per_s_middle']:.0f} | {r['driver_ms_per_video_middle']:.3f} "
              f"| {r['decode_workers_per_1000']:.1f} |", flush=True)
        possible = overrides.get("decode_slots", 2) * 1000.0 / args.decode_ms if args.decode_ms > 0 else float("inf")
        if r["videos_per_s_middle"] > possible:
            print(f"note: the middle 60% ran at {r['videos_per_s_middle']:.0f} videos/s, above the decode's {possible:.0f}: "
                  "it caught up after start-up, so its driver CPU per video reads low; run more --videos", flush=True)
    print(f"load after: {load_average_text()}")


if __name__ == "__main__":
    main()
