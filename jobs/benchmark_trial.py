"""One benchmark trial (one actor count): when warm-up ends, the timed windows, the summary.

The timing model is described in ``jobs.benchmark``; here each actor call's record is completed
with its videos' decode stages and the driver's write, and the windows and statistics are
computed from those records.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from typing import Any, Callable, Iterator

from cluster.config import Shard, VideoOutcome
from jobs.benchmark_inputs import VideoStream
from jobs.machine import object_store_use
from worker.stages import STAGES

__all__ = ["Trial", "summarise_trial"]


class Trial:
    """One actor count: decides when warm-up ends and windows close, counts what arrives."""

    def __init__(self, cfg: Any, stream: VideoStream, num_actors: int, log: Callable[[str], None]):
        self.cfg = cfg
        self.stream = stream
        self.num_actors = num_actors
        self.log = log
        self.actors: list[dict[str, Any]] = []
        self.workers: set[str] = set()
        self.started = 0.0
        self.warm_end: float | None = None
        self.end: float | None = None
        self.give_up: float = math.inf
        self.done = 0
        self.failed = 0
        self.errors: list[str] = []
        self.store_peak: float | None = None
        self.store_capacity: float | None = None
        self._store_ok = True
        self._store_at = 0.0
        self.records: list[dict[str, Any]] = []
        self.driver_cpu_s = 0.0  # set by the benchmark after the trial's run
        self.payload_bytes = 0
        self.decode_workers: set[str] = set()

    def on_start(self, actors: list[dict[str, Any]]) -> None:
        self.actors = actors
        self.started = time.time()
        # Warm-up must end; if no actor finishes a batch in this long, something is broken.
        self.give_up = self.started + self.cfg.warmup_s + max(120.0, self.cfg.repeats * self.cfg.duration_s)
        self.log(f"benchmark: {self.num_actors} actor(s) up, warming up")
        self._sample_store(force=True)

    def on_video(self, outcome: Any) -> None:
        now = time.time()
        self.done += 1
        self.payload_bytes += outcome.decode.payload_bytes
        if outcome.decode.worker:  # "" for a video whose decode worker hung or crashed
            self.decode_workers.add(outcome.decode.worker)
        if outcome.error is not None:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(outcome.error)
        else:
            self.workers.add(outcome.worker)
        if self.warm_end is None and now - self.started >= self.cfg.warmup_s and len(self.workers) >= self.num_actors:
            self.warm_end = now
            self.end = now + self.cfg.repeats * self.cfg.duration_s
            self.log(f"benchmark: {self.num_actors} actor(s) warm, timing {self.cfg.repeats} x {self.cfg.duration_s:g} s")
        self._sample_store()

    def shards(self) -> Iterator[Shard]:
        for index in itertools.count():
            now = time.time()
            if self.end is not None and now >= self.end:
                return
            if self.warm_end is None and now >= self.give_up:
                return
            if self.warm_end is None and self.done >= 20 and self.failed == self.done:
                return  # nothing decodes: stop rather than cycle through errors
            yield Shard(index, [self.stream.next()])

    def _sample_store(self, force: bool = False) -> None:
        """Object-store bytes in use across the cluster, at most twice a second."""
        now = time.monotonic()
        if not self._store_ok or (not force and now - self._store_at < 0.5):
            return
        self._store_at = now
        used, capacity = object_store_use()
        if used is None:
            self._store_ok = False
            return
        self.store_peak = max(self.store_peak or 0.0, used)
        self.store_capacity = capacity

    def on_batch(self, record: dict[str, Any], outcomes: list[VideoOutcome], write_s: float) -> None:
        """One actor call's record, completed with its videos' decode tasks and the driver's
        write of their rows: the batch's wall time and every stage of it."""
        decodes = [o.decode for o in outcomes]
        stages = dict(record["stages_s"])
        for d in decodes:
            for name, seconds in (d.stages or {}).items():
                stages[name] += seconds
        stages["write"] += write_s
        decode_wall = sum(d.decode_ms for d in decodes) / 1e3
        self.records.append(
            {
                **record,
                "actor": outcomes[0].actor,
                "videos": len(outcomes),
                "clips": int(sum(o.num_views for o in outcomes)),
                "wall_s": decode_wall + record["actor_wall_s"] + write_s,
                "decode_wall_s": decode_wall,
                "stages_s": stages,
                "decode_rss_mb": max((d.rss_mb or 0.0 for d in decodes), default=0.0),
                "decode_workers": sorted({d.worker for d in decodes}),
            }
        )

    def windows(self, records: list[dict[str, Any]]) -> list[dict[str, float]]:
        """Rates per timed window, each batch counted over the time its actor call ran: a batch
        half inside a window counts half, so a window shorter than a batch still has a rate."""
        d = self.cfg.duration_s
        out = []
        for k in range(self.cfg.repeats):
            lo, hi = self.warm_end + k * d, self.warm_end + (k + 1) * d
            shares = [(_inside(r, lo, hi), r) for r in records]
            out.append(
                {
                    "videos_per_s": sum(f * r["videos"] for f, r in shares) / d,
                    "clips_per_s": sum(f * r["clips"] for f, r in shares) / d,
                }
            )
        return out


def _inside(record: dict[str, Any], lo: float, hi: float) -> float:
    """The fraction of a batch's actor call that ran between ``lo`` and ``hi`` (epoch seconds)."""
    start, end = record["t_start"], record["t_end"]
    if end <= start:
        return 1.0 if lo < end <= hi else 0.0
    return max(0.0, min(end, hi) - max(start, lo)) / (end - start)


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None, "windows": []}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "windows": [round(v, 4) for v in values],
    }


