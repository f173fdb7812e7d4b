"""Where every video goes next: the pipeline's scheduling rules as a state machine, without Ray.

``cluster.pipeline`` (the Ray adapter) turns what Ray tells it into calls of the ``on_*``
methods here (events) and carries out what ``take()`` hands back (decisions: start a unit,
cancel a unit, call an actor, start an actor). Outcomes go straight to the job's callbacks
(``on_video``, ``on_shard``, ``on_batch``). Everything here is plain Python with the clock
passed in, so the rules are tested without Ray (tests/cluster/test_scheduler.py).

**What the driver knows about a group, and when.** A decode unit yields one stream item per
group of videos: the ``(DecodeResult, payload)`` pairs. The driver never opens it (on a cluster
that would pull every frame to the driver's node); it forwards the group to a model actor, and
the actor's reply (``ActorReply``) carries each video's ``DecodeResult``, tagged with its place
``(unit, index)`` (``DecodeResult.place``). So a group's size and contents are learnt when its
call is answered, and a decode failure travels with its group: a group whose every video failed
is scored all the same (the actor returns it with no probabilities, at the cost of a share of a
call it shares with other groups), which spares the stream a second, readable item per group.

**Units end before they are settled.** A unit *ends* when its stream does (done, crashed,
cancelled at a deadline, cancelled to recycle its worker, lost with its node) and is *settled*
once every group it sent has been answered or lost: only then does the driver know which of its
videos never reached a group, and those are requeued by one rule (``_requeue``). Until then its
videos count as in flight.

* Deadline: the clock of a unit restarts when it starts and when a group arrives (the next video
  began within ``group_ms`` of that group being sent), so it applies to the unit's oldest video
  not yet known to be in an arrived group. At the deadline the unit is cancelled; in a careful
  unit (one video per group) the first unsettled video is the one that hung and becomes an
  error row, the others go back to the queue; in a grouping unit nobody knows which one hung,
  so its unsettled videos are redone in a careful unit.
* Crash: the same, except the careful unit's first unsettled video is retried alone
  (``decode_retries``) before it is a row.
* Node loss (of the unit or of a group's frames): every unsettled video goes back to the queue.
* Waiting for a CPU: a unit Ray has not started has no deadline (it may queue behind others).
  When units have waited ``stall_notice_s`` and none runs (or model actors have not started in
  that time and none runs), ``stall_notice`` gives the user one line per stall; the run goes on
  waiting.
* Recycling: a decode worker stops its unit after the group that shows its private RSS past
  ``recycle_rss_mb`` and refuses the next unit in its header; the driver cancels that unit
  (which kills the worker: Ray starts a fresh one) and both units' unsettled videos go back to
  the queue. No group's contents are needed for it.

Calls: a call takes as many groups as fit ``clips_per_call`` clips by their bounds (a group holds
at most its unit's videos and ``group_videos``; the driver never opens one), one group at
least; while units still run, groups wait up to two ``group_ms`` for a full call, since the
driver's CPU is paid per call and per group, not per video.

Every outcome is recorded once under (shard, position); a shard is written when its last video
is done. A reply for a call the driver gave up on (its actor was replaced) is ignored.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from cluster.actor_pool import ActorPool, StartActor
from cluster.config import INFRASTRUCTURE, VIDEO, PipelineConfig, ScoredVideo, Shard, VideoOutcome
from cluster.errors import ClusterError, InfrastructureDown
from cluster.sizing import capacity_for, videos_per_call
from worker.spec import DecodeResult
from worker.items import VideoItem

__all__ = ["CRASHED", "DONE", "NODE_LOST", "CallActor", "CancelUnit", "Entry", "Scheduler", "StartActor", "StartUnit"]

Key = tuple[int, int]

# Why a unit ended: the requeue rule's input.
DONE, CRASHED, TIMED_OUT, NODE_LOST, RECYCLED = "done", "crashed", "timed out", "node lost", "recycled"


@dataclass(frozen=True)
class Entry:
    """One video to decode, under its (shard, position) key."""

    key: Key
    item: VideoItem


# ---------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class StartUnit:
    unit: int
    items: list[VideoItem]
    group_ms: float  # 0: careful, every video its own group


@dataclass(frozen=True)
class CancelUnit:
    unit: int  # kill its worker; its stream's later events are not wanted


@dataclass(frozen=True)
class CallActor:
    call: int
    actor: int
    groups: list[Any]  # the groups' refs, unopened


# ---------------------------------------------------------------------------- state


@dataclass
class _Unit:
    id: int
    entries: list[Entry]
    group_ms: float
    deadline: float = float("inf")  # none while it waits for a CPU
    submitted: float = 0.0  # when the driver asked Ray for it
    ended: str | None = None  # why its stream ended; None while it runs
    error: str = ""
    groups_out: int = 0  # groups sent and neither answered nor lost
    lost_groups: bool = False
    failed_group: bool = False  # an item it sent was its task's error, not a group
    settled: set[int] = field(default_factory=set)  # indexes of videos with an outcome

    @property
    def careful(self) -> bool:
        return self.group_ms <= 0


@dataclass
class _Group:
    unit: int
    ref: Any
    arrived: float = 0.0
    failed_on: set[tuple[int, int]] = field(default_factory=set)  # (actor, generation) whose calls with it failed
    ok_since_failed: int = -1  # the run's answered calls when it first failed


@dataclass
class _Call:
    actor: int
    groups: list[_Group]


class Scheduler:
    def __init__(
        self,
        shards: Iterable[Shard],
        config: PipelineConfig,
        on_video: Callable[[VideoOutcome], None] = lambda o: None,
        on_shard: Callable[[int, list[VideoOutcome]], None] = lambda i, o: None,
        on_batch: Callable[[dict[str, Any], list[VideoOutcome]], None] | None = None,
    ):
        self.config = config
        self.on_video, self.on_shard, self.on_batch = on_video, on_shard, on_batch
        self.shards: Iterator[Shard] | None = iter(shards)  # pulled lazily: a streaming listing
        self.pending: deque[Entry] = deque()
        self.careful: deque[Entry] = deque()  # videos a grouping unit lost unannounced
        self.solo: deque[Entry] = deque()  # a crash suspect: retried alone
        self.crashes: dict[Key, int] = {}
        self.remaining: dict[int, int] = {}
        self.outcomes: dict[int, dict[int, VideoOutcome]] = {}
        self.units: dict[int, _Unit] = {}  # not yet settled
        self.running = 0  # units whose stream has not ended
        self.ready: deque[_Group] = deque()
        self.calls: dict[int, _Call] = {}
        self.unit_videos = max(1, config.unit_videos)
        self.videos_per_call = videos_per_call(config.clips_per_call, config.spec.views)
        self.pool = ActorPool(config.num_actors, config.actor_restarts)
        self.decode_slots = config.decode_slots  # grows and shrinks with the cluster (on_capacity)
        self.in_flight = 0  # videos of unsettled units, less those settled
        # How long groups wait for a full call while units still run: two ``group_ms`` (40 ms on
        # CPU; 4 s on a GPU cluster, where a group itself gathers for up to 2 s). The driver's
        # CPU is paid per call (bench/RESULTS.md, "Driver CPU per video after the scheduler
        # rewrite"); a hung video's group still leaves within this wait, long before the decode
        # deadline.
        self.hold_s = max(0.05, 2 * config.group_ms / 1000.0)
        self._next_id = 0
        self._decisions: list[Any] = []
        self._stall_told = False  # the current wait for a CPU has been told (stall_notice)
        self.clock = 0.0  # the latest time an event or ``take`` was given
        # Infrastructure failures: videos whose storage read failed wait out a backoff here
        # (when, entry); their tries so far; when the store last began failing every read
        self.later: list[tuple[float, Entry]] = []
        self.infra_tries: dict[Key, int] = {}
        self.storage_down_since: float | None = None
        self._last_infra_error = ""  # the latest storage failure, for the line that stops the run
        self.failed_calls: dict[int, int] = {}  # actor -> its calls that failed in a row
        self.calls_answered = 0

    @property
    def num_actors(self) -> int:
        return self.pool.size

    @property
    def generation(self) -> list[int]:
        return self.pool.generation

    @property
    def live(self) -> list[bool]:
        return self.pool.live

    @property
    def max_in_flight(self) -> int:
        """Videos decoding, waiting or being scored at most: what keeps memory and the object
        store flat whatever the dataset's size (it follows the cluster's size)."""
        config = self.config
        return max(
            self.unit_videos,
            2 * self.decode_slots * self.unit_videos
            + self.num_actors * config.calls_per_actor * self.videos_per_call
            + config.extra_video_budget,
        )

    # ------------------------------------------------------------------ the adapter's side

    def take(self, now: float) -> list[Any]:
        """The decisions since the last call, after starting units and calls that fit now."""
        self.clock = max(self.clock, now)
        self._start_units(now)
        self._dispatch(now)
        out, self._decisions = self.pool.take_starts(now) + self._decisions, []
        return out

    @property
    def finished(self) -> bool:
        return not (self.shards is not None or self.pending or self.careful or self.solo or self.units or self.ready
                    or self.calls or self.later)

    def next_deadline(self) -> float:
        """When ``on_tick`` (or ``take``) has something to do: a unit's deadline, or a partial
        call that has waited long enough."""
        deadline = min((u.deadline for u in self.units.values() if u.ended is None), default=float("inf"))
        unplaced = self._unplaced_since()
        if unplaced is not None and not self._stall_told:
            deadline = min(deadline, unplaced + self.config.stall_notice_s)
        deadline = min(deadline, self.pool.stall_deadline(self.config.stall_notice_s),
                       self.pool.gpu_deadline(self._gpu_wait_s), min((t for t, _ in self.later), default=float("inf")))
        if self.storage_down_since is not None:
            deadline = min(deadline, self.storage_down_since + self.config.storage_outage_s)
        if self.ready and any(self._busy()[a] < self.config.calls_per_actor for a in self.pool.live_actors()):
            deadline = min(deadline, self.ready[0].arrived + self.hold_s)  # not while every actor is busy
        return deadline

    def stall_notice(self, now: float) -> str | None:
        """A line for the user, once per stall, when decode units have waited
        ``stall_notice_s`` for a CPU and none runs, or model actors that long to start and
        none runs: Ray queues a task or actor it cannot place without a word, so without it a
        cluster that lost its CPUs or GPUs (or never had them free) looks hung."""
        limit = self.config.stall_notice_s
        since = self._unplaced_since()
        if since is not None and not self._stall_told and now - since >= limit:
            self._stall_told = True
            waiting = sum(1 for u in self.units.values() if u.ended is None)
            return (f"{waiting} decode unit(s) have waited {now - since:.0f} s for a CPU and none runs: the cluster has "
                    f"no free CPU for one (each asks {self.config.decode_cpus:g}; `ray status` shows what it has); "
                    "still waiting")
        asks = f"{self.config.actor_cpus:g} CPU(s)"
        if self.config.actor_gpus:
            asks = f"{self.config.actor_gpus:g} GPU and {asks}"
        return self.pool.stall_notice(now, limit, asks)

    def _unplaced_since(self) -> float | None:
        """When the oldest waiting unit was asked for, if no unit has started since; else None."""
        waiting = [u for u in self.units.values() if u.ended is None]
        if not waiting or any(u.deadline != float("inf") for u in waiting):
            return None
        return min(u.submitted for u in waiting)

    def actor_bound(self) -> bool:
        """Groups wait for an actor: every live actor has all its calls in flight. The driver
        then wakes often (``wake_ms``), as an actor's next call waits for a reply to be seen."""
        if not self.ready:
            return False
        busy = self._busy()
        return all(busy[a] >= self.config.calls_per_actor for a in self.pool.live_actors())

    def _busy(self) -> list[int]:
        """Calls in flight per actor."""
        busy = [0] * self.num_actors
        for call in self.calls.values():
            busy[call.actor] += 1
        return busy

    def gauges(self) -> dict[str, float]:
        """The run's state as an operator watches it (``cluster.run_metrics``): read about once
        a second. A unit waits until its first item is read (Ray had no CPU, or its worker was
        starting); GPUs are counted for the actors that answer."""
        units = [u for u in self.units.values() if u.ended is None]
        running = sum(1 for u in units if u.deadline != float("inf"))
        live = sum(self.live)
        return {
            "actors_live": live,
            "actors_wanted": self.num_actors,
            "gpus_held": live * self.config.actor_gpus,
            "units_running": running,
            "units_waiting": len(units) - running,
            "videos_in_flight": self.in_flight,
        }

    def starting(self) -> bool:
        return self.pool.starting()

    @property
    def _gpu_wait_s(self) -> float:
        return self.config.gpu_wait_s if self.config.actor_gpus else 0.0

    # ------------------------------------------------------------------ events: decode units

    def on_unit_started(self, unit_id: int, now: float, retire: bool = False) -> None:
        """Its first item: it runs now (its deadline starts), or its worker asks to be recycled."""
        unit = self.units.get(unit_id)
        if unit is None or unit.ended is not None:
            return
        if retire:
            self._decisions.append(CancelUnit(unit_id))
            self._end(unit, RECYCLED)
            return
        unit.deadline = now + self._timeout(unit)
        self._stall_told = False  # units run again: a later wait is a new stall

    def on_group(self, unit_id: int, ref: Any, now: float) -> None:
        unit = self.units.get(unit_id)
        if unit is None or unit.ended is not None:
            return  # a cancelled unit's late item: its videos are requeued already or will be
        unit.groups_out += 1
        unit.deadline = now + self._timeout(unit)
        self.ready.append(_Group(unit_id, ref, now))

    def on_unit_ended(self, unit_id: int, why: str, error: str = "") -> None:
        """Its stream ended: ``DONE``, ``CRASHED`` (with the error), ``NODE_LOST``."""
        unit = self.units.get(unit_id)
        if unit is not None and unit.ended is None:
            unit.error = error
            self._end(unit, why)

    def on_tick(self, now: float) -> None:
        """Cancel the units whose deadline has passed; end a run meant for GPUs when none came,
        or one whose storage has failed every read for ``storage_outage_s``."""
        self.clock = max(self.clock, now)
        down = self.storage_down_since
        if down is not None and now - down >= self.config.storage_outage_s:
            raise InfrastructureDown(
                f"the storage has failed every read for {now - down:.0f} s (last: {self._last_infra_error}); "
                "stopped, nothing of it counted as the videos' failure"
            )
        wait_s = self._gpu_wait_s
        if now >= self.pool.gpu_deadline(wait_s):
            raise ClusterError(
                f"no GPU came for a model actor in {wait_s:g} s (each asks {self.config.actor_gpus:g} GPU and "
                f"{self.config.actor_cpus:g} CPU(s)); check `ray status` and the autoscaler's GPU node types, "
                "raise --gpu-wait, or pass --gpus 0 to score on CPU"
            )
        for unit in [u for u in self.units.values() if u.ended is None and u.deadline <= now]:
            self._decisions.append(CancelUnit(unit.id))
            self._end(unit, TIMED_OUT)

    # ------------------------------------------------------------------ events: model actors

    def on_actor_started(self, actor: int, generation: int, now: float = 0.0) -> None:
        self.pool.on_started(actor, generation, now)

    def on_actor_lost(self, actor: int, generation: int, error: str) -> None:
        """Lost while starting or later: its calls go back to the queue and it is replaced
        (a bounded number of times). Late replies of its calls are ignored."""
        if generation != self.pool.generation[actor]:
            return
        for call_id, call in list(self.calls.items()):
            if call.actor == actor:
                del self.calls[call_id]
                self.ready.extendleft(reversed(call.groups))
        self.pool.on_lost(actor, generation, error)

    def on_capacity(self, cpus: float, gpus: float) -> None:
        """The cluster grew or shrank to ``cpus`` and ``gpus``: decode slots follow its CPUs, and a
        pool sized to the cluster's GPUs (``PipelineConfig.actors_grow``) gets an actor for each
        new one. Actors are not taken away: one whose node left is lost and replaced."""
        actors, self.decode_slots = capacity_for(self.config, cpus, gpus, self.num_actors)
        self.pool.grow_to(actors)

    def on_reply(self, call_id: int, videos: Sequence[ScoredVideo], actor_name: str, record: dict[str, Any] | None = None) -> None:
        """A call answered: every video of its groups, in order, each tagged with its place."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return  # a call given up on (its actor was replaced): the first outcome stands
        self.failed_calls.pop(call.actor, None)
        self.calls_answered += 1
        scored: list[VideoOutcome] = []
        for video in videos:
            found = self._entry(video.decode)
            if found is None:
                continue
            unit, entry = found
            if video.decode.error is None:
                self.storage_down_since = None  # a video was read: the store serves
                outcome = VideoOutcome(entry.key[0], entry.key[1], entry.item, video.decode, video.probs, None,
                                       video.infer_ms, actor_name, embedding=video.embedding)
                scored.append(outcome)
            elif video.decode.unavailable:  # the store's failure: the video is read again later
                self._storage_failed(unit, entry, video.decode)
                continue
            else:
                outcome = VideoOutcome(entry.key[0], entry.key[1], entry.item, video.decode, None, video.decode.error,
                                       failure=VIDEO)
            self._settle(unit, video.decode.place[1], outcome, report=video.decode.error is not None)
        if self.on_batch is not None and record is not None and scored:
            self.on_batch(record, scored)
        for outcome in scored:
            self._finish(outcome)
        self._groups_done(call.groups)

    def on_call_failed(self, call_id: int, error: str, lost: bool = False,
                       contents: Sequence[Sequence[DecodeResult] | str | None] = ()) -> None:
        """A call failed, not by its actor's loss: its groups' frames were ``lost`` with a node
        (decoded again), or scoring failed (out of memory, a CUDA error): the infrastructure's
        failure, so its groups go to other calls, each up to ``call_retries`` failures, after
        which (and only while other calls are answered) the adapter's reading of them
        (``contents``: each group's results; None for one whose frames were lost; the error text
        for one that was its stream's error) gives ``INFRASTRUCTURE`` rows. An actor with
        ``call_retries`` failed calls in a row is replaced."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        contents = list(contents) if not lost else [None] * len(call.groups)
        contents += [None] * (len(call.groups) - len(contents))
        retry: list[_Group] = []
        done: list[_Group] = []
        for group, results in zip(call.groups, contents):
            unit = self.units.get(group.unit)
            if unit is None:
                done.append(group)
                continue
            if lost or results is None:
                unit.lost_groups = True  # which videos it held died with it: requeued at settling
                done.append(group)
                continue
            if isinstance(results, str):  # not a group but its stream's error: the unit failed
                unit.failed_group, unit.error = True, results
                done.append(group)
                continue
            if not group.failed_on:
                group.ok_since_failed = self.calls_answered
            group.failed_on.add((call.actor, self.pool.generation[call.actor]))
            # Its videos are rows only when it failed on ``call_retries`` actors while other calls
            # were answered: the group's own trouble. A fleet whose every call fails is replaced
            # actor by actor until the run ends with one line (ActorPool.on_lost).
            if len(group.failed_on) < self.config.call_retries or self.calls_answered <= group.ok_since_failed:
                retry.append(group)
                continue
            done.append(group)
            for result in results:
                found = self._entry(result)
                if found is None:
                    continue
                unit, entry = found
                if result.unavailable:  # the store's failure, as in on_reply: read again later
                    self._storage_failed(unit, entry, result)
                    continue
                kind = VIDEO if result.error else INFRASTRUCTURE
                text = result.error or f"{entry.item.key}: inference failed ({error})"
                self._settle(unit, result.place[1], VideoOutcome(entry.key[0], entry.key[1], entry.item, result, None, text,
                                                                 failure=kind))
        self.ready.extendleft(reversed(retry))
        self._groups_done(done)
        if not lost:
            failures = self.failed_calls[call.actor] = self.failed_calls.get(call.actor, 0) + 1
            if failures >= self.config.call_retries and self.pool.live[call.actor]:
                del self.failed_calls[call.actor]
                self.on_actor_lost(call.actor, self.pool.generation[call.actor], f"{failures} calls failed in a row: {error}")

    # ------------------------------------------------------------------ the rules

    def _timeout(self, unit: _Unit) -> float:
        return self.config.decode_timeout_s + unit.group_ms / 1000.0

    def _end(self, unit: _Unit, why: str) -> None:
        unit.ended = why
        self.running -= 1
        self._settle_unit(unit)

    def _groups_done(self, groups: list[_Group]) -> None:
        for group in groups:
            unit = self.units.get(group.unit)
            if unit is not None:
                unit.groups_out -= 1
                self._settle_unit(unit)

    def _settle_unit(self, unit: _Unit) -> None:
        if unit.ended is None or unit.groups_out > 0:
            return
        del self.units[unit.id]
        rest = [e for i, e in enumerate(unit.entries) if i not in unit.settled]
        self.in_flight -= len(rest)
        if rest:
            self._requeue(unit, rest)

    def _requeue(self, unit: _Unit, rest: list[Entry]) -> None:
        """The one rule for a settled unit's videos that never reached an answered group."""
        why = NODE_LOST if unit.lost_groups else CRASHED if unit.failed_group else unit.ended
        if why in (DONE, RECYCLED, NODE_LOST):  # not the videos' fault: all again
            self.pending.extendleft(reversed(rest))
            return
        if not unit.careful:  # which video hung or crashed died with the worker: find out carefully
            self.careful.extendleft(reversed(rest))
            return
        suspect, others = rest[0], rest[1:]  # a careful unit was on its first unsettled video
        self.pending.extendleft(reversed(others))
        if why == TIMED_OUT:
            self._fail(suspect, f"{suspect.item.key}: decode timed out after {self.config.decode_timeout_s:g} s")
            return
        crashes = self.crashes.get(suspect.key, 0) + 1
        self.crashes[suspect.key] = crashes
        if crashes > self.config.decode_retries:
            self._fail(suspect, f"{suspect.item.key}: decode worker failed ({unit.error})")
        else:
            self.solo.append(suspect)  # alone, so a second crash costs nobody else a retry

    def _entry(self, result: DecodeResult) -> tuple[_Unit, Entry] | None:
        unit_id, index = result.place
        unit = self.units.get(unit_id)
        if unit is None or not 0 <= index < len(unit.entries) or index in unit.settled:
            return None
        return unit, unit.entries[index]

    def _settle(self, unit: _Unit, index: int, outcome: VideoOutcome | None, report: bool = True) -> None:
        unit.settled.add(index)
        self.in_flight -= 1
        if report:
            self._finish(outcome)

    def _fail(self, entry: Entry, error: str, kind: str = VIDEO) -> None:
        self._finish(VideoOutcome(entry.key[0], entry.key[1], entry.item, DecodeResult(error=error, worker=""), None, error,
                                  failure=kind))

    def _storage_failed(self, unit: _Unit, entry: Entry, result: DecodeResult) -> None:
        """A video the store could not serve: settled in its unit without an outcome, and read
        again after a backoff, ``infra_retries`` times, then an ``INFRASTRUCTURE`` row. A store
        failing every read trips ``on_tick``."""
        self._settle(unit, result.place[1], None, report=False)
        self._last_infra_error = result.error or ""
        if self.storage_down_since is None:
            self.storage_down_since = self.clock
        tries = self.infra_tries[entry.key] = self.infra_tries.get(entry.key, 0) + 1
        if tries > self.config.infra_retries:
            self._fail(entry, result.error or f"{entry.item.key}: storage unavailable", INFRASTRUCTURE)
            return
        wait = min(30.0, self.config.infra_backoff_s * 2 ** (tries - 1))
        self.later.append((self.clock + wait, entry))

    def _finish(self, outcome: VideoOutcome) -> None:
        done = self.outcomes.get(outcome.shard)
        if done is None or outcome.position in done:
            return  # a retried video finished twice: the first outcome stands
        done[outcome.position] = outcome
        self.remaining[outcome.shard] -= 1
        self.on_video(outcome)
        if self.remaining[outcome.shard] == 0:
            del self.outcomes[outcome.shard]
            self.on_shard(outcome.shard, [done[p] for p in sorted(done)])

    # ------------------------------------------------------------------ starting work

    def _pull_shard(self) -> bool:
        """Queue the next non-empty shard's videos; False once the shards are exhausted."""
        while self.shards is not None:
            shard = next(self.shards, None)
            if shard is None:
                self.shards = None
                break
            if shard.items:
                self.remaining[shard.index] = len(shard.items)
                self.outcomes[shard.index] = {}
                self.pending.extend(Entry((shard.index, pos), item) for pos, item in enumerate(shard.items))
                return True
        return False

    def _next_unit(self) -> tuple[list[Entry], float]:
        """The next unit's videos, and how long it may gather them into one group (0: careful)."""
        if self.later:
            due = [e for t, e in self.later if t <= self.clock]
            if due:
                self.later = [(t, e) for t, e in self.later if t > self.clock]
                self.pending.extendleft(reversed(due))
        if self.solo:
            return [self.solo.popleft()], 0.0
        if self.careful:
            return [self.careful.popleft() for _ in range(min(self.unit_videos, len(self.careful)))], 0.0
        while len(self.pending) < self.unit_videos and self._pull_shard():
            pass
        return [self.pending.popleft() for _ in range(min(self.unit_videos, len(self.pending)))], self.config.group_ms

    def _start_units(self, now: float) -> None:
        # One unit queued behind each running one: it starts the moment a slot frees.
        while self.running < 2 * self.decode_slots and self.in_flight + self.unit_videos <= self.max_in_flight:
            entries, group_ms = self._next_unit()
            if not entries:
                return
            unit = _Unit(self._next_id, entries, group_ms, submitted=now)
            self._next_id += 1
            self.units[unit.id] = unit
            self.running += 1
            self.in_flight += len(entries)
            self._decisions.append(StartUnit(unit.id, [e.item for e in entries], group_ms))

    def _group_bound(self, group: _Group) -> int:
        """The most videos ``group`` can hold, known without opening it: its unit's videos, and
        at most ``group_videos`` (a careful unit's groups hold one)."""
        unit = self.units.get(group.unit)
        if unit is None:
            return 1  # its unit settled (lost): it holds nothing the driver still counts
        if unit.careful:
            return 1
        cap = self.config.group_videos or len(unit.entries)
        return min(cap, len(unit.entries))

    def _next_call(self) -> tuple[int, bool]:
        """How many of the ready groups, from the front, the next call takes, and whether that
        call is full. A call never holds more than ``videos_per_call`` videos by the groups'
        bounds (one group at least): the first call after a slow actor start included, when many
        groups wait (the sizing's clips per call is the device's memory budget)."""
        taken, videos = 0, 0
        for group in self.ready:
            bound = self._group_bound(group)
            if taken and videos + bound > self.videos_per_call:
                return taken, True
            taken, videos = taken + 1, videos + bound
            if videos >= self.videos_per_call:
                return taken, True
        return taken, False

    def _dispatch(self, now: float) -> None:
        if not self.ready:
            return
        more_coming = self.running > 0 and self.ready[0].arrived + self.hold_s > now
        busy = self._busy()
        for actor in sorted(self.pool.live_actors(), key=busy.__getitem__):
            while self.ready and busy[actor] < self.config.calls_per_actor:
                count, full = self._next_call()
                if more_coming and not full:
                    break  # wait for a fuller call, a little
                groups = [self.ready.popleft() for _ in range(count)]
                call = _Call(actor, groups)
                self.calls[self._next_id] = call
                self._decisions.append(CallActor(self._next_id, actor, [g.ref for g in groups]))
                self._next_id += 1
                busy[actor] += 1
