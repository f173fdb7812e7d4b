"""Decode units: several videos in one Ray task, streamed back as they are done.

One task per video cost the driver ~2-4 ms of CPU per video (a task submission, a wait, a
result) and capped a node at ~40-150 videos/s whatever the model (bench/RESULTS.md, "Pipeline
ceiling"). A unit carries up to ``PipelineConfig.unit_videos`` videos and runs
``worker.decode_task.decode_unit`` as a streaming generator. It says when it starts (units are
queued one ahead of the running ones, so no decode slot waits on the driver, and a deadline
runs only while its unit does); then per group of videos it yields two items, stored by Ray and owned by the driver (so they outlive a recycled worker): the videos'
``(DecodeResult, payload)`` pairs, which the driver forwards to a model actor unopened, then
their results alone, which the driver reads. A group closes once ``group_ms`` have passed, so a
video that takes longer than that travels alone; in a *careful* unit (``group_ms`` 0) every
video does. Ray ends a failed stream with one error item, so results vouch for what came
before them, and in a careful unit the driver knows exactly which video was in progress:

* a video past its deadline is an error row of its own: the task is cancelled (its worker
  killed) and the unit's later videos go on in a new unit;
* a crashed worker (a file that kills decord, an OOM kill) costs the video in progress one more
  try, alone in a unit of its own (so a second crash harms nobody else), and the others a
  resubmission; the video is an error row once its retries are spent;
* in a unit that groups, the videos decoded since the last group was sent died with the worker
  unannounced, so the unvouched videos are redone in a careful unit, where a file that hangs or
  kills the worker does so again and is named;
* a lost node costs nothing but a resubmission of the videos still to come.

This module keeps one unit's state and reads its stream; ``cluster.pipeline`` decides what to
do with each outcome.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import NodeDiedError, RayError

from cluster.errors import caused_by
from worker.decode_task import DecodeResult
from worker.items import VideoItem

__all__ = ["Entry", "Group", "Unit", "UnitEvents", "node_lost", "read_units"]

Key = tuple[int, int]


@dataclass(frozen=True)
class Entry:
    """One video to decode, under its (shard, position) key."""

    key: Key
    item: VideoItem


@dataclass
class Group:
    """Videos decoded together: their entries and results, and the ref of their pairs."""

    entries: list[Entry]
    results: list[DecodeResult]
    ref: Any  # [(DecodeResult, payload), ...], never opened by the driver


@dataclass
class Unit:
    """A decode task in flight: its videos, what has been vouched for, the current deadline."""

    stream: Any  # ray.ObjectRefGenerator
    entries: list[Entry]
    timeout_s: float
    group_ms: float = 0.0  # 0: careful, every video its own group
    deadline: float = math.inf  # none while it waits for a CPU: its clock starts when it runs
    started: Any = None  # the stream's first item, until read: running (or the error that ended it)
    vouched: int = 0  # videos whose results have arrived
    received: int = 0  # items read from the stream after the first
    pairs: Any = None  # the latest group's pairs, until its results vouch for them
    rss_growth_mb: float = 0.0  # its worker's RSS growth, as its latest group reported it

    @property
    def careful(self) -> bool:
        return self.group_ms <= 0

    def _restart_clock(self) -> None:
        """The next video starts within ``group_ms`` of the last group sent: its deadline."""
        self.deadline = time.monotonic() + self.timeout_s + self.group_ms / 1000.0

    def rest(self) -> list[Entry]:
        return self.entries[self.vouched :]


@dataclass
class UnitEvents:
    """What one sweep of the streams found."""

    decoded: list[Group] = field(default_factory=list)
    finished: list[Unit] = field(default_factory=list)  # every video's results are in
    failed: list[tuple[Unit, BaseException]] = field(default_factory=list)  # ended in an error


def read_units(units: list[Unit]) -> UnitEvents:
    """Read whatever the ``units``' streams have ready, without blocking; pairs stay unopened,
    results are fetched in one ``ray.get`` (they are small and live in the driver's memory)."""
    events = UnitEvents()
    reads: list[tuple[Unit, Any, Any]] = []  # (unit, pairs ref, results ref)
    for unit in units:
        while True:
            try:
                ref = unit.stream._next_sync(timeout_s=0)
            except StopIteration:
                # Over. Pairs are always followed by their results, so pairs left unvouched are
                # the error item Ray ends a failed stream with (one in a results slot shows
                # when the results are fetched below).
                if unit.pairs is not None:
                    events.failed.append((unit, _error_of(unit.pairs)))
                break
            if ref.is_nil():
                break
            if unit.started is None:  # small: "started", or the error of a task that never ran
                unit.started = ref
                try:
                    ray.get(ref)
                except RayError as exc:
                    events.failed.append((unit, exc))
                    break
                unit._restart_clock()
                continue
            unit.received += 1
            if unit.received % 2:
                unit.pairs = ref
            else:
                reads.append((unit, unit.pairs, ref))
                unit.pairs = None
    failed: set[int] = {id(u) for u, _ in events.failed}
    if reads:
        for (unit, pairs, _), results in zip(reads, _get_all([r for _, _, r in reads])):
            if id(unit) in failed:
                continue
            if isinstance(results, BaseException):  # failed between the pairs and their results
                events.failed.append((unit, results))
                failed.add(id(unit))
                continue
            start = unit.vouched
            unit.vouched += len(results)
            unit.rss_growth_mb = max((r.rss_growth_mb for r in results), default=0.0)
            events.decoded.append(Group(unit.entries[start : unit.vouched], results, pairs))
            unit._restart_clock()
    events.finished = [u for u in units if u.vouched >= len(u.entries) and id(u) not in failed]
    return events


def _get_all(refs: list[Any]) -> list[Any]:
    """``ray.get`` of many small results; an error in one does not hide the others."""
    try:
        return ray.get(refs)
    except RayError:
        out: list[Any] = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except RayError as exc:
                out.append(exc)
        return out


def _error_of(ref: Any) -> BaseException:
    """The exception a failed stream's last item holds (small: an error, never pairs)."""
    if ref is None:
        return RuntimeError("decode task ended early")
    try:
        ray.get(ref)
    except RayError as exc:
        return exc
    return RuntimeError("decode task ended early")


def node_lost(exc: BaseException) -> bool:
    """The node went, not the video's fault (NodeDiedError anywhere in the cause chain)."""
    return caused_by(exc, NodeDiedError)
