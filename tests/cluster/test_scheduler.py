"""The scheduling rules (``cluster.scheduler``), without Ray: a simulated cluster plays the
decode units, model actors and nodes, and the scheduler's decisions are carried out by it.

Directed cases pin each rule (a deadline, a crash, recycling, a lost actor, a late reply); the
randomised test drives many seeded interleavings of every event, losses, duplicates and late
answers included, and checks that every video ends with exactly one outcome, the right one for
its file, and that the work in flight stays within the scheduler's bound.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

import x3d
from cluster.config import PipelineConfig, ScoredVideo, Shard, VideoOutcome
from cluster.errors import ClusterError
from cluster.sizing import GPU_CLIPS_PER_GROUP, ClusterShape, size_pipeline
from cluster.scheduler import CRASHED, DONE, NODE_LOST, CallActor, CancelUnit, Scheduler, StartActor, StartUnit
from worker.spec import DecodeResult, ModelSpec
from worker.items import VideoItem

SPEC = ModelSpec(x3d.get_preset("x3d_s"), 1)
ROOT = __file__.rsplit("/tests/", 1)[0]
TIMEOUT_S = 10.0


def _config(**changes: Any) -> PipelineConfig:
    base = dict(spec=SPEC, num_actors=2, decode_slots=2, unit_videos=4, clips_per_call=3, group_ms=20.0,
                decode_timeout_s=TIMEOUT_S, decode_retries=1, actor_restarts=1000)
    base.update(changes)
    return PipelineConfig(**base)


def _shards(kinds: list[str], per_shard: int = 5) -> list[Shard]:
    """Videos whose name says what decoding them does: good, bad (a decode error), hang, kill."""
    items = [VideoItem(f"{i:03d}-{kind}", f"/v/{i}", None) for i, kind in enumerate(kinds)]
    return [Shard(s, items[i : i + per_shard]) for s, i in enumerate(range(0, len(items), per_shard))]


def _kind(item: VideoItem) -> str:
    return item.key.split("-", 1)[1]


@dataclass
class _SimUnit:
    id: int
    items: list[VideoItem]
    careful: bool
    started: bool = False
    next: int = 0
    group: list[tuple[DecodeResult, Any]] = field(default_factory=list)
    hung: bool = False
    over: bool = False


class Sim:
    """A cluster as the adapter would report it, one event at a time, chosen by ``rng``."""

    def __init__(self, kinds: list[str], rng: random.Random, config: PipelineConfig | None = None, chaos: float = 0.0):
        self.rng, self.chaos = rng, chaos
        self.config = config or _config()
        self.shards = _shards(kinds)
        self.videos: dict[tuple[int, int], list[VideoOutcome]] = {}
        self.written: dict[int, list[VideoOutcome]] = {}
        self.scheduler = Scheduler(self.shards, self.config, on_video=self._video, on_shard=self._shard)
        self.now = 0.0
        self.units: dict[int, _SimUnit] = {}
        self.calls: dict[int, tuple[int, int, list[Any]]] = {}  # call -> (actor, generation, groups)
        self.starting: list[tuple[int, int]] = []  # actors asked to start, not yet answered
        self.slots_seen = 0  # the most decode slots the cluster has had: a shrink lets running units finish
        self.bound_seen = 0  # ... and the largest bound on the videos in flight
        self.late: list[tuple[int, list[Any]]] = []  # calls of lost actors, which may still answer
        self.max_in_flight = 0

    def _video(self, outcome: VideoOutcome) -> None:
        self.videos.setdefault((outcome.shard, outcome.position), []).append(outcome)

    def _shard(self, index: int, outcomes: list[VideoOutcome]) -> None:
        assert index not in self.written, f"shard {index} written twice"
        self.written[index] = outcomes

    def carry_out(self) -> None:
        for decision in self.scheduler.take(self.now):
            if isinstance(decision, StartUnit):
                self.units[decision.unit] = _SimUnit(decision.unit, decision.items, decision.group_ms <= 0)
            elif isinstance(decision, CancelUnit):
                self.units.pop(decision.unit).over = True
            elif isinstance(decision, CallActor):
                self.calls[decision.call] = (decision.actor, self.scheduler.generation[decision.actor], decision.groups)
            elif isinstance(decision, StartActor):
                self.starting = [s for s in self.starting if s[0] != decision.actor] + [(decision.actor, decision.generation)]
        s = self.scheduler
        self.max_in_flight = max(self.max_in_flight, s.in_flight)
        self.slots_seen, self.bound_seen = max(self.slots_seen, s.decode_slots), max(self.bound_seen, s.max_in_flight)
        assert 0 <= s.in_flight <= self.bound_seen, (s.in_flight, self.bound_seen)
        assert s.running <= 2 * self.slots_seen
        assert len(s.ready) + sum(len(c.groups) for c in s.calls.values()) <= self.bound_seen
        for call in s.calls.values():  # no call of several groups holds more than the sized videos
            assert len(call.groups) == 1 or sum(len(g.ref) for g in call.groups) <= s.videos_per_call

    # ------------------------------------------------------------------ what the cluster does

    def _progress(self, unit: _SimUnit) -> None:
        s = self.scheduler
        if not unit.started:
            unit.started = True
            s.on_unit_started(unit.id, self.now, retire=self.rng.random() < 0.1 * self.chaos)
            return
        if unit.next == len(unit.items):
            self._send(unit)
            del self.units[unit.id]
            s.on_unit_ended(unit.id, DONE)
            return
        item = unit.items[unit.next]
        kind = _kind(item)
        if kind == "hang":
            unit.hung = True  # until its deadline
            return
        if kind == "kill":
            del self.units[unit.id]  # the group being gathered dies with the worker
            s.on_unit_ended(unit.id, CRASHED, "worker died")
            return
        result = DecodeResult(error=f"{item.key}: broken" if kind == "bad" else None, num_views=1, place=(unit.id, unit.next))
        unit.group.append((result, None if kind == "bad" else "frames"))
        unit.next += 1
        full = 0 < self.config.group_videos <= len(unit.group)  # the decode task closes a full group
        if unit.careful or full or self.rng.random() < 0.5:
            self._send(unit)
            if self.rng.random() < 0.05 * self.chaos:  # grew too big: stops after this group
                del self.units[unit.id]
                s.on_unit_ended(unit.id, DONE)

    def _send(self, unit: _SimUnit) -> None:
        if unit.group:
            self.scheduler.on_group(unit.id, unit.group, self.now)
            unit.group = []

    def _answer(self, call: int, groups: list[Any]) -> None:
        videos = [ScoredVideo(r, None if r.error else [1.0], 1.0) for group in groups for r, _ in group]
        self.scheduler.on_reply(call, videos, "actor:1")

    def step(self) -> bool:
        """One event; False when nothing can happen but the clock."""
        rng, s = self.rng, self.scheduler
        choices: list[Any] = []
        live = [u for u in self.units.values() if not u.hung]
        if live:
            choices += [lambda: self._progress(rng.choice(live))] * 3
        if self.calls:
            choices += [self._answer_one] * 3
        if self.starting:
            choices.append(self._start_one)
        if self.chaos and rng.random() < 0.15 * self.chaos:  # faults are the exception
            if self.calls:
                choices.append(self._fail_one_call)
            choices.append(self._lose_actor)
            if self.units:
                choices.append(lambda: self._lose_unit(rng.choice(list(self.units.values()))))
            if self.late:
                choices.append(self._late_answer)
            choices.append(self._capacity)
        if not choices:
            return False
        rng.choice(choices)()
        return True

    def _answer_one(self) -> None:
        call = self.rng.choice(list(self.calls))
        actor, generation, groups = self.calls.pop(call)
        self._answer(call, groups)
        if self.rng.random() < 0.1 * self.chaos:  # delivered twice
            self._answer(call, groups)

    def _start_one(self) -> None:
        actor, generation = self.starting.pop(self.rng.randrange(len(self.starting)))
        if self.rng.random() < 0.2 * self.chaos:
            self._lost(actor, generation)
        else:
            self.scheduler.on_actor_started(actor, generation)

    def _capacity(self) -> None:
        """The cluster grew or shrank (nodes joined or left; a leaving node's actors and units
        are lost by their own events)."""
        self.scheduler.on_capacity(cpus=self.rng.choice([1, 2, 3, 5]), gpus=self.rng.choice([0, 1, 2, 3]))

    def _lose_actor(self) -> None:
        actor = self.rng.randrange(self.scheduler.num_actors)
        generation = self.scheduler.generation[actor]
        if (actor, generation) in self.starting:
            self.starting.remove((actor, generation))
        self._lost(actor, generation)

    def _lost(self, actor: int, generation: int) -> None:
        for call, (a, g, groups) in list(self.calls.items()):
            if a == actor:
                del self.calls[call]
                self.late.append((call, groups))
        self.scheduler.on_actor_lost(actor, generation, "actor died")

    def _late_answer(self) -> None:
        call, groups = self.late.pop(self.rng.randrange(len(self.late)))
        self._answer(call, groups)

    def _fail_one_call(self) -> None:
        call = self.rng.choice(list(self.calls))
        actor, generation, groups = self.calls.pop(call)
        if self.rng.random() < 0.5:
            self.scheduler.on_call_failed(call, "frames lost", lost=True)
        else:
            self.scheduler.on_call_failed(call, "CUDA error", contents=[[r for r, _ in g] for g in groups])

    def _lose_unit(self, unit: _SimUnit) -> None:
        del self.units[unit.id]
        self.scheduler.on_unit_ended(unit.id, NODE_LOST, "node died")

    def run(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            self.carry_out()
            if self.scheduler.finished:
                return
            if not self.step():
                self.now = self.scheduler.next_deadline()
                assert self.now < float("inf"), "stuck: nothing to do and no deadline"
                for unit in self.units.values():
                    unit.hung = False  # a unit cancelled at its deadline stays hung no more
                self.scheduler.on_tick(self.now)
        raise AssertionError("did not finish")

    def check(self, kinds: list[str]) -> None:
        keys = [(sh.index, p) for sh in self.shards for p in range(len(sh.items))]
        assert sorted(self.videos) == keys
        for key, outcomes in self.videos.items():
            assert len(outcomes) == 1, (key, outcomes)
        assert sorted(self.written) == [sh.index for sh in self.shards]
        for shard in self.shards:
            assert [o.position for o in self.written[shard.index]] == list(range(len(shard.items)))
        for key, (outcome,) in self.videos.items():
            kind = _kind(outcome.item)
            assert (outcome.probs is None) == (outcome.error is not None)
            if kind == "hang":
                assert outcome.error == f"{outcome.item.key}: decode timed out after {TIMEOUT_S:g} s"
            elif kind == "kill":
                assert outcome.error.startswith(f"{outcome.item.key}: decode worker failed (")
            elif kind == "bad":
                assert outcome.error == f"{outcome.item.key}: broken"
            elif not self.chaos:
                assert outcome.error is None and outcome.probs == [1.0], outcome.error
            else:
                assert outcome.error is None or "inference failed" in outcome.error, outcome.error


KINDS = ["good"] * 12 + ["bad", "hang", "kill"]


def test_every_video_has_one_outcome_without_faults():
    sim = Sim(["good"] * 9 + ["bad"], random.Random(0))
    sim.run()
    sim.check(["good"] * 9 + ["bad"])


def test_a_hang_and_a_crash_in_one_unit():
    kinds = ["good", "hang", "good", "kill", "good"]
    sim = Sim(kinds, random.Random(1))
    sim.run()
    sim.check(kinds)
    assert sim.scheduler.crashes  # the killer was retried alone before it became a row


def test_a_video_that_hangs_in_a_careful_unit_is_its_own_error_row():
    config = _config(unit_videos=3, decode_slots=1)
    sim = Sim(["good", "hang", "good"], random.Random(2), config)
    sim.run()
    sim.check(["good", "hang", "good"])


def test_a_worker_asking_to_be_recycled_has_its_unit_cancelled_and_requeued():
    scheduler = Scheduler(_shards(["good"] * 4), _config(num_actors=1))
    first = [d for d in scheduler.take(0.0) if isinstance(d, StartUnit)][0]
    scheduler.on_unit_started(first.unit, 0.0, retire=True)
    decisions = scheduler.take(0.0)
    assert CancelUnit(first.unit) in decisions
    again = [d for d in decisions if isinstance(d, StartUnit)]
    assert again and again[-1].items == first.items  # the same videos, in a new unit


def test_a_late_reply_from_a_replaced_actor_is_ignored():
    scheduler = Scheduler(_shards(["good"]), _config(num_actors=1, unit_videos=1))
    seen: list[VideoOutcome] = []
    scheduler.on_video = seen.append
    unit = [d for d in scheduler.take(0.0) if isinstance(d, StartUnit)][0].unit
    scheduler.on_actor_started(0, 0)
    scheduler.on_unit_started(unit, 0.0)
    group = [(DecodeResult(None, 1, place=(unit, 0)), "frames")]
    scheduler.on_group(unit, group, 0.0)
    scheduler.on_unit_ended(unit, DONE)
    (call,) = [d for d in scheduler.take(0.0) if isinstance(d, CallActor)]
    scheduler.on_actor_lost(0, 0, "gone")
    (restart,) = [d for d in scheduler.take(0.0) if isinstance(d, StartActor)]
    scheduler.on_reply(call.call, [ScoredVideo(group[0][0], [0.5])], "old")  # late: ignored
    assert seen == []
    scheduler.on_actor_started(0, restart.generation)
    (again,) = [d for d in scheduler.take(0.0) if isinstance(d, CallActor)]
    assert again.groups == [group]
    scheduler.on_reply(again.call, [ScoredVideo(group[0][0], [0.25])], "new")
    assert [(o.probs, o.actor) for o in seen] == [([0.25], "new")] and scheduler.finished


def test_an_all_failed_group_becomes_error_rows_through_its_call():
    sim = Sim(["bad"] * 6, random.Random(3))
    sim.run()
    sim.check(["bad"] * 6)
    assert all(o.worker == o.decode.worker for (o,) in sim.videos.values())


def test_actors_that_keep_dying_end_the_run_with_one_line():
    scheduler = Scheduler(_shards(["good"]), _config(num_actors=1, actor_restarts=2))
    scheduler.take(0.0)
    with pytest.raises(ClusterError, match="model actors keep dying"):
        for generation in range(10):
            scheduler.on_actor_lost(0, generation, "OOM")


INTERLEAVINGS = 2000


def test_random_interleavings_of_every_event():
    """Seeded: each seed is one interleaving of unit progress, groups, replies (some twice),
    actor losses and starts, failed calls, lost frames, node losses, recycling, deadlines and
    late answers, the cluster growing and shrinking (a pool that follows its GPUs gains actors,
    decode slots follow its CPUs), over a mix of good, broken, hanging and worker-killing videos."""
    bound = 0
    for seed in range(INTERLEAVINGS):
        rng = random.Random(seed)
        kinds = KINDS[:]
        rng.shuffle(kinds)
        config = _config(unit_videos=rng.choice([1, 3, 5]), decode_slots=rng.choice([1, 2]),
                         num_actors=rng.choice([1, 2]), clips_per_call=rng.choice([1, 4]), group_videos=rng.choice([0, 1, 2]))
        if seed % 2:  # a GPU pool that follows the cluster
            config = dataclasses.replace(config, actor_gpus=1.0, actor_cpus=1.0, actors_grow=True)
        sim = Sim(kinds, rng, config, chaos=1.0)
        sim.run()
        sim.check(kinds)
        bound = max(bound, sim.max_in_flight)
    assert bound > 0


def test_groups_wait_a_little_for_a_full_call_but_not_for_busy_actors():
    # groups of up to two videos: a call (four) takes two, so one alone is not a full call
    config = _config(num_actors=1, unit_videos=8, clips_per_call=4, calls_per_actor=1, group_ms=20.0, group_videos=2)
    scheduler = Scheduler(_shards(["good"] * 8), config)
    unit = [d for d in scheduler.take(0.0) if isinstance(d, StartUnit)][0].unit
    scheduler.on_actor_started(0, 0)
    scheduler.on_unit_started(unit, 0.0)
    group = [(DecodeResult(None, 1, place=(unit, 0)), "frames")]
    scheduler.on_group(unit, group, 1.0)
    assert scheduler.take(1.0) == []  # one video; a call takes four, and the unit still runs
    assert scheduler.next_deadline() == 1.0 + scheduler.hold_s  # the wait is short
    (call,) = scheduler.take(1.0 + scheduler.hold_s)
    assert isinstance(call, CallActor) and call.groups == [group]
    scheduler.on_group(unit, [(DecodeResult(None, 1, place=(unit, 1)), "frames")], 2.0)
    assert scheduler.take(5.0) == []  # the only actor is busy: no deadline for the wait
    assert scheduler.next_deadline() == 2.0 + TIMEOUT_S + config.group_ms / 1000.0  # the unit's own


def test_the_first_call_after_a_slow_actor_start_holds_no_more_than_the_sized_clips():
    """While a GPU actor loads its model, full groups pile up; its first call must still carry
    at most the clips the sizing chose (the device's memory budget), not every waiting group.
    The job's own GPU sizing, X3D-S at 10 views on 1 GPU and 16 CPUs, with 80 groups waiting."""
    spec = ModelSpec(x3d.get_preset("x3d_s"), 10)
    config = size_pipeline(ClusterShape(cpus=16, gpus=1, nodes=1, node_cpus=16, cpu_nodes=1), spec)
    per_group = config.group_videos
    assert per_group * 10 <= GPU_CLIPS_PER_GROUP < config.clips_per_call
    scheduler = Scheduler(_shards(["good"] * 80 * per_group, per_shard=per_group), config)
    units = [d for d in scheduler.take(0.0) if isinstance(d, StartUnit)]
    waiting = []
    while len(waiting) < 80 and units:
        for unit in units:
            scheduler.on_unit_started(unit.unit, 0.0)
            for g in range(0, len(unit.items), per_group):
                group = [(DecodeResult(None, 10, place=(unit.unit, i)), "frames")
                         for i in range(g, min(g + per_group, len(unit.items)))]
                scheduler.on_group(unit.unit, group, 1.0)
                waiting.append(group)
        assert not any(isinstance(d, CallActor) for d in scheduler.take(1.0))  # no actor is live yet
        units = [d for d in scheduler.take(1.0) if isinstance(d, StartUnit)]
    assert len(waiting) >= 10
    scheduler.on_actor_started(0, 0)
    calls = [d for d in scheduler.take(100.0) if isinstance(d, CallActor)]
    for call in calls:
        clips = sum(result.num_views for group in call.groups for result, _ in group)
        assert clips <= config.clips_per_call, f"a call of {len(call.groups)} groups, {clips} clips: sized {config.clips_per_call}"
        assert len(call.groups) == 2  # as many as fit: two full X3D-S groups
    assert len(calls) == config.calls_per_actor


def test_decode_slots_follow_the_cluster_and_a_gpu_pool_grows_with_it():
    """Capacity events: a GPU joining adds a model actor to a pool that follows the cluster
    (``actors_grow``), the CPUs left over decode; a shrink lowers the decode slots only."""
    spec = ModelSpec(x3d.get_preset("x3d_s"), 10)
    config = dataclasses.replace(size_pipeline(ClusterShape(cpus=2, gpus=1, nodes=1, node_cpus=2, cpu_nodes=1), spec),
                                 actors_grow=True)
    assert config.actor_cpus == 1
    scheduler = Scheduler(_shards(["good"] * 400, per_shard=50), config)
    assert [d.actor for d in scheduler.take(0.0) if isinstance(d, StartActor)] == [0]
    assert scheduler.decode_slots == config.decode_slots == 1  # 2 CPUs less the actor's one
    scheduler.on_capacity(cpus=4, gpus=2)  # a node with a GPU and 2 CPUs joined
    assert [d for d in scheduler.take(0.0) if isinstance(d, StartActor)] == [StartActor(1, 0)]
    assert scheduler.decode_slots == 2 and scheduler.num_actors == 2
    assert scheduler.running <= 2 * scheduler.decode_slots
    scheduler.on_capacity(cpus=3, gpus=1)  # a node left: its actor's loss is its own event
    assert scheduler.num_actors == 2 and scheduler.decode_slots == 1
    fixed = Scheduler(_shards(["good"] * 8), dataclasses.replace(config, actors_grow=False))
    fixed.on_capacity(cpus=4, gpus=2)
    assert fixed.num_actors == 1 and fixed.decode_slots == 3


def test_a_run_meant_for_gpus_ends_when_none_comes():
    config = _config(num_actors=1, actor_gpus=1.0, gpu_wait_s=30.0)
    scheduler = Scheduler(_shards(["good"] * 4), config)
    scheduler.take(5.0)
    assert scheduler.next_deadline() <= 35.0
    scheduler.on_tick(34.0)
    with pytest.raises(ClusterError, match=r"no GPU came for a model actor in 30 s .* --gpus 0"):
        scheduler.on_tick(35.0)
    started = Scheduler(_shards(["good"] * 4), config)
    started.take(5.0)
    started.on_actor_started(0, 0, now=20.0)
    started.on_tick(1000.0)  # one came: no deadline any more, whatever happens later
    on_cpu = Scheduler(_shards(["good"] * 4), _config(num_actors=1, gpu_wait_s=30.0))
    on_cpu.take(5.0)
    on_cpu.on_tick(1000.0)  # a CPU run has nothing to wait for


def test_the_driver_wakes_often_only_while_groups_wait_for_an_actor():
    """``actor_bound`` picks the wake-up (``wake_ms`` or the longer ``decode_bound_wake_ms``):
    true only while a group is ready and every live actor has all its calls in flight."""
    scheduler = Scheduler(_shards(["good"] * 8), _config(num_actors=1, unit_videos=8, clips_per_call=1, calls_per_actor=1))
    unit = [d for d in scheduler.take(0.0) if isinstance(d, StartUnit)][0].unit
    scheduler.on_actor_started(0, 0)
    scheduler.on_unit_started(unit, 0.0)
    assert not scheduler.actor_bound()  # nothing ready: the decode sets the pace
    scheduler.on_group(unit, [(DecodeResult(None, 1, place=(unit, 0)), "frames")], 1.0)
    assert not scheduler.actor_bound()  # ready, and the actor has room: sent at this wake-up
    (call,) = [d for d in scheduler.take(1.0) if isinstance(d, CallActor)]
    assert not scheduler.actor_bound()  # the actor is full, but no group waits for it
    scheduler.on_group(unit, [(DecodeResult(None, 1, place=(unit, 1)), "frames")], 1.1)
    assert scheduler.actor_bound()  # a group waits, and every actor is full
    scheduler.on_reply(call.call, [ScoredVideo(DecodeResult(None, 1, place=(unit, 0)), np.ones(2, np.float32))], "actor")
    assert not scheduler.actor_bound()  # the reply freed a call: the group goes at this wake-up


def test_units_that_wait_for_a_cpu_while_none_runs_are_told_once_per_stall():
    """Ray queues a task it cannot place without a word: after ``stall_notice_s`` with units
    waiting and none started the user gets one line, and ``next_deadline`` wakes the driver for
    it (no unit deadline runs yet). A unit that starts ends the stall; a later one is told again."""
    scheduler = Scheduler(_shards(["good"] * 8), _config(decode_slots=1, unit_videos=4, stall_notice_s=60.0))
    first, second = [d.unit for d in scheduler.take(0.0) if isinstance(d, StartUnit)]
    for actor in range(2):
        scheduler.on_actor_started(actor, 0)  # the actors run: only the units wait
    assert scheduler.next_deadline() == 60.0 and scheduler.stall_notice(59.0) is None
    line = scheduler.stall_notice(61.0)
    assert line.startswith("2 decode unit(s) have waited 61 s for a CPU and none runs") and "each asks 1" in line
    assert scheduler.stall_notice(200.0) is None and scheduler.next_deadline() == float("inf")  # once
    scheduler.on_unit_started(first, 300.0)
    assert scheduler.stall_notice(400.0) is None  # one runs: the other simply queues behind it
    scheduler.on_unit_ended(first, CRASHED, "worker died")  # its node went, say; the other still waits
    assert any(isinstance(d, StartUnit) for d in scheduler.take(400.0))  # the crash's videos, in a careful unit
    assert scheduler.stall_notice(400.0).startswith("2 decode unit(s) have waited 400 s")  # since the oldest


def test_actors_that_do_not_start_while_none_runs_are_told_once_per_stall():
    """The same for model actors (no GPU left anywhere, say): one line once ``stall_notice_s``
    has passed since the oldest was asked for with none live. An actor that starts ends the
    stall; when the last live one is lost, the next line counts from the oldest still waiting."""
    scheduler = Scheduler(_shards(["good"] * 8), _config(num_actors=2, stall_notice_s=60.0, actor_gpus=1.0, actor_cpus=2.0))
    scheduler.take(0.0)
    scheduler.on_unit_started(0, 0.0)  # units run: only the actors wait
    assert scheduler.stall_notice(59.0) is None and scheduler.next_deadline() <= 60.0
    line = scheduler.stall_notice(60.0)
    assert line.startswith("2 model actor(s) have not started in 60 s and none runs") and "each asks 1 GPU and 2 CPU(s)" in line
    assert scheduler.stall_notice(100.0) is None  # once
    scheduler.on_actor_started(0, 0)
    scheduler.on_actor_lost(0, 0, "node lost")
    assert any(isinstance(d, StartActor) for d in scheduler.take(200.0))  # its replacement, asked for now
    assert scheduler.stall_notice(230.0).startswith("2 model actor(s) have not started in 230 s")  # actor 1 since 0
    assert scheduler.stall_notice(300.0) is None
    alone = Scheduler(_shards(["good"] * 8), _config(num_actors=1, stall_notice_s=60.0))
    alone.take(0.0)
    alone.on_unit_started(0, 0.0)
    alone.on_actor_started(0, 0)
    alone.on_actor_lost(0, 0, "node lost")
    assert alone.stall_notice(500.0) is None  # it just died: its wait starts when its replacement is asked for
    alone.take(500.0)
    assert alone.stall_notice(559.0) is None and alone.stall_notice(561.0).startswith("1 model actor(s) have not started in 61 s")


def test_the_rules_and_the_sizing_load_neither_ray_nor_torch():
    probe = "import sys, cluster.scheduler, cluster.sizing; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def _two_one_video_calls(result: Callable[[int, int], tuple[DecodeResult, Any]]):
    """A scheduler with one live actor whose two calls in flight each hold a one-video group of
    one unit (``result(unit, index)`` is the video's decode); (scheduler, outcomes, the calls)."""
    config = _config(num_actors=1, unit_videos=2, clips_per_call=1, group_videos=1, calls_per_actor=2, call_retries=2,
                     infra_backoff_s=1.0)
    scheduler = Scheduler(_shards(["good"] * 2), config)
    seen: list[VideoOutcome] = []
    scheduler.on_video = seen.append
    unit = [d for d in scheduler.take(0.0) if isinstance(d, StartUnit)][0].unit
    scheduler.on_actor_started(0, 0)
    scheduler.on_unit_started(unit, 0.0)
    for i in range(2):
        scheduler.on_group(unit, [result(unit, i)], 0.0)
    scheduler.on_unit_ended(unit, DONE)
    return scheduler, seen, [d for d in scheduler.take(0.0) if isinstance(d, CallActor)]


def test_failed_calls_are_retried_and_an_actor_whose_calls_keep_failing_is_replaced():
    """Scoring that fails (a CUDA error, an out-of-memory) is the infrastructure's failure: the
    groups go to another call, the actor with ``call_retries`` failed calls in a row is replaced,
    and a group's videos are rows only once it failed on that many actors while others worked."""
    scheduler, seen, (first, second) = _two_one_video_calls(lambda unit, i: (DecodeResult(None, 1, place=(unit, i)), "frames"))
    contents = lambda call: [[r for r, _ in g] for g in call.groups]  # noqa: E731
    scheduler.on_call_failed(first.call, "CUDA error", contents=contents(first))
    assert seen == [] and len(scheduler.ready) == 1  # its group waits for another call
    scheduler.on_call_failed(second.call, "CUDA error", contents=contents(second))
    (restart,) = [d for d in scheduler.take(0.0) if isinstance(d, StartActor)]
    assert restart == StartActor(0, 1) and seen == []  # replaced after two failed calls in a row
    scheduler.on_actor_started(0, 1)
    again = [d for d in scheduler.take(0.0) if isinstance(d, CallActor)]
    scheduler.on_reply(again[0].call, [ScoredVideo(r, [1.0]) for r, _ in again[0].groups[0]], "new")
    scheduler.on_call_failed(again[1].call, "CUDA error", contents=contents(again[1]))  # its second actor, others work
    assert sorted((o.error is None, o.failure) for o in seen) == [(False, "infrastructure"), (True, None)]
    assert "inference failed (CUDA error)" in next(o.error for o in seen if o.error)
    assert scheduler.finished


def test_a_video_the_store_could_not_serve_in_a_given_up_call_is_read_again_not_a_row():
    """A group whose calls keep failing becomes rows, but a video in it that the storage could
    not serve is the store's failure: it goes back for another read, as in a reply."""
    def result(unit: int, i: int) -> tuple[DecodeResult, Any]:
        if i == 0:
            return DecodeResult(None, 1, place=(unit, 0)), "frames"
        return DecodeResult("s3://b/1.mp4: S3 error SlowDown", place=(unit, 1), unavailable=True), None

    scheduler, seen, (first, second) = _two_one_video_calls(result)
    (good,), (down,) = first.groups, second.groups  # a group a call, in the order they were sent
    assert good[0][0].error is None and down[0][0].unavailable
    scheduler.on_call_failed(second.call, "CUDA error", contents=[[r for r, _ in down]])  # its first actor
    scheduler.on_reply(first.call, [ScoredVideo(good[0][0], [1.0])], "actor")  # others are answered
    (again,) = [d for d in scheduler.take(0.0) if isinstance(d, CallActor)]
    scheduler.on_actor_lost(0, 0, "replaced")  # its second actor is another one
    scheduler.on_actor_started(0, 1)
    (third,) = [d for d in scheduler.take(0.0) if isinstance(d, CallActor)]
    scheduler.on_call_failed(third.call, "CUDA error", contents=[[r for r, _ in down]])
    assert [o.item.key for o in seen] == ["000-good"]  # no row for the video the store could not serve
    assert [e.key for _, e in scheduler.later] == [(0, 1)] and not scheduler.finished
