"""A decode unit's stream, as the driver sees it (``worker.decode_task.decode_unit``), called as
the plain generator it is, without Ray: a header, then one item per group of
``(DecodeResult, payload)`` pairs whose results name their place, and a worker that has grown
past the recycling limit stops after the group that shows it and refuses its next unit."""

from __future__ import annotations

import numpy as np

import x3d
from worker import decode_task
from worker.decode_task import UNIT_RETIRING, UNIT_STARTED, decode_unit, rss_growth_mb
from worker.spec import DecodeResult, ModelSpec
from worker.items import VideoItem

SPEC = ModelSpec(x3d.get_preset("x3d_s"), 1)
ITEMS = [VideoItem(f"v{i}", f"/v/{i}", None) for i in range(5)]
_kept: list[np.ndarray] = []


def _decode(item: VideoItem, spec: ModelSpec, timed: bool = False):
    if item.key == "v2":
        return DecodeResult(error="v2: broken"), None
    return DecodeResult(error=None, num_views=1), item.key


def _leaky(item: VideoItem, spec: ModelSpec, timed: bool = False):
    _kept.append(np.ones(64 * 2**20, np.uint8))  # written, so every page is resident
    return _decode(item, spec, timed)


def _places(groups: list) -> list[tuple[int, int]]:
    return [result.place for group in groups for result, _ in group]


def test_one_item_per_group_each_result_naming_its_place():
    stream = list(decode_unit(ITEMS, SPEC, decode_fn=_decode, group_ms=0.0, unit=7))
    assert stream[0] == UNIT_STARTED
    groups = stream[1:]
    assert [len(g) for g in groups] == [1] * 5  # careful: a video per group
    assert _places(groups) == [(7, i) for i in range(5)]
    assert [payload for g in groups for _, payload in g] == ["v0", "v1", None, "v3", "v4"]
    assert groups[2][0][0].error == "v2: broken"  # a failure travels with its group


def test_a_unit_that_groups_sends_its_videos_in_order():
    groups = list(decode_unit(ITEMS, SPEC, decode_fn=_decode, group_ms=60_000.0, unit=3))[1:]
    assert len(groups) == 1 and _places(groups) == [(3, i) for i in range(5)]


def test_a_group_closes_at_its_video_cap_whatever_the_time():
    """On a GPU cluster a group is at most 256 clips' worth of videos: it bounds the frames a
    worker holds while the group fills (group_ms is long there)."""
    groups = list(decode_unit(ITEMS, SPEC, decode_fn=_decode, group_ms=60_000.0, unit=4, group_videos=2))[1:]
    assert [len(g) for g in groups] == [2, 2, 1] and _places(groups) == [(4, i) for i in range(5)]


def test_frames_held_in_a_group_are_not_growth():
    """The RSS growth that recycles a worker leaves out the frames of the group being sent: a
    group larger than the worker's first (they close by time or at 256 clips' worth) is no leak."""
    saved = decode_task._baseline_rss_mb
    decode_task._baseline_rss_mb = None
    try:
        assert rss_growth_mb() == 0.0  # the first reading is the baseline
        big = np.ones(256 * 2**20, np.uint8)  # written: resident, and held like a group's frames
        assert rss_growth_mb() >= 200  # counted as growth when not said to be held ...
        assert rss_growth_mb(held_mb=big.nbytes / 2**20) < 64  # ... and not when it is
        del big
    finally:
        decode_task._baseline_rss_mb = saved


def test_a_worker_past_the_limit_stops_after_that_group_and_refuses_the_next_unit():
    try:
        stream = list(decode_unit(ITEMS, SPEC, decode_fn=_leaky, group_ms=0.0, unit=1, recycle_rss_mb=96))
        groups = stream[1:]
        assert stream[0] == UNIT_STARTED and 1 < len(groups) < len(ITEMS), len(groups)
        assert groups[-1][-1][0].rss_growth_mb >= 96
        assert _places(groups) == [(1, i) for i in range(len(groups))]  # the rest: another unit's
        nxt = decode_unit(ITEMS, SPEC, decode_fn=_leaky, group_ms=0.0, unit=2, recycle_rss_mb=96)
        assert next(nxt) == UNIT_RETIRING  # nothing decoded: the driver cancels it, killing the worker
        nxt.close()
    finally:
        _kept.clear()
