"""The Ray half of every job: decode units feed model actors, and the driver keeps score.

Shape: CPU tasks decode *units* of several videos each (``cluster.units``: a streaming task
that sends each video back as it is done, so a hung video times out alone, a crashed worker
costs the others only a resubmission, and a worker whose memory has grown past
``recycle_rss_mb`` is ended and replaced, shedding decord's leaks without paying a worker start
where nothing leaks). A video's payload is its distinct resized frames,
uint8; it stays in the object store and the driver only forwards its ref to a model actor,
which gathers, crops and normalises the views on its device. An actor call carries as many
videos as ``batch_views`` clips (large on a GPU), so the driver's work per video is a small
share of one task and one call.

Model actors are spread over the nodes. Every phase of an actor's life is covered: one that is
lost while it starts (its constructor killed, an OOM while loading the model, its node gone),
before its first call or during any call does not fail the run: its calls fail at once (Ray
retries none), their videos go back to the queue for the live actors, and a replacement is
started, which gets work once it answers. It may never answer, if the GPU it needs went with a
lost node; the run finishes on the other actors all the same. When replacements keep dying the
run ends with one ``ClusterError`` line. Decoded frames that died with a node are decoded again,
and so are videos whose decode task died with a node. Every video's outcome is recorded once,
keyed by (shard, position), so retries can never produce a second row. A shard is handed to
``on_shard`` as soon as its last video is done. The number of videos in flight is bounded, so
memory and object-store use stay flat whatever the dataset size.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import ray
from ray.exceptions import RayActorError, RayError

from cluster.actors import ModelActor
from cluster.config import PipelineConfig, Shard, VideoOutcome
from cluster.errors import ClusterError, lost_input, short_error as _short
from cluster.units import Entry, Group, Unit, node_lost, read_units
from worker.decode_task import DecodeResult, decode_unit

__all__ = ["PipelineConfig", "Shard", "VideoOutcome", "run_pipeline"]


@dataclass
class _Batch:
    actor: int
    groups: list[Group] = field(default_factory=list)

    def videos(self) -> int:
        return sum(_good(g) for g in self.groups)


def _good(group: Group) -> int:
    return sum(r.error is None for r in group.results)


class _Pipeline:
    def __init__(
        self,
        shards: Iterable[Shard],
        config: PipelineConfig,
        state_dict_ref: Any,
        on_video: Callable[[VideoOutcome], None],
        on_shard: Callable[[int, list[VideoOutcome]], None],
        on_batch: Callable[[dict[str, Any], list[VideoOutcome]], None] | None = None,
        on_start: Callable[[list[dict[str, Any]]], None] | None = None,
    ):
        self.config = config
        self.on_batch = on_batch
        self.on_start = on_start
        self.state_dict_ref = state_dict_ref  # held for the whole run: restarted actors re-read it
        self.on_video = on_video
        self.on_shard = on_shard
        # Shards are pulled lazily, so a streaming listing starts work before it ends.
        self.shards: Iterator[Shard] | None = iter(shards)
        self.pending: deque[Entry] = deque()
        self.solo: deque[Entry] = deque()  # videos whose decode worker crashed: retried alone
        self.careful: deque[Entry] = deque()  # videos a grouping unit lost unannounced (cluster.units)
        self.crashes: dict[tuple[int, int], int] = {}
        self.remaining: dict[int, int] = {}
        self.outcomes: dict[int, dict[int, VideoOutcome]] = {}
        self.units: dict[Any, Unit] = {}  # stream -> its unit
        self.ready: deque[Group] = deque()  # decoded groups with a video to score
        self.scoring: dict[Any, _Batch] = {}
        self.unit_videos = max(1, config.unit_videos)
        # decode_unit lives in a module without torch, so decode workers start without loading
        # it; a Ray task runs in the process that imports its function's module. Ray retries no
        # unit: the driver knows which video was in progress and retries the others itself.
        self.decode_task = ray.remote(
            num_returns="streaming",
            max_calls=max(1, config.max_decode_calls // self.unit_videos),
            num_cpus=config.decode_cpus,
            max_retries=0,
        )(decode_unit)
        self.actor_cls = ray.remote(config.actor_body or ModelActor).options(
            num_gpus=config.actor_gpus,
            num_cpus=config.actor_cpus,
            max_concurrency=config.actor_concurrency,
            # The driver, not Ray, restarts model actors (_replace_actor). A Ray restart would
            # queue the lost actor's calls until it is back, which is never if it needs a GPU
            # that only the lost node had; with no restarts and no retries its calls fail now.
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy="SPREAD",  # one per node first: a node loss costs the fewest actors
        )
        # Every actor starts as a replacement does: it gets work once it answers describe(),
        # and one lost while it starts is replaced like one lost later.
        self.actors: list[Any] = []
        self.starting: dict[Any, int] = {}  # describe() of an actor not yet answered -> its index
        self.described: list[dict[str, Any]] = []
        self.started_reported = False
        self.replacements = 0
        for index in range(config.num_actors):
            self.actors.append(None)
            self._start_actor(index)
        self.busy = [0] * len(self.actors)
        self.videos_per_call = max(1, config.batch_views // max(config.spec.views, 1))
        self.max_in_flight = (
            2 * config.decode_slots * self.unit_videos
            + len(self.actors) * config.calls_per_actor * self.videos_per_call
            + config.extra_video_budget
        )

    # ------------------------------------------------------------------ actors

    def _start_actor(self, index: int) -> None:
        threads = self.config.actor_threads or max(1, int(self.config.actor_cpus))
        extra = (self.config.runner_options,) if self.config.runner_options else ()
        actor = self.actor_cls.remote(self.config.spec, self.state_dict_ref, threads, self.config.batch_size, *extra)
        self.actors[index] = actor
        # Ray queues this call until the actor is placed, which takes a free GPU (or CPU).
        self.starting[actor.describe.remote()] = index

    def _on_started(self, ref: Any) -> None:
        index = self.starting.pop(ref)
        try:
            self.described.append(ray.get(ref))
        except RayError as exc:  # lost while starting, or its constructor failed: again
            self._replace_actor(index, exc)
            return
        if not self.started_reported and not self.starting:
            self._report_start()

    def close(self) -> None:
        """End the actors now, not when Ray collects their handles: the next run (a benchmark's
        next actor count) gets their GPUs and CPUs at once."""
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except (RayError, ValueError):
                pass

    def _report_start(self) -> None:
        self.started_reported = True
        if self.on_start is not None:
            self.on_start(list(self.described))

    def _replace_actor(self, index: int, cause: BaseException) -> None:
        """Replace a lost actor (a bounded number of times); its other calls are redone too.

        Those calls fail soon or have failed already; their batches go back to the queue now
        and a late result, if one comes, is never looked at (the first outcome of a video stands).
        """
        for ref, batch in list(self.scoring.items()):
            if batch.actor == index:
                del self.scoring[ref]
                self.ready.extendleft(reversed(batch.groups))
        for ref, i in list(self.starting.items()):
            if i == index:
                del self.starting[ref]
        if index < len(self.busy):
            self.busy[index] = 0
        self.replacements += 1
        if self.replacements > self.config.actor_restarts * len(self.actors) + 2:
            raise ClusterError(
                f"model actors keep dying ({self.replacements} lost; last: {_short(cause)}); "
                "see the Ray logs (ray logs / dashboard) for the cause"
            )
        try:
            ray.kill(self.actors[index], no_restart=True)  # if it only lost touch, it holds a GPU
        except (RayError, ValueError):
            pass
        self._start_actor(index)

    # ------------------------------------------------------------------ bookkeeping

    def _in_flight(self) -> int:
        decoding = sum(len(u.entries) - u.vouched for u in self.units.values())
        ready = sum(len(g.entries) for g in self.ready)
        return decoding + ready + sum(b.videos() for b in self.scoring.values())

    def _finish(self, key: tuple[int, int], outcome: VideoOutcome) -> None:
        shard, position = key
        if position in self.outcomes[shard]:
            return  # a retried call finished twice: the first result stands
        self.outcomes[shard][position] = outcome
        self.remaining[shard] -= 1
        self.on_video(outcome)
        if self.remaining[shard] == 0:
            done = self.outcomes.pop(shard)
            self.on_shard(shard, [done[p] for p in sorted(done)])

    def _fail(self, entry: Entry, error: str, result: DecodeResult | None = None) -> None:
        decode_ms, worker = (result.decode_ms, result.worker) if result is not None else (0.0, "")
        self._finish(entry.key, VideoOutcome(entry.key[0], entry.key[1], entry.item, None, error,
                                             decode_ms=decode_ms, worker=worker, decode=result))

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        while self.shards is not None or self.pending or self.solo or self.careful or self.units or self.ready or self.scoring:
            self._start_units()
            self._dispatch()
            waiting = list(self.units) + list(self.scoring) + list(self.starting)
            if not waiting:
                continue
            timeout = None
            deadline = min((u.deadline for u in self.units.values()), default=math.inf)
            if deadline < math.inf:
                timeout = max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            if done:  # sweep everything else that is already finished too
                done, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            streams = [self.units[r] for r in done if r in self.units]
            if streams:
                self._on_streams(streams)
            for ref in done:
                if ref in self.scoring:
                    self._on_scored(ref)
                elif ref in self.starting:
                    self._on_started(ref)
            self._expire_units()
        if not self.started_reported:
            self._report_start()

    def _pull_shard(self) -> bool:
        """Queue the next non-empty shard's videos; False once the shards are exhausted."""
        while self.shards is not None:
            shard = next(self.shards, None)
            if shard is None:
                self.shards = None
                break
            if not shard.items:
                continue
            self.remaining[shard.index] = len(shard.items)
            self.outcomes[shard.index] = {}
            self.pending.extend(Entry((shard.index, pos), item) for pos, item in enumerate(shard.items))
            return True
        return False

    def _next_unit(self) -> tuple[list[Entry], float]:
        """The next unit's videos, and how long it may gather them into one group (0: careful)."""
        if self.solo:
            return [self.solo.popleft()], 0.0
        if self.careful:
            return [self.careful.popleft() for _ in range(min(self.unit_videos, len(self.careful)))], 0.0
        while len(self.pending) < self.unit_videos and self._pull_shard():
            pass
        return [self.pending.popleft() for _ in range(min(self.unit_videos, len(self.pending)))], self.config.group_ms

    def _start_units(self) -> None:
        budget = max(self.max_in_flight, self.unit_videos)
        # One unit queued behind each running one: it starts the moment a slot frees.
        while len(self.units) < 2 * self.config.decode_slots and self._in_flight() + self.unit_videos <= budget:
            entries, group_ms = self._next_unit()
            if not entries:
                return
            decode_fn = self.config.decode_fn  # None: decode_item, named in the task's own module
            stream = self.decode_task.remote([e.item for e in entries], self.config.spec, self.config.timed, decode_fn, group_ms)
            self.units[stream] = Unit(stream, entries, self.config.decode_timeout_s, group_ms)

    def _dispatch(self) -> None:
        more_coming = bool(self.pending or self.solo or self.careful or self.units or self.shards is not None)
        live = set(range(len(self.actors))) - set(self.starting.values())
        for actor in sorted(live, key=lambda a: self.busy[a]):
            while self.ready and self.busy[actor] < self.config.calls_per_actor:
                if more_coming and self.busy[actor] > 0 and sum(_good(g) for g in self.ready) < self.videos_per_call:
                    break  # wait for a fuller batch; this actor still has work
                batch = _Batch(actor)
                videos = 0
                while self.ready and (videos < self.videos_per_call or not batch.groups):
                    group = self.ready.popleft()
                    batch.groups.append(group)
                    videos += _good(group)
                ref = self.actors[actor].score.remote(self.config.timed, *[g.ref for g in batch.groups])
                self.scoring[ref] = batch
                self.busy[actor] += 1

    def _on_streams(self, units: list[Unit]) -> None:
        events = read_units(units)
        for group in events.decoded:
            for entry, result in zip(group.entries, group.results):
                if result.error is not None:
                    self._fail(entry, result.error, result)
            if _good(group):
                self.ready.append(group)
        for unit in events.finished:
            del self.units[unit.stream]
        for unit, exc in events.failed:
            if self.units.pop(unit.stream, None) is not None:
                self._on_unit_failed(unit, exc)
        limit = self.config.recycle_rss_mb
        if limit > 0:
            for unit in units:
                if unit.stream in self.units and unit.rss_growth_mb >= limit:
                    self._recycle(unit)

    def _recycle(self, unit: Unit) -> None:
        """End a unit whose worker has grown past ``recycle_rss_mb``: cancelling it kills the
        worker (Ray starts a fresh one for the next unit) and its videos not yet vouched for go
        back where they came from. It costs the video in progress, nothing else."""
        del self.units[unit.stream]
        ray.cancel(unit.stream, force=True)
        (self.careful if unit.careful else self.pending).extendleft(reversed(unit.rest()))

    def _on_unit_failed(self, unit: Unit, exc: BaseException) -> None:
        rest = unit.rest()
        if node_lost(exc):  # the node went, not the videos' fault: all of them again
            self.pending.extendleft(reversed(rest))
            return
        if not unit.careful:  # which video it was died with the worker: find out carefully
            self.careful.extendleft(reversed(rest))
            return
        suspect, others = rest[0], rest[1:]
        self.pending.extendleft(reversed(others))
        crashes = self.crashes.get(suspect.key, 0) + 1
        self.crashes[suspect.key] = crashes
        if crashes > self.config.decode_retries:
            self._fail(suspect, f"{suspect.item.key}: decode worker failed ({_short(exc)})")
        else:
            self.solo.append(suspect)  # alone, so a second crash costs nobody else a retry

    def _expire_units(self) -> None:
        now = time.monotonic()
        expired = [u for u in self.units.values() if u.deadline <= now]
        if not expired:
            return
        self._on_streams(expired)  # what came in just now still counts
        for unit in expired:
            if unit.stream not in self.units or unit.deadline > now:
                continue
            del self.units[unit.stream]
            ray.cancel(unit.stream, force=True)  # kills the worker process that is stuck in decord
            rest = unit.rest()
            if not unit.careful or unit.pairs is not None:  # which one hangs is not known: again, carefully
                self.careful.extendleft(reversed(rest))
                continue
            self.pending.extendleft(reversed(rest[1:]))
            self._fail(rest[0], f"{rest[0].item.key}: decode timed out after {self.config.decode_timeout_s:g} s")

    def _on_scored(self, ref: Any) -> None:
        batch = self.scoring.pop(ref)
        self.busy[batch.actor] -= 1
        try:
            reply = ray.get(ref)
        except RayActorError as exc:
            self.ready.extendleft(reversed(batch.groups))  # redo the batch on the live actors
            self._replace_actor(batch.actor, exc)
            return
        except RayError as exc:
            good = [(e, r) for g in batch.groups for e, r in zip(g.entries, g.results) if r.error is None]
            if lost_input(exc):  # its decoded frames died with a node: decode again
                self.pending.extendleft(reversed([e for e, _ in good]))
                return
            for entry, result in good:
                self._fail(entry, f"{entry.item.key}: inference failed ({_short(exc)})", result)
            return
        scored = []
        videos = [(e, r) for g in batch.groups for e, r in zip(g.entries, g.results)]
        for (entry, result), video in zip(videos, reply.videos):
            if result.error is None:  # the others are error rows already
                scored.append(VideoOutcome(entry.key[0], entry.key[1], entry.item, video.probs, None, result.num_views,
                                           result.decode_ms, video.infer_ms, reply.actor, decode=result,
                                           features=video.features))
        if self.on_batch is not None and reply.record is not None and scored:
            self.on_batch(reply.record, scored)
        for outcome in scored:
            self._finish((outcome.shard, outcome.position), outcome)


def run_pipeline(
    shards: Iterable[Shard],
    config: PipelineConfig,
    state_dict_ref: Any,
    on_video: Callable[[VideoOutcome], None] = lambda o: None,
    on_shard: Callable[[int, list[VideoOutcome]], None] = lambda i, o: None,
    on_start: Callable[[list[dict[str, Any]]], None] | None = None,
    on_batch: Callable[[dict[str, Any], list[VideoOutcome]], None] | None = None,
) -> list[dict[str, Any]]:
    """Score every video of ``shards``; returns a description of the actors used.

    With ``config.timed`` each actor call's record (and its videos) goes to ``on_batch``.
    """
    pipeline = _Pipeline(shards, config, state_dict_ref, on_video, on_shard, on_batch, on_start)
    try:
        pipeline.run()
    finally:
        pipeline.close()
    return pipeline.described
