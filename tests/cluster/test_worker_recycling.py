"""Decode workers are recycled by measured memory growth, not by a count.

A worker start costs ~0.5-1 s of CPU; recycling every N videos paid it whether or not anything
leaked, 5x the no-op pipeline's time (bench/RESULTS.md, "Pipeline ceiling"). Now a worker whose
RSS has grown ``recycle_rss_mb`` since its first group has its unit cancelled and is replaced,
and one that does not grow serves the whole run. Real local Ray, real MP4s, the real model actor:
a leaking decode (``tests.cluster.leaky_decode``) is recycled every couple of videos and still
gives every video exactly one row with the undisturbed scores; the real decode keeps one worker.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import x3d
from cluster.pipeline import Shard, run_pipeline
from cluster.runtime import pipeline_config_for
from tests.cluster.evalset import PRESET, PROB_TOL, VIEWS, EvalSet
from tests.cluster.leaky_decode import LEAK_MB, leaky_decode
from worker.spec import ModelSpec
from worker.items import VideoItem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _run(evalset: EvalSet, **changes) -> tuple[dict, list[tuple[int, int]]]:
    import ray

    model = x3d.load_model(PRESET, str(evalset.checkpoint))
    spec = ModelSpec(model.preset, VIEWS)
    names = (evalset.names * 2)[:12]  # the same file twice is two entries, two rows
    items = [VideoItem(f"{i:02d}-{n}", str(evalset.root / n), None) for i, n in enumerate(names)]
    config = dataclasses.replace(pipeline_config_for(spec), unit_videos=4, decode_slots=1, **changes)
    seen: list[tuple[int, int]] = []
    rows: dict = {}
    run_pipeline([Shard(0, items)], config, ray.put(model.state_dict()), on_video=lambda o: seen.append((o.shard, o.position)),
                 on_shard=lambda i, outcomes: rows.update({o.item.key: o for o in outcomes}))
    return rows, seen


def _check_scores(evalset: EvalSet, rows: dict) -> None:
    for key, outcome in rows.items():
        assert outcome.error is None, outcome.error
        name = key.split("-", 1)[1]
        assert np.abs(outcome.probs - evalset.probs[name]).max() < PROB_TOL, key


def test_a_leaking_decode_worker_is_replaced_and_no_video_is_lost_or_doubled(evalset: EvalSet, ray_local):
    rows, seen = _run(evalset, decode_fn=leaky_decode, recycle_rss_mb=1.5 * LEAK_MB)
    assert sorted(seen) == [(0, p) for p in range(12)]  # one outcome per entry, none twice
    _check_scores(evalset, rows)
    workers = {o.decode.worker for o in rows.values()}
    # the baseline is read with a worker's first group (one video: a leaky decode outlasts a 20 ms
    # group), so it is past 1.5 leaks after its third:
    # a worker vouches for at most three videos
    assert len(workers) >= 4, workers


def test_a_decode_worker_that_does_not_grow_serves_the_whole_run(evalset: EvalSet, ray_local):
    rows, seen = _run(evalset)
    assert sorted(seen) == [(0, p) for p in range(12)]
    _check_scores(evalset, rows)
    workers = {o.decode.worker for o in rows.values()}
    assert len(workers) == 1, workers  # three units, one slot, one process
