"""The Ray half of every job: decode units feed model actors, and the driver keeps score.

Shape: CPU tasks decode *units* of several videos each (``worker.decode_task.decode_unit``, a
Ray streaming task: one small header item, then one item per group of videos, a group closing
every ``group_ms`` or at ``group_videos``), so a hung video times out alone, a crashed worker
costs the others only a resubmission, and a worker whose memory has grown past
``recycle_rss_mb`` is ended and replaced without paying a worker start where nothing leaks. A video's payload is its distinct resized
frames, uint8; a group stays in the object store and the driver only forwards its ref to a model
actor, which gathers, crops and normalises the views on its device and answers with each video's
``DecodeResult`` and scores (``cluster.config.ActorReply``). An actor call carries about
``clips_per_call`` clips (large on a GPU), so the driver's work is per group and per call, not per
frame.

What happens to each video is decided by ``cluster.scheduler.Scheduler`` (a state machine
without Ray: its docstring has the rules for deadlines, crashes, node loss, recycling and
retries); this module is its adapter: it starts the tasks and actors the scheduler asks for,
waits on Ray (``ray.wait`` on the streams, calls and actor starts, never fetching a group to
the driver; at each event, or on a GPU cluster at most every ``wake_ms`` while groups wait for
an actor and every ``decode_bound_wake_ms`` while none does, so that one wait and one pass of
the scheduler serve all that arrived meanwhile) and tells the scheduler what
happened. Model actors are spread over the nodes; one lost in any phase (its constructor,
idle, in a call) has its calls failed at once (Ray retries none: ``max_restarts=0``), their
groups go to the live actors and a replacement is started, which gets work once it answers
``describe()``. When replacements keep dying the run ends with one ``ClusterError`` line. The
number of videos in flight is bounded, so memory and object-store use stay flat whatever the
dataset size.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import ray
from ray.exceptions import RayActorError, RayError

from cluster.actors import ModelActor
from cluster.config import PipelineConfig, Shard, VideoOutcome
from cluster.errors import lost_input, node_lost, short_error as _short
from cluster.run_metrics import RunMetrics
from cluster.scheduler import CRASHED, DONE, NODE_LOST, CallActor, CancelUnit, Scheduler, StartActor, StartUnit
from worker.decode_task import UNIT_RETIRING, decode_unit

__all__ = ["PipelineConfig", "Shard", "VideoOutcome", "run_pipeline"]

#: How often the driver reads the cluster's size (s): one GCS call, so an autoscaled node's CPUs
#: decode and its GPU gets an actor within this long of joining.
CAPACITY_READ_S = 2.0


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
        on_notice: Callable[[str], None] = lambda line: None,
    ):
        self.config = config
        self.on_start = on_start
        self.on_notice = on_notice
        self.state_dict_ref = state_dict_ref  # held for the whole run: restarted actors re-read it
        self.metrics = RunMetrics(config.run_name or ray.get_runtime_context().get_job_id())
        self.scheduler = Scheduler(shards, config, self.metrics.counting(on_video), on_shard, on_batch)
        self.unit_of: dict[Any, int] = {}  # stream -> unit id
        self.stream_of: dict[int, Any] = {}
        self.header_read: set[int] = set()
        self.calls: dict[Any, tuple[int, int, int, list[Any]]] = {}  # ref -> (call, actor, generation, groups)
        self.describing: dict[Any, tuple[int, int]] = {}  # describe() ref -> (actor, generation)
        self.actors: list[Any] = []  # by slot; the pool grows as GPUs join (Scheduler.on_capacity)
        self.capacity: tuple[float, float] | None = None  # the cluster's (CPUs, GPUs) when last read
        self.capacity_read = float("-inf")
        self.described: list[dict[str, Any]] = []
        self.started_reported = False
        # decode_unit lives in a module without torch, so decode workers start without loading
        # it; a Ray task runs in the process that imports its function's module. Ray retries no
        # unit: the scheduler knows which videos were reached and retries the others itself.
        # What every unit is given, put once: pickled per submission they cost the driver more
        # than the unit's own videos (a preset carries its class names; a stand-in decode is
        # pickled by value). Ray hands a task the value of a ref passed as an argument.
        self.spec_ref = ray.put(config.spec)
        self.decode_fn_ref = ray.put(config.decode_fn)  # None: decode_item, named in the task's own module
        self.decode_task = ray.remote(
            num_returns="streaming",
            max_calls=max(1, config.max_decode_calls // max(1, config.unit_videos)),
            num_cpus=config.decode_cpus,
            max_retries=0,
        )(decode_unit)
        self.actor_cls = ray.remote(config.actor_body or ModelActor).options(
            num_gpus=config.actor_gpus,
            num_cpus=config.actor_cpus,
            max_concurrency=config.actor_concurrency,
            # The driver, not Ray, restarts model actors. A Ray restart would queue the lost
            # actor's calls until it is back, which is never if it needs a GPU that only the
            # lost node had; with no restarts and no retries its calls fail now.
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy="SPREAD",  # one per node first: a node loss costs the fewest actors
        )

    def run(self) -> None:
        scheduler = self.scheduler
        wake_s = self.config.wake_ms / 1000.0
        decode_bound_wake_s = (self.config.decode_bound_wake_ms or self.config.wake_ms) / 1000.0
        while not scheduler.finished:
            self._read_capacity(time.monotonic())
            self._carry_out(scheduler.take(time.monotonic()))
            waiting = list(self.unit_of) + list(self.calls) + list(self.describing)
            if not waiting:
                continue
            # the cluster's next read and the metrics' next report too
            deadline = min(scheduler.next_deadline(), self.capacity_read + CAPACITY_READ_S, self.metrics.next_update)
            timeout = None if deadline == float("inf") else max(0.0, deadline - time.monotonic())
            # fetch_local=False: a stream is ready when its next group exists anywhere; the
            # driver never pulls a group's frames to its own node.
            if wake_s > 0:  # whatever is ready by the next wake-up (or deadline), in one wait
                wake = wake_s if scheduler.actor_bound() else decode_bound_wake_s
                wait_s = wake if timeout is None else min(wake, timeout)
                done, _ = ray.wait(waiting, num_returns=len(waiting), timeout=wait_s, fetch_local=False)
            else:  # at the first event, with everything else that is ready by then
                done, _ = ray.wait(waiting, num_returns=1, timeout=timeout, fetch_local=False)
                if done:
                    done, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0, fetch_local=False)
            for waitable in done:
                if waitable in self.unit_of:
                    self._read_stream(waitable)
                elif waitable in self.calls:
                    self._on_call(waitable)
                elif waitable in self.describing:
                    self._on_described(waitable)
            now = time.monotonic()
            scheduler.on_tick(now)
            self.metrics.update(scheduler.gauges(), now)
            notice = scheduler.stall_notice(now)
            if notice is not None:
                self.on_notice(notice)
        if not self.started_reported:
            self._report_start()

    def _carry_out(self, decisions: list[Any]) -> None:
        for decision in decisions:
            if isinstance(decision, CallActor):
                ref = self.actors[decision.actor].score.remote(self.config.timed, *decision.groups)
                generation = self.scheduler.generation[decision.actor]
                self.calls[ref] = (decision.call, decision.actor, generation, decision.groups)
            elif isinstance(decision, StartUnit):
                config = self.config
                stream = self.decode_task.remote(decision.items, self.spec_ref, config.timed, self.decode_fn_ref,
                                                 decision.group_ms, decision.unit, config.recycle_rss_mb, config.group_videos)
                self.unit_of[stream] = decision.unit
                self.stream_of[decision.unit] = stream
            elif isinstance(decision, CancelUnit):
                stream = self._forget(decision.unit)
                if stream is not None:
                    ray.cancel(stream, force=True)  # kills the worker (stuck in decord, or grown)
            elif isinstance(decision, StartActor):
                self._start_actor(decision.actor, decision.generation)

    def _read_capacity(self, now: float) -> None:
        """Tell the scheduler when the cluster grew or shrank (an autoscaler adding GPU nodes for
        the run's waiting actors, a node lost or scaled down), read every ``CAPACITY_READ_S``."""
        if now < self.capacity_read + CAPACITY_READ_S:
            return
        self.capacity_read = now
        total = ray.cluster_resources()
        capacity = (float(total.get("CPU", 0)), float(total.get("GPU", 0)))
        if capacity != self.capacity:
            self.capacity = capacity
            self.scheduler.on_capacity(*capacity)

    # ------------------------------------------------------------------ decode units

    def _read_stream(self, stream: Any) -> None:
        """Take the stream's next item (ray.wait found it ready): the header (read: it is small)
        or a group (not read). One per wake-up: a second ready item makes the stream ready again
        for the next ``ray.wait``, and asking now would cost a wait of its own."""
        unit = self.unit_of[stream]
        ref = next(stream, None)  # None: it has ended
        # Ray ends a failed stream with one error item: an item taken as the stream finishes is
        # a group (or the header) only if the task succeeded. Asked once: it costs a get.
        finished = stream.is_finished()
        failure = self._failure(stream) if finished else None
        if ref is not None and failure is None and unit not in self.header_read:
            self.header_read.add(unit)
            try:
                header = ray.get(ref)
            except RayError as exc:  # the task never ran
                self._ended(unit, exc)
                return
            self.scheduler.on_unit_started(unit, time.monotonic(), retire=header == UNIT_RETIRING)
        elif ref is not None and failure is None:
            self.scheduler.on_group(unit, ref, time.monotonic())
        if finished and unit in self.stream_of:
            if failure is None:
                self._forget(unit)
                self.scheduler.on_unit_ended(unit, DONE)
            else:
                self._ended(unit, failure)

    @staticmethod
    def _failure(stream: Any) -> BaseException | None:
        try:
            ray.get(stream.completed())
        except RayError as exc:
            return exc
        return None

    def _ended(self, unit: int, exc: BaseException) -> None:
        self._forget(unit)
        self.scheduler.on_unit_ended(unit, NODE_LOST if node_lost(exc) else CRASHED, _short(exc))

    def _forget(self, unit: int) -> Any:
        """Stop watching a unit's stream (ended, or about to be cancelled); returns it."""
        stream = self.stream_of.pop(unit, None)
        if stream is not None:
            del self.unit_of[stream]
        self.header_read.discard(unit)
        return stream

    # ------------------------------------------------------------------ model actors

    def _start_actor(self, index: int, generation: int) -> None:
        if index == len(self.actors):
            self.actors.append(None)  # a slot the pool grew
        if self.actors[index] is not None:
            try:
                ray.kill(self.actors[index], no_restart=True)  # if it only lost touch, it holds a GPU
            except (RayError, ValueError):
                pass
        for ref, (i, _) in list(self.describing.items()):
            if i == index:
                del self.describing[ref]
        threads = self.config.actor_threads or max(1, int(self.config.actor_cpus))
        extra = (self.config.runner_options,) if self.config.runner_options else ()
        actor = self.actor_cls.remote(self.config.spec, self.state_dict_ref, threads, self.config.clips_per_forward, *extra)
        self.actors[index] = actor
        # Ray queues this call until the actor is placed, which takes a free GPU (or CPU).
        self.describing[actor.describe.remote()] = (index, generation)

    def _on_described(self, ref: Any) -> None:
        index, generation = self.describing.pop(ref)
        try:
            self.described.append(ray.get(ref))
        except RayError as exc:  # lost while starting, or its constructor failed: again
            self.scheduler.on_actor_lost(index, generation, _short(exc))
            return
        self.scheduler.on_actor_started(index, generation, time.monotonic())
        if not self.started_reported and not self.scheduler.starting():
            self._report_start()

    def _report_start(self) -> None:
        self.started_reported = True
        if self.on_start is not None:
            self.on_start(list(self.described))

    def _on_call(self, ref: Any) -> None:
        call, actor, generation, groups = self.calls.pop(ref)
        try:
            reply = ray.get(ref)
        except RayActorError as exc:
            self.scheduler.on_actor_lost(actor, generation, _short(exc))
            return
        except RayError as exc:
            if lost_input(exc):  # its groups' frames died with a node: decoded again
                self.scheduler.on_call_failed(call, _short(exc), lost=True)
            else:  # scoring failed: which videos the groups held is read from the groups (rare)
                self.scheduler.on_call_failed(call, _short(exc), contents=[_group_results(g) for g in groups])
            return
        self.scheduler.on_reply(call, reply.videos, reply.actor, reply.record)

    def close(self) -> None:
        """End the actors and the decode units still watched (a run that stopped early) now,
        not when Ray collects their handles: the next run (a benchmark's next actor count) gets
        their GPUs and CPUs at once, and no queued unit starts after the run."""
        self.metrics.close(time.monotonic())
        for stream in list(self.unit_of):
            try:
                ray.cancel(stream, force=True)
            except (RayError, ValueError, TypeError):
                pass
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except (RayError, ValueError, TypeError):
                pass


def _group_results(ref: Any) -> list[Any] | str | None:
    """A group's decode results, read after its call failed; None if its frames were lost, the
    error text if it cannot be read otherwise (the item was its stream's error)."""
    try:
        return [result for result, _ in ray.get(ref)]
    except RayError as exc:
        return None if lost_input(exc) else _short(exc)


def run_pipeline(
    shards: Iterable[Shard],
    config: PipelineConfig,
    state_dict_ref: Any,
    on_video: Callable[[VideoOutcome], None] = lambda o: None,
    on_shard: Callable[[int, list[VideoOutcome]], None] = lambda i, o: None,
    on_start: Callable[[list[dict[str, Any]]], None] | None = None,
    on_batch: Callable[[dict[str, Any], list[VideoOutcome]], None] | None = None,
    on_notice: Callable[[str], None] = lambda line: None,
) -> list[dict[str, Any]]:
    """Score every video of ``shards``; returns a description of the actors used.

    With ``config.timed`` each actor call's record (and its videos) goes to ``on_batch``;
    ``on_notice`` gets a line for the user when the run waits on the cluster (decode units or
    model actors that Ray cannot place: ``Scheduler.stall_notice``).
    """
    pipeline = _Pipeline(shards, config, state_dict_ref, on_video, on_shard, on_batch, on_start, on_notice)
    try:
        pipeline.run()
    finally:
        pipeline.close()
    return pipeline.described
