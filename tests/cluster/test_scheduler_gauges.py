"""``Scheduler.gauges``, the state the run's metrics show (``cluster.run_metrics``), without Ray:
units asked of Ray and not started are waiting, started ones running; actors that answered
are live and hold their GPUs; videos count in flight from their unit's start to their outcome."""

from __future__ import annotations

import x3d
from cluster.config import PipelineConfig, Shard
from cluster.scheduler import DONE, Scheduler, StartUnit
from worker.spec import ModelSpec
from worker.items import VideoItem


def test_gauges_follow_units_actors_and_videos():
    config = PipelineConfig(spec=ModelSpec(x3d.get_preset("x3d_s"), 1), num_actors=2, actor_gpus=1.0, decode_slots=1,
                            unit_videos=2, clips_per_call=3)
    items = [VideoItem(f"v{i}", f"/v/{i}", None) for i in range(6)]
    outcomes = []
    scheduler = Scheduler([Shard(0, items)], config, on_video=outcomes.append)
    idle = {"actors_live": 0, "actors_wanted": 2, "gpus_held": 0.0, "units_running": 0, "units_waiting": 0, "videos_in_flight": 0}
    assert scheduler.gauges() == idle

    units = [d for d in scheduler.take(0.0) if isinstance(d, StartUnit)]
    assert len(units) == 2  # one running per decode slot, one queued behind it
    assert scheduler.gauges() == {**idle, "units_waiting": 2, "videos_in_flight": 4}

    scheduler.on_unit_started(units[0].unit, 1.0)
    scheduler.on_actor_started(0, 0)
    assert scheduler.gauges() == {**idle, "actors_live": 1, "gpus_held": 1.0, "units_running": 1, "units_waiting": 1,
                                  "videos_in_flight": 4}

    # the running unit ends without sending a group: its videos leave the flight and go back to the queue
    scheduler.on_unit_ended(units[0].unit, DONE)
    gauges = scheduler.gauges()
    assert gauges["units_running"] == 0 and gauges["units_waiting"] == 1
    assert gauges["videos_in_flight"] == 2 and not outcomes
