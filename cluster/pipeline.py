"""The Ray half of every job: decode tasks feed model actors, and the driver keeps score.

Shape: CPU tasks decode one video each (killable: a hung decode is cancelled at its deadline,
a crashed one is retried once by Ray, and workers are recycled after ``max_decode_calls`` to
shed decord's leaks). Their uint8 views stay in the object store; the driver only sees a small
result and forwards the views' refs to a model actor, which resolves them next to the model.
Model actors are spread over the nodes. When one is lost (its process or its whole node died)
the driver does not wait for it: its calls fail at once (Ray retries none), their batches go
back to the queue for the live actors, and a replacement actor is started, which gets work once
it answers a first call. It may never answer, if the GPU it needs went with a lost node; the run
finishes on the other actors all the same. Decoded views that died with a node are decoded
again, and so is a video whose decode task died with a node. Every video's outcome is recorded
once, keyed by (shard, position), so retries can never produce a second row. A shard is handed to
``on_shard`` as soon as its last video is done. The number of videos in flight is bounded, so
memory and object-store use stay flat whatever the dataset size.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import ray
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayError, TaskCancelledError

from cluster.actors import ModelActor
from worker.decode_task import DecodeResult, ModelSpec, decode_item
from worker.items import VideoItem

__all__ = ["PipelineConfig", "Shard", "VideoOutcome", "run_pipeline"]


@dataclass(frozen=True)
class Shard:
    index: int
    items: Sequence[VideoItem]


@dataclass
class VideoOutcome:
    """What happened to one video; ``probs`` is None exactly when ``error`` is set."""

    shard: int
    position: int
    item: VideoItem
    probs: np.ndarray | None
    error: str | None
    num_views: int = 0
    decode_ms: float = 0.0
    infer_ms: float = 0.0
    worker: str = ""
    decode: DecodeResult | None = None  # the decode task's result (its stage times when timed)


@dataclass(frozen=True)
class PipelineConfig:
    spec: ModelSpec
    num_actors: int = 1
    actor_gpus: float = 0.0
    actor_cpus: float = 1.0
    actor_threads: int | None = None  # torch threads per actor; None = int(actor_cpus)
    decode_slots: int = 1  # decode tasks running at once
    decode_cpus: float = 1.0
    batch_views: int = 30  # clips per actor call (whole videos, so it may run over)
    batch_size: int | None = None  # clips per forward inside the actor; None = the whole call
    decode_timeout_s: float = 300.0
    max_decode_calls: int = 64  # recycle decode workers after this many videos
    decode_retries: int = 1  # a crashed decode worker is retried this often, then it is a row
    actor_restarts: int = 3  # lost model actors replaced, per actor, before the run gives up
    calls_per_actor: int = 2  # in-flight calls per actor: one running, one queued
    extra_video_budget: int = 4
    # The benchmark's switch: the decode tasks and model actors time their steps and every
    # actor call's record goes to ``on_batch``. Off, each step costs a no-op call.
    timed: bool = False
    # Stand-ins for measuring the pipeline without real work (the benchmark's synthetic input):
    # the same call signatures as ``decode_item`` (item, spec, timed) -> (DecodeResult, views)
    # and ``ModelActor``; the views travel by ref from the decode task to the actor, unopened.
    decode_fn: Callable[..., Any] | None = None
    actor_body: type | None = None


@dataclass
class _Decoding:
    key: tuple[int, int]
    item: VideoItem
    views_ref: Any
    deadline: float


@dataclass
class _Decoded:
    key: tuple[int, int]
    item: VideoItem
    result: DecodeResult
    views_ref: Any


@dataclass
class _Batch:
    actor: int
    videos: list[_Decoded] = field(default_factory=list)


class _Pipeline:
    def __init__(
        self,
        shards: Iterable[Shard],
        config: PipelineConfig,
        state_dict_ref: Any,
        on_video: Callable[[VideoOutcome], None],
        on_shard: Callable[[int, list[VideoOutcome]], None],
        on_batch: Callable[[dict[str, Any], list[VideoOutcome]], None] | None = None,
    ):
        self.config = config
        self.on_batch = on_batch
        self.state_dict_ref = state_dict_ref  # held for the whole run: restarted actors re-read it
        self.on_video = on_video
        self.on_shard = on_shard
        # Shards are pulled lazily, so a streaming listing starts work before it ends.
        self.shards: Iterator[Shard] | None = iter(shards)
        self.pending: deque[tuple[tuple[int, int], VideoItem]] = deque()
        self.remaining: dict[int, int] = {}
        self.outcomes: dict[int, dict[int, VideoOutcome]] = {}
        self.decoding: dict[Any, _Decoding] = {}
        self.ready: deque[_Decoded] = deque()
        self.scoring: dict[Any, _Batch] = {}
        # decode_item lives in a module without torch, so decode workers (recycled every
        # max_decode_calls videos) start without loading it; a Ray task runs in the process
        # that imports its function's module.
        self.decode_fn = ray.remote(max_calls=config.max_decode_calls)(config.decode_fn or decode_item).options(
            num_returns=2,
            num_cpus=config.decode_cpus,
            max_retries=config.decode_retries,
        )
        self.actor_cls = ray.remote(config.actor_body or ModelActor).options(
            num_gpus=config.actor_gpus,
            num_cpus=config.actor_cpus,
            # The driver, not Ray, restarts model actors (_replace_actor). A Ray restart would
            # queue the lost actor's calls until it is back, which is never if it needs a GPU
            # that only the lost node had; with no restarts and no retries its calls fail now.
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy="SPREAD",  # one per node first: a node loss costs the fewest actors
        )
        self.actors = [self._new_actor() for _ in range(config.num_actors)]
        self.busy = [0] * len(self.actors)
        self.starting: dict[Any, int] = {}  # first call of a replacement actor -> its index
        self.replacements = 0
        self.videos_per_call = max(1, config.batch_views // max(config.spec.views, 1))
        self.max_in_flight = (
            config.decode_slots + len(self.actors) * config.calls_per_actor * self.videos_per_call + config.extra_video_budget
        )

    # ------------------------------------------------------------------ actors

    def _new_actor(self):
        threads = self.config.actor_threads or max(1, int(self.config.actor_cpus))
        return self.actor_cls.remote(self.config.spec, self.state_dict_ref, threads, self.config.batch_size)

    def describe_actors(self) -> list[dict[str, Any]]:
        return ray.get([a.describe.remote() for a in self.actors])

    # ------------------------------------------------------------------ bookkeeping

    def _in_flight(self) -> int:
        return len(self.decoding) + len(self.ready) + sum(len(b.videos) for b in self.scoring.values())

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

    def _fail(self, key: tuple[int, int], item: VideoItem, error: str, decode_ms: float = 0.0, worker: str = "") -> None:
        self._finish(key, VideoOutcome(key[0], key[1], item, None, error, decode_ms=decode_ms, worker=worker))

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        while self.shards is not None or self.pending or self.decoding or self.ready or self.scoring:
            self._start_decodes()
            self._dispatch()
            refs = list(self.decoding) + list(self.scoring) + list(self.starting)
            if not refs:
                continue
            timeout = None
            if self.decoding:
                timeout = max(0.0, min(d.deadline for d in self.decoding.values()) - time.monotonic())
            done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            if done:  # sweep everything else that is already finished too
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in done:
                if ref in self.decoding:
                    self._on_decoded(ref)
                elif ref in self.scoring:
                    self._on_scored(ref)
                elif ref in self.starting:
                    self._on_started(ref)
            self._expire_decodes()

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
            self.pending.extend(((shard.index, pos), item) for pos, item in enumerate(shard.items))
            return True
        return False

    def _start_decodes(self) -> None:
        if not self.pending:
            self._pull_shard()
        while self.pending and len(self.decoding) < self.config.decode_slots and self._in_flight() < self.max_in_flight:
            key, item = self.pending.popleft()
            meta_ref, views_ref = self.decode_fn.remote(item, self.config.spec, self.config.timed)
            self.decoding[meta_ref] = _Decoding(key, item, views_ref, time.monotonic() + self.config.decode_timeout_s)
            if not self.pending:
                self._pull_shard()

    def _dispatch(self) -> None:
        more_coming = bool(self.pending or self.decoding or self.shards is not None)
        live = set(range(len(self.actors))) - set(self.starting.values())
        for actor in sorted(live, key=lambda a: self.busy[a]):
            while self.ready and self.busy[actor] < self.config.calls_per_actor:
                batch_is_full = sum(d.result.num_views for d in self.ready) >= self.config.batch_views
                if more_coming and not batch_is_full and self.busy[actor] > 0:
                    break  # wait for a fuller batch; this actor still has work
                batch = _Batch(actor)
                views = 0
                while self.ready and (views < self.config.batch_views or not batch.videos):
                    video = self.ready.popleft()
                    batch.videos.append(video)
                    views += video.result.num_views
                ref = self.actors[actor].score.remote(self.config.timed, *[v.views_ref for v in batch.videos])
                self.scoring[ref] = batch
                self.busy[actor] += 1

    def _on_decoded(self, meta_ref: Any) -> None:
        job = self.decoding.pop(meta_ref)
        try:
            result: DecodeResult = ray.get(meta_ref)
        except TaskCancelledError:
            return  # already recorded as a timeout
        except RayError as exc:
            if _caused_by(exc, NodeDiedError):  # the node went, not the video's fault: again
                self.pending.appendleft((job.key, job.item))
                return
            self._fail(job.key, job.item, f"{job.item.key}: decode worker failed ({_short(exc)})")
            return
        if result.error is not None:
            self._finish(job.key, VideoOutcome(job.key[0], job.key[1], job.item, None, result.error,
                                               decode_ms=result.decode_ms, worker=result.worker, decode=result))
        else:
            self.ready.append(_Decoded(job.key, job.item, result, job.views_ref))

    def _on_scored(self, ref: Any) -> None:
        batch = self.scoring.pop(ref)
        self.busy[batch.actor] -= 1
        try:
            probs, infer_ms, worker, record = ray.get(ref)
        except RayActorError:
            self.ready.extendleft(reversed(batch.videos))  # redo the batch on the live actors
            self._replace_actor(batch.actor)
            return
        except RayError as exc:
            if _lost_input(exc):
                for video in batch.videos:  # its decoded views died with a node: decode again
                    self.pending.appendleft((video.key, video.item))
                return
            for video in batch.videos:
                self._fail(video.key, video.item, f"{video.item.key}: inference failed ({_short(exc)})", video.result.decode_ms)
            return
        outcomes = [
            VideoOutcome(
                video.key[0], video.key[1], video.item, p, None, video.result.num_views, video.result.decode_ms, ms, worker,
                decode=video.result,
            )
            for video, p, ms in zip(batch.videos, probs, infer_ms)
        ]
        if self.on_batch is not None and record is not None:
            self.on_batch(record, outcomes)
        for outcome in outcomes:
            self._finish((outcome.shard, outcome.position), outcome)

    def _replace_actor(self, index: int) -> None:
        """Replace a lost actor (a bounded number of times); its other calls are redone too.

        Those calls fail soon or have failed already; their batches go back to the queue now
        and a late result, if one comes, is never looked at (the first outcome of a video stands).
        """
        for ref, batch in list(self.scoring.items()):
            if batch.actor == index:
                del self.scoring[ref]
                self.ready.extendleft(reversed(batch.videos))
        self.busy[index] = 0
        self.replacements += 1
        if self.replacements > self.config.actor_restarts * len(self.actors) + 2:
            raise RuntimeError("model actors keep dying; see the Ray logs (ray logs / dashboard) for the cause")
        try:
            ray.kill(self.actors[index], no_restart=True)  # if it only lost touch, it holds a GPU
        except (RayError, ValueError):
            pass
        self.actors[index] = self._new_actor()
        # Work goes to it once it answers: Ray queues this call until the actor is placed,
        # which takes a free GPU (or CPU) somewhere in the cluster.
        self.starting[self.actors[index].describe.remote()] = index

    def _on_started(self, ref: Any) -> None:
        index = self.starting.pop(ref)
        try:
            ray.get(ref)
        except RayError:  # died before its first call (or its constructor failed): again
            self._replace_actor(index)

    def _expire_decodes(self) -> None:
        now = time.monotonic()
        for ref, job in list(self.decoding.items()):
            if job.deadline <= now:
                del self.decoding[ref]
                ray.cancel(ref, force=True)  # kills the worker process that is stuck in decord
                self._fail(job.key, job.item, f"{job.item.key}: decode timed out after {self.config.decode_timeout_s:g} s")


def _short(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__
    return False


def _lost_input(exc: BaseException) -> bool:
    """Inputs that died with a node: ObjectLostError and all its kinds (owner died,
    reconstruction failed, fetch timed out)."""
    return _caused_by(exc, ObjectLostError)


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
    pipeline = _Pipeline(shards, config, state_dict_ref, on_video, on_shard, on_batch)
    actors = pipeline.describe_actors()
    if on_start is not None:
        on_start(actors)
    pipeline.run()
    return actors