def summarise_trial(trial: Trial, records: list[dict[str, Any]], pipe_cfg: Any) -> dict[str, Any]:
    n = trial.num_actors
    windows = trial.windows(records) if trial.warm_end is not None else []
    videos = _spread([w["videos_per_s"] for w in windows])
    clips = _spread([w["clips_per_s"] for w in windows])
    span = (trial.end - trial.warm_end) if trial.warm_end is not None else 0.0
    timed = [r for r in records if span and _inside(r, trial.warm_end, trial.end) > 0]

    batches = []
    totals = dict.fromkeys((*STAGES, "other"), 0.0)
    for r in timed:
        other = max(0.0, r["wall_s"] - sum(r["stages_s"].values()))
        for name in STAGES:
            totals[name] += r["stages_s"][name]
        totals["other"] += other
        batches.append(
            {
                "actor": r["actor"],
                "videos": r["videos"],
                "clips": r["clips"],
                "wall_ms": round(r["wall_s"] * 1e3, 3),
                "decode_wall_ms": round(r["decode_wall_s"] * 1e3, 3),
                "stages_ms": {name: round(r["stages_s"][name] * 1e3, 3) for name in STAGES},
                "other_ms": round(other * 1e3, 3),
            }
        )
    work = sum(totals.values())
    timed_videos = sum(r["videos"] for r in timed)
    stages = {
        name: {
            "seconds": round(totals[name], 4),
            "share": round(totals[name] / work, 4) if work > 0 else None,
            "ms_per_video": round(1e3 * totals[name] / timed_videos, 3) if timed_videos else None,
        }
        for name in totals
    }
    per_actor: dict[str, dict[str, float]] = {}
    for r in timed:
        a = per_actor.setdefault(r["actor"], {"videos": 0.0, "clips": 0.0, "busy_s": 0.0})
        share = _inside(r, trial.warm_end, trial.end)
        a["videos"] += share * r["videos"]
        a["clips"] += share * r["clips"]
        a["busy_s"] += share * r["actor_wall_s"]
    actors = [
        {
            "worker": name,
            "videos_per_s": round(a["videos"] / span, 4) if span else None,
            "clips_per_s": round(a["clips"] / span, 4) if span else None,
            "busy": round(a["busy_s"] / span, 4) if span else None,
        }
        for name, a in sorted(per_actor.items())
    ]
    utils = [r["gpu_util"] for r in timed if r["gpu_util"] is not None]
    gpu_peaks = [r["gpu_peak_mb"] for r in records if r["gpu_peak_mb"] is not None]
    return {
        "num_actors": n,
        "actor_cpus": pipe_cfg.actor_cpus,
        "actor_gpus": pipe_cfg.actor_gpus,
        "decode_slots": pipe_cfg.decode_slots,
        "clips_per_call": pipe_cfg.clips_per_call,
        "accelerators": sorted({a.get("accelerator", "cpu") for a in trial.actors}),
        "videos_per_s": videos,
        "clips_per_s": clips,
        "per_actor": {
            "videos_per_s": round(videos["median"] / n, 4) if videos["median"] is not None else None,
            "clips_per_s": round(clips["median"] / n, 4) if clips["median"] is not None else None,
            "actors": actors,
        },
        "actor_busy": round(sum(a["busy"] or 0.0 for a in actors) / n, 4) if actors else None,
        "accelerator_util": round(statistics.mean(utils), 1) if utils else None,
        "stages": stages,
        "memory": {
            "actor_peak_rss_mb": round(max((r["actor_rss_mb"] for r in records), default=0.0), 1) or None,
            "decode_peak_rss_mb": round(max((r["decode_rss_mb"] for r in records), default=0.0), 1) or None,
            # decode worker processes this trial used (all its batches, warm-up included): far more
            # than the decode slots means workers are being restarted (grown past recycle_rss_mb)
            "decode_processes": len({w for r in records for w in r.get("decode_workers", ())}) or None,
            "gpu_peak_mb": round(max(gpu_peaks), 1) if gpu_peaks else None,
            "object_store_peak_mb": round(trial.store_peak / 2**20, 1) if trial.store_peak is not None else None,
            "object_store_capacity_mb": round(trial.store_capacity / 2**20, 1) if trial.store_capacity else None,
        },
        # what the scaling plan needs besides the rates (docs/scaling.md)
        "driver_cpu_ms_per_video": round(1e3 * trial.driver_cpu_s / trial.done, 3) if trial.done else None,
        "payload_mb_per_video": round(trial.payload_bytes / trial.done / 1e6, 3) if trial.done else None,
        "decode_workers_per_1000": round(1000 * len(trial.decode_workers) / trial.done, 2) if trial.done else None,
        "unit_videos": pipe_cfg.unit_videos,
        "videos_done": trial.done,
        "videos_failed": trial.failed,
        "errors": trial.errors,
        "timed_s": round(span, 3),
        "note": (
            "fewer than 2 batches per actor and window: the rates rest on parts of batches; "
            "a longer --duration steadies them"
            if len(timed) < 2 * n * trial.cfg.repeats
            else None
        ),
        "warmup_s": round(trial.warm_end - trial.started, 3) if trial.warm_end is not None else None,
        "timed_batches": len(batches),
        "batches": batches,
    }
