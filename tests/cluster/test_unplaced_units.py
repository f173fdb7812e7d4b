"""Decode units or model actors that Ray cannot place: the run says so, once, instead of looking hung.

Ray queues a task whose resources no node has free, without a word to the driver; a cluster
that lost its CPU nodes mid-run (or whose CPUs another job holds) would leave the job's progress
line frozen. Real local Ray (2 CPUs), the real pipeline: decode units that each ask 3 CPUs can
never start (and model actors that each ask a GPU, on this CPU-only Ray), and after
``stall_notice_s`` the pipeline hands one line to ``on_notice`` (the jobs print it as
``waiting: ...``). The callback here raises to end the run, and the pipeline then cancels the
units it still watches and ends its actors, so nothing starts later on the session's Ray.
"""

from __future__ import annotations

import dataclasses
import signal

import pytest

import x3d
from cluster.pipeline import Shard, run_pipeline
from cluster.runtime import pipeline_config_for
from tests.cluster.actor_bodies import IdleActor
from worker.spec import ModelSpec
from worker.items import VideoItem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class _Told(Exception):
    pass


SPEC = ModelSpec(x3d.get_preset("x3d_s"), 1)
ITEMS = [VideoItem(f"v{i}", f"/nowhere/v{i}.mp4", None) for i in range(4)]  # error rows: they decode at once


def _told(about: str, **changes) -> list[str]:
    """The lines about ``about`` that ``on_notice`` got from a run with ``changes``, which is
    ended three stall intervals after the first of them: time enough for a second one, were it
    told again. Lines about the other kind are left out: on a busy machine the actor's worker
    process can itself take longer than the stall interval to start, and that is told too."""
    config = dataclasses.replace(pipeline_config_for(SPEC), unit_videos=2, actor_cpus=0.25, actor_body=IdleActor,
                                 stall_notice_s=2.0, **changes)
    told: list[str] = []

    def on_notice(line: str) -> None:
        if about not in line:
            return
        told.append(line)
        if len(told) == 1:
            signal.setitimer(signal.ITIMER_REAL, 3 * config.stall_notice_s)

    def end(signum, frame):
        raise _Told

    previous = signal.signal(signal.SIGALRM, end)
    try:
        # The driver wakes at least every second (its metrics), so the alarm lands; one landing
        # inside Ray's native wait comes out wrapped in a SystemError.
        with pytest.raises((_Told, SystemError)) as ended:
            run_pipeline([Shard(0, ITEMS)], config, None, on_notice=on_notice)
        assert ended.type is _Told or isinstance(ended.value.__cause__ or ended.value.__context__, _Told), ended.value
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return told


def test_units_that_cannot_be_placed_are_told_once(ray_local):
    (line,) = _told("decode unit", decode_slots=1, decode_cpus=3.0)
    assert line.startswith("2 decode unit(s) have waited 2 s for a CPU and none runs"), line
    assert "each asks 3" in line


def test_actors_that_cannot_be_placed_are_told_once(ray_local):
    (line,) = _told("model actor", actor_gpus=1.0)
    assert line.startswith("1 model actor(s) have not started in 2 s and none runs"), line
    assert "each asks 1 GPU and 0.25 CPU(s)" in line
