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

Calls: a call takes about ``batch_views`` clips' worth of groups (the videos per group are
learnt from the replies); while units still run, groups wait up to two ``group_ms`` for a full
call, since the driver's CPU is paid per call and per group, not per video.

Every outcome is recorded once under (shard, position); a shard is written when its last video
is done. A reply for a call the driver gave up on (its actor was replaced) is ignored.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from cluster.config import PipelineConfig, ScoredVideo, Shard, VideoOutcome
from cluster.errors import ClusterError
from cluster.sizing import videos_per_call
from worker.decode_task import DecodeResult
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


@dataclass(frozen=True)
class StartActor:
    actor: int  # (re)start the actor of this index; a previous one there is to be killed
    generation: int


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
        self.videos_per_call = videos_per_call(config.batch_views, config.spec.views)
        self.num_actors = config.num_actors
        self.generation = [0] * self.num_actors
        self.live = [False] * self.num_actors
        self.replacements = 0
        self.in_flight = 0  # videos of unsettled units, less those settled
        self.max_in_flight = max(
            self.unit_videos,
            2 * config.decode_slots * self.unit_videos
            + self.num_actors * config.calls_per_actor * self.videos_per_call
            + config.extra_video_budget,
        )
        # Videos per group, learnt from the replies (groups are not opened): sizes the calls.
        self.videos_seen, self.groups_seen = 1, 1
        # How long groups wait for a full call while units still run. The driver's CPU is paid
        # per call, and at a real decode's pace an idle actor used to take every group alone
        # (232 calls for 1,500 videos in bench/pipeline_ceiling.py's real-pace run, 6 videos a
        # call); short, so that a hung video does not hold the others until its deadline.
        self.hold_s = max(0.05, 2 * config.group_ms / 1000.0)
        self._next_id = 0
        self._decisions: list[Any] = [StartActor(a, 0) for a in range(self.num_actors)]
        self._stall_told = False  # the current wait for a CPU has been told (stall_notice)
        self.actor_asked: list[float | None] = [None] * self.num_actors  # when each was last asked to start
        self._actors_told = False  # ... and the current wait for an actor

    # ------------------------------------------------------------------ the adapter's side

    def take(self, now: float) -> list[Any]:
        """The decisions since the last call, after starting units and calls that fit now."""
        self._start_units(now)
        self._dispatch(now)
        out, self._decisions = self._decisions, []
        for decision in out:
            if isinstance(decision, StartActor):
                self.actor_asked[decision.actor] = now
        return out

    @property
    def finished(self) -> bool:
        return not (self.shards is not None or self.pending or self.careful or self.solo or self.units or self.ready or self.calls)

    def next_deadline(self) -> float:
        """When ``on_tick`` (or ``take``) has something to do: a unit's deadline, or a partial
        call that has waited long enough."""
        deadline = min((u.deadline for u in self.units.values() if u.ended is None), default=float("inf"))
        unplaced = self._unplaced_since()
        if unplaced is not None and not self._stall_told:
            deadline = min(deadline, unplaced + self.config.stall_notice_s)
        starting = self._actors_unplaced_since()
        if starting is not None and not self._actors_told:
            deadline = min(deadline, starting + self.config.stall_notice_s)
        if self.ready and any(self._busy()[a] < self.config.calls_per_actor for a in range(self.num_actors) if self.live[a]):
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
        since = self._actors_unplaced_since()
        if since is not None and not self._actors_told and now - since >= limit:
            self._actors_told = True
            asks = f"{self.config.actor_cpus:g} CPU(s)"
            if self.config.actor_gpus:
                asks = f"{self.config.actor_gpus:g} GPU and {asks}"
            return (f"{self.num_actors - sum(self.live)} model actor(s) have not started in {now - since:.0f} s and none "
                    f"runs: the cluster may have no free GPU or CPU for one (each asks {asks}; `ray status` shows what it "
                    "has); still waiting")
        return None

    def _unplaced_since(self) -> float | None:
        """When the oldest waiting unit was asked for, if no unit has started since; else None."""
        waiting = [u for u in self.units.values() if u.ended is None]
        if not waiting or any(u.deadline != float("inf") for u in waiting):
            return None
        return min(u.submitted for u in waiting)

    def _actors_unplaced_since(self) -> float | None:
        """When the oldest actor still starting was asked for, if none is live; else None."""
        if any(self.live):
            return None
        return min((t for t in self.actor_asked if t is not None), default=None)

    def actor_bound(self) -> bool:
        """Groups wait for an actor: every live actor has all its calls in flight. The driver
        then wakes often (``wake_ms``), as an actor's next call waits for a reply to be seen."""
        if not self.ready:
            return False
        busy = self._busy()
        return all(busy[a] >= self.config.calls_per_actor for a in range(self.num_actors) if self.live[a])

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
        return not all(self.live)

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
        """Cancel the units whose deadline has passed."""
        for unit in [u for u in self.units.values() if u.ended is None and u.deadline <= now]:
            self._decisions.append(CancelUnit(unit.id))
            self._end(unit, TIMED_OUT)

    # ------------------------------------------------------------------ events: model actors

    def on_actor_started(self, actor: int, generation: int) -> None:
        if generation == self.generation[actor]:
            self.live[actor] = True
            self._actors_told = False  # an actor runs again: a later wait is a new stall

    def on_actor_lost(self, actor: int, generation: int, error: str) -> None:
        """Lost while starting or later: its calls go back to the queue and it is replaced
        (a bounded number of times). Late replies of its calls are ignored."""
        if generation != self.generation[actor]:
            return
        for call_id, call in list(self.calls.items()):
            if call.actor == actor:
                del self.calls[call_id]
                self.ready.extendleft(reversed(call.groups))
        self.live[actor] = False
        self.actor_asked[actor] = None  # until its replacement is asked for (take): its wait starts then
        self.replacements += 1
        if self.replacements > self.config.actor_restarts * self.num_actors + 2:
            raise ClusterError(
                f"model actors keep dying ({self.replacements} lost; last: {error}); "
                "see the Ray logs (ray logs / dashboard) for the cause"
            )
        self.generation[actor] += 1
        self._decisions.append(StartActor(actor, self.generation[actor]))

    def on_reply(self, call_id: int, videos: Sequence[ScoredVideo], actor_name: str, record: dict[str, Any] | None = None) -> None:
        """A call answered: every video of its groups, in order, each tagged with its place."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return  # a call given up on (its actor was replaced): the first outcome stands
        self.videos_seen += len(videos)
        self.groups_seen += len(call.groups)
        scored: list[VideoOutcome] = []
        for video in videos:
            found = self._entry(video.decode)
            if found is None:
                continue
            unit, entry = found
            if video.decode.error is None:
                outcome = VideoOutcome(entry.key[0], entry.key[1], entry.item, video.decode, video.probs, None,
                                       video.infer_ms, actor_name, features=video.features)
                scored.append(outcome)
            else:
                outcome = VideoOutcome(entry.key[0], entry.key[1], entry.item, video.decode, None, video.decode.error)
            self._settle(unit, video.decode.place[1], outcome, report=video.decode.error is not None)
        if self.on_batch is not None and record is not None and scored:
            self.on_batch(record, scored)
        for outcome in scored:
            self._finish(outcome)
        self._groups_done(call.groups)

    def on_call_failed(self, call_id: int, error: str, lost: bool = False,
                       contents: Sequence[Sequence[DecodeResult] | str | None] = ()) -> None:
        """A call failed, not by its actor's loss: its groups' frames were ``lost`` with a node
        (decoded again), or scoring failed: the adapter read the groups (``contents``: each
        group's results; None for one whose frames were lost; the error text for one that was its
        stream's error, not a group) and each video that decoded is an error row."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        for group, results in zip(call.groups, contents if not lost else [None] * len(call.groups)):
            unit = self.units.get(group.unit)
            if unit is None:
                continue
            if results is None:
                unit.lost_groups = True  # which videos it held died with it: requeued at settling
                continue
            if isinstance(results, str):  # not a group but its stream's error: the unit failed
                unit.failed_group, unit.error = True, results
                continue
            for result in results:
                found = self._entry(result)
                if found is None:
                    continue
                unit, entry = found
                text = result.error or f"{entry.item.key}: inference failed ({error})"
                self._settle(unit, result.place[1], VideoOutcome(entry.key[0], entry.key[1], entry.item, result, None, text))
        self._groups_done(call.groups)

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

    def _settle(self, unit: _Unit, index: int, outcome: VideoOutcome, report: bool = True) -> None:
        unit.settled.add(index)
        self.in_flight -= 1
        if report:
            self._finish(outcome)

    def _fail(self, entry: Entry, error: str) -> None:
        self._finish(VideoOutcome(entry.key[0], entry.key[1], entry.item, DecodeResult(error=error, worker=""), None, error))

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
        if self.solo:
            return [self.solo.popleft()], 0.0
        if self.careful:
            return [self.careful.popleft() for _ in range(min(self.unit_videos, len(self.careful)))], 0.0
        while len(self.pending) < self.unit_videos and self._pull_shard():
            pass
        return [self.pending.popleft() for _ in range(min(self.unit_videos, len(self.pending)))], self.config.group_ms

    def _start_units(self, now: float) -> None:
        # One unit queued behind each running one: it starts the moment a slot frees.
        while self.running < 2 * self.config.decode_slots and self.in_flight + self.unit_videos <= self.max_in_flight:
            entries, group_ms = self._next_unit()
            if not entries:
                return
            unit = _Unit(self._next_id, entries, group_ms, submitted=now)
            self._next_id += 1
            self.units[unit.id] = unit
            self.running += 1
            self.in_flight += len(entries)
            self._decisions.append(StartUnit(unit.id, [e.item for e in entries], group_ms))

    def _dispatch(self, now: float) -> None:
        if not self.ready:
            return
        more_coming = self.running > 0 and self.ready[0].arrived + self.hold_s > now
        busy = self._busy()
        per_group = self.videos_seen / self.groups_seen
        groups_per_call = max(1, round(self.videos_per_call / per_group))
        for actor in sorted((a for a in range(self.num_actors) if self.live[a]), key=busy.__getitem__):
            while self.ready and busy[actor] < self.config.calls_per_actor:
                if more_coming and len(self.ready) < groups_per_call:
                    break  # wait for a fuller call, a little
                groups = [self.ready.popleft() for _ in range(min(groups_per_call, len(self.ready)))]
                call = _Call(actor, groups)
                self.calls[self._next_id] = call
                self._decisions.append(CallActor(self._next_id, actor, [g.ref for g in groups]))
                self._next_id += 1
                busy[actor] += 1
