"""Decode units under faults: one unit holds a file whose read hangs, a file that kills its decode
worker, and good videos; every entry gets exactly one row and the good ones the undisturbed
scores (``x3d.predict_video``, as in the evaluate tests).

Real local Ray, the real pipeline and model actor, real MP4s. The hanging file is a rawframes
folder whose frames are FIFOs nobody writes to (a read that never returns, as on a stalled
network mount); the killer is a file the decode stand-in (``tests.cluster.crashing_decode``:
``decode_item`` for everything else) answers by SIGKILLing its own worker, as decord does on
some corrupt files.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

import x3d
from cluster.pipeline import Shard, run_pipeline
from cluster.runtime import pipeline_config_for
from tests.cluster.crashing_decode import KILL_MARK, crashing_decode
from tests.cluster.evalset import PRESET, PROB_TOL, VIEWS, EvalSet
from worker.spec import ModelSpec
from worker.items import VideoItem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TIMEOUT_S = 4.0


def spec_and_weights(ev: EvalSet):
    model = x3d.load_model(PRESET, str(ev.checkpoint))
    return ModelSpec(model.preset, VIEWS), model.state_dict()


#: cluster.sizing's GPU way with events (large groups, calls of two groups, a bounded wake-up,
#: more calls per actor), here on CPU with groups of two videos: the same rules must hold.
GPU_EVENTS = dict(group_ms=2000.0, group_videos=2, clips_per_call=4 * VIEWS, wake_ms=100.0, decode_bound_wake_ms=250.0,
                  calls_per_actor=4)


@pytest.mark.parametrize("events", [{}, GPU_EVENTS], ids=["cpu-events", "gpu-events"])
def test_one_unit_with_a_hanging_file_a_worker_killer_and_good_videos(evalset: EvalSet, ray_local, tmp_path: Path, events):
    import ray

    stalled = tmp_path / "stalled"
    stalled.mkdir()
    for i in range(1, 31):
        os.mkfifo(stalled / f"img_{i:05d}.jpg")  # opened for reading, it blocks until a writer comes
    killer = tmp_path / "killer.mp4"
    killer.write_bytes(KILL_MARK + os.urandom(2048))
    good = evalset.names[:4]
    items = [VideoItem(good[0], str(evalset.root / good[0]), None),
             VideoItem("stalled", str(stalled), None, num_frames=30, kind="rawframes"),
             VideoItem(good[1], str(evalset.root / good[1]), None),
             VideoItem("killer.mp4", str(killer), None),
             VideoItem(good[2], str(evalset.root / good[2]), None),
             VideoItem(good[3], str(evalset.root / good[3]), None)]
    spec, state = spec_and_weights(evalset)
    config = dataclasses.replace(pipeline_config_for(spec), unit_videos=len(items), decode_timeout_s=TIMEOUT_S,
                                 decode_fn=crashing_decode, **events)
    shards: dict[int, list] = {}
    seen: list[tuple[int, int]] = []

    run_pipeline([Shard(0, items)], config, ray.put(state), on_video=lambda o: seen.append((o.shard, o.position)),
                 on_shard=lambda i, outcomes: shards.setdefault(i, outcomes))

    assert sorted(seen) == [(0, p) for p in range(len(items))]  # one outcome per entry, none twice
    rows = shards[0]
    assert [o.item.key for o in rows] == [i.key for i in items]
    by_key = {o.item.key: o for o in rows}
    for name in good:  # unit-mates of both faults, scored as if nothing had happened
        assert by_key[name].error is None, by_key[name].error
        assert np.abs(by_key[name].probs - evalset.probs[name]).max() < PROB_TOL, name
    assert by_key["stalled"].probs is None
    assert by_key["stalled"].error == f"stalled: decode timed out after {TIMEOUT_S:g} s"
    assert by_key["killer.mp4"].probs is None
    assert by_key["killer.mp4"].error.startswith("killer.mp4: decode worker failed (")
    assert "\n" not in by_key["killer.mp4"].error
