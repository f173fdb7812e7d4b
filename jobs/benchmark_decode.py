"""The benchmark's timing model and its instrumented decode task.

``STAGES`` are the steps every batch's wall time is split into, ``Laps`` the lap timer that
books each moment to one of them, and ``make_decode`` the benchmark's stand-in for the
pipeline's decode task: ``decode_item``'s work on that timer. It is a module of its own, free of
torch like ``jobs.work``, because Ray runs a task in a process that imports the task function's
module: a decode worker of the benchmark must start as light as one of the real jobs, or the
benchmark would measure a decode limit the jobs do not have. (The timed model actor, which does
need torch, stays in ``jobs.benchmark``.)
"""

from __future__ import annotations

import resource
import time
from typing import Any, Callable

import numpy as np

import x3d
from jobs import storage
from jobs.datasets import VideoItem
from jobs.work import DecodeResult, ModelSpec, ms_since, quiet_decoder_logs, worker_name

__all__ = ["STAGES", "STAGE_MEANING", "Laps", "make_decode", "maxrss_mb", "timed_decode_item"]

#: every batch's time is split into these, plus "other" (what no step timer covers)
STAGES = ("read", "decode", "preprocess", "h2d", "forward", "write")
STAGE_MEANING = {
    "read": "list/read bytes: the video's bytes from local disk or S3 (listing: list_s, once per run)",
    "decode": "decord decoding of the sampled frames",
    "preprocess": "resize and crops (decode task); batching, normalisation, memory layout (actor)",
    "h2d": "host-to-device copy of the uint8 batch",
    "forward": "the network, including the copy of the logits back to the host",
    "write": "fusing views, result rows, Parquet written through jobs.storage",
    "other": "per-batch wall time no stage timer covers (kept small: the tests hold it under 10%)",
}


def maxrss_mb() -> float:
    """This process's peak resident set so far, reported with each batch's record."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class Laps:
    """A lap timer: ``charge(stage)`` books the time since the previous mark to ``stage``.

    Consecutive stages thus leave no gaps between them: every moment of a piece of work is in
    some stage, except the stretches deliberately passed over with ``skip()`` (bookkeeping),
    which end up in ``other``. A process that is descheduled mid-stage is charged to that stage,
    which is what its wall time was spent on.
    """

    def __init__(self, stages: dict[str, float]):
        self.stages = stages
        self.mark = time.perf_counter()

    def charge(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] += now - self.mark
        self.mark = now

    def skip(self) -> None:
        self.mark = time.perf_counter()


def make_decode(ctx: dict[str, Any], synthetic: bool) -> Callable[[VideoItem, ModelSpec], tuple]:
    """The pipeline's decode task, instrumented; ``ctx`` rides along to the actor."""
    if synthetic:

        def synthetic_decode(item: VideoItem, spec: ModelSpec) -> tuple:
            # A stand-in that only says which shape to score: no work of the batch happens here,
            # so it adds nothing to the batch's wall time (its dispatch shows in actor_busy).
            proto = spec.test_protocol()
            plan = proto.view_plan(spec.views)
            shape = (plan.views, proto.clip_len, plan.crop_size, plan.crop_size, 3)
            payload = {"synthetic": shape, "video": item.key, "ctx": ctx, "stages": {}, "wall": 0.0, "rss_mb": maxrss_mb()}
            return DecodeResult(error=None, num_views=plan.views, decode_ms=0.0), payload

        return synthetic_decode

    def timed_decode(item: VideoItem, spec: ModelSpec) -> tuple:
        return timed_decode_item(item, spec, ctx)

    return timed_decode


def timed_decode_item(item: VideoItem, spec: ModelSpec, ctx: dict[str, Any]) -> tuple[DecodeResult, dict | None]:
    """``decode_item``'s work (``x3d.prepare_views``) on a lap timer."""
    start = time.perf_counter()
    stages = {"read": 0.0, "decode": 0.0, "preprocess": 0.0}
    laps = Laps(stages)
    try:
        quiet_decoder_logs()
        proto = spec.test_protocol()
        plan = proto.view_plan(spec.views)
        laps.skip()
        if item.kind == "rawframes":
            from jobs.rawframes import rawframe_loader

            loader = rawframe_loader(item)

            def load(index: int) -> bytes:  # frames are read one by one while decoding
                laps.charge("decode")
                data = loader(index)
                laps.charge("read")
                return data

            source: Any = x3d.RawFrames(load=load, num_frames=int(item.num_frames or 0), name=item.key)
        else:
            source = storage.read_bytes(item.uri)  # the whole file into memory, decoded from there
        laps.charge("read")

        def resize(block: np.ndarray) -> np.ndarray:  # read_frames calls it after each decoded block
            laps.charge("decode")
            out = x3d.resize_frames(block, proto.resize_short)
            laps.charge("preprocess")
            return out

        def indices_for(info: x3d.VideoInfo) -> np.ndarray:
            return x3d.clip_indices(info.num_frames, info.fps, spec.preset, spec.views, proto)

        frames, inverse, _ = x3d.read_frames(source, indices_for, transform=resize)
        laps.charge("decode")
        views = x3d.make_views(frames[inverse], plan)
        laps.charge("preprocess")
    except (x3d.DecodeError, storage.StorageError) as exc:  # decoded from memory: name the video
        message = str(exc).replace("<in-memory video>", item.key)
        return DecodeResult(error=message, decode_ms=ms_since(start)), None
    except Exception as exc:  # as decode_item: a failure is a row, never a crash
        message = f"{item.key}: {type(exc).__name__}: {exc}".splitlines()[0]
        return DecodeResult(error=message, decode_ms=ms_since(start)), None
    payload = {
        "views": views,
        "video": item.key,
        "ctx": ctx,
        "stages": stages,
        "rss_mb": maxrss_mb(),
        "worker": worker_name(),  # counted per trial: a decode worker started per video is hidden time
    }
    payload["wall"] = time.perf_counter() - start
    return DecodeResult(error=None, num_views=int(views.shape[0]), decode_ms=payload["wall"] * 1e3), payload
