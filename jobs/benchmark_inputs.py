"""What the benchmark feeds the pipeline: a dataset's videos, cycled, or synthetic clips.

Kept free of torch like ``worker.decode_task``: Ray runs a task in a process that imports the
task function's module, and the synthetic stand-in below runs as the pipeline's decode task,
so its workers must start as light as the jobs' own.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from jobs.datasets import DatasetSpec, iter_items
from jobs.errors import JobError
from worker.spec import DecodeResult, ModelSpec, views_in
from worker.items import VideoItem
from worker.stages import STAGES, maxrss_mb
from x3d.protocol import resized_size
from x3d.views import trim_to_crops

__all__ = ["VideoStream", "synthetic_decode"]

_BLANK: dict[tuple[int, ...], np.ndarray] = {}  # one uint8 batch per shape and decode worker


#: the frame size synthetic input stands for: Kinetics' typical 340x256
SYNTHETIC_SOURCE_HW = (256, 340)


def synthetic_decode(item: VideoItem, spec: ModelSpec, timed: bool = False) -> tuple[DecodeResult, tuple[np.ndarray, np.ndarray]]:
    """The decode task's stand-in for synthetic input: a payload of the real shape, no work.

    What ``decode_item`` ships for a 340x256 video whose clips do not overlap: its distinct
    frames resized as the protocol says and cut to the crops' box, and the clip index into them. Made once per worker and
    shape and reused, so the batch's decode stages are zero: the numbers are the pipeline's
    (object store, dispatch), the actor's crops and the model's alone.
    """
    proto = spec.test_protocol()
    plan = spec.view_plan
    h, w = resized_size(*SYNTHETIC_SOURCE_HW, proto.resize_short)
    frames = plan.num_clips * proto.clip_len
    shape = (frames, h, w, 3)
    if shape not in _BLANK:  # cut to the crops' box, as the real decode ships them
        _BLANK[shape] = trim_to_crops(np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8), plan)
    inverse = np.arange(frames).reshape(plan.num_clips, proto.clip_len)
    payload = (_BLANK[shape], inverse)
    result = DecodeResult(error=None, num_views=views_in(payload, plan), payload_bytes=int(_BLANK[shape].nbytes + inverse.nbytes))
    if timed:
        result.stages, result.rss_mb = dict.fromkeys(STAGES, 0.0), maxrss_mb()
    return result, payload


class VideoStream:
    """Items for the pipeline, pulled lazily from the dataset and cycled when it runs out."""

    def __init__(self, dataset: DatasetSpec | None, limit: int | None):
        self.dataset = dataset
        self.limit = limit
        self.seen: list[VideoItem] = []
        self.source: Iterator[VideoItem] | None = None
        self.list_s = 0.0
        self.count = 0
        if dataset is not None:
            self.source = iter_items(dataset)

    def next(self) -> VideoItem:
        self.count += 1
        if self.dataset is None:
            return VideoItem(key=f"synthetic/{self.count:07d}", uri="synthetic", label=None)
        if self.source is not None and (self.limit is None or len(self.seen) < self.limit):
            t = time.perf_counter()
            item = next(self.source, None)
            self.list_s += time.perf_counter() - t
            if item is not None:
                self.seen.append(item)
                return item
            self.source = None
        if not self.seen:
            raise JobError(f"dataset {self.dataset.name!r} lists no videos")
        return self.seen[(self.count - 1) % len(self.seen)]
