"""The work of a decode task: a unit of videos, one after another, each read into the frames
its views need (the types it shares with the model actor are in ``worker.spec``).

``decode_unit`` is what a decode task executes (``decode_item`` per video) and ``worker.model_runner.ModelRunner`` what a model
actor does; both are plain Python, so tests and notebooks can call them directly and the Ray
layer (``cluster/pipeline.py``) only decides where and when they run. Nothing here imports Ray
or torch: decode workers are recycled when their memory grows (decord leaks), and a start that
loads torch costs more CPU and memory than the decoding it serves (bench/RESULTS.md, "Decode
workers without torch").
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

import x3d
from worker.items import VideoItem
from worker.spec import DecodeResult, FramesPayload, ModelSpec, views_in
from worker.rawframes import rawframe_loader
from worker.stages import NULL_TIMER, StageTimer, maxrss_mb, ms_since, private_rss_mb
from x3d import storage


def _source_for(item: VideoItem) -> x3d.decode.VideoSource:
    """Local files are handed to decord by path; remote objects arrive as bytes, no temp file."""
    if item.kind == "rawframes":
        return x3d.RawFrames(load=rawframe_loader(item), num_frames=int(item.num_frames or 0), name=item.key)
    if storage.is_remote(item.uri):
        return storage.read_bytes(item.uri)
    return storage.local_path(item.uri)


def quiet_decoder_logs() -> None:
    """decord/FFmpeg print native warnings for every broken file; the error row says it once.

    A decode worker decodes one video at a time, so it may mute the native stderr output
    process-wide (``x3d.decode.quiet_native_logs`` says how and why).
    """
    x3d.decode.quiet_native_logs()


def decode_item(item: VideoItem, spec: ModelSpec, timed: bool = False) -> tuple[DecodeResult, FramesPayload | None]:
    """Read one video into its distinct resized uint8 frames and the clip index into them.
    Bad input becomes an error result, never a raise.

    The crops are left to the model actor (``ModelRunner``), so the object store carries each
    frame once instead of every view (``x3d.views.PreparedFrames`` says why it is the same
    bytes). ``timed`` books each step to a ``StageTimer`` and returns its readings in the result
    (the benchmark); the jobs leave it off.
    """
    quiet_decoder_logs()
    start = time.perf_counter()
    timer = StageTimer() if timed else NULL_TIMER
    try:
        source = _source_for(item)
        timer.charge("read")
        prepared = x3d.views.prepare_frames(source, spec.preset, spec.views, spec.protocol, on_step=timer.charge,
                                            frames=spec.frames)
    except (x3d.DecodeError, storage.StorageError) as exc:  # decoded from memory: name the video
        failed = _failed(str(exc).replace("<in-memory video>", item.key), start, timer, timed)
        failed.unavailable = getattr(exc, "unavailable", False)
        return failed, None
    except Exception as exc:  # an unexpected decoder failure must still be a row, not a crash
        return _failed(f"{item.key}: {type(exc).__name__}: {exc}".splitlines()[0], start, timer, timed), None
    payload = (prepared.frames, prepared.inverse)
    result = DecodeResult(error=None, num_views=views_in(payload, spec.view_plan), decode_ms=ms_since(start),
                          payload_bytes=int(prepared.frames.nbytes + prepared.inverse.nbytes), frames_read=prepared.info.read)
    if timed:
        result.stages, result.rss_mb = timer.stages, maxrss_mb()
    return result, payload


#: a decode unit's first item: it is running (queued units have no deadline yet) ...
UNIT_STARTED = "started"
#: ... or its worker has grown past the recycling limit: the driver cancels the unit, which
#: kills the worker (Ray starts a fresh one), and gives its videos to another unit
UNIT_RETIRING = "retiring"

_baseline_rss_mb: float | None = None  # this process's private RSS when it sent its first group


def rss_growth_mb(held_mb: float = 0.0) -> float:
    """How far this worker's own resident memory, less the ``held_mb`` of frames it holds now
    (the group about to be sent), has grown since it sent its first group.

    decord leaks on some files and FFmpeg's buffers fragment the heap, so a long-lived decode
    worker may creep up; a fixed recycling count paid a worker start every N videos whether or
    not anything leaked (bench/RESULTS.md, "Pipeline ceiling again"). Measured growth recycles
    only the workers that need it. The reading
    when the first group is sent (a video or more decoded) is the baseline, so the decoder's own
    buffers count as the worker's size, not as growth; the frames held are left out of both
    readings, so a group larger than the first (groups close by time or at 256 clips' worth)
    is not taken for a leak.
    """
    global _baseline_rss_mb
    now = private_rss_mb() - held_mb
    if _baseline_rss_mb is None:
        _baseline_rss_mb = now
    return max(0.0, now - _baseline_rss_mb)


def decode_unit(
    items: Sequence[VideoItem],
    spec: ModelSpec,
    timed: bool = False,
    decode_fn: Callable[..., tuple[DecodeResult, Any]] | None = None,
    group_ms: float = 0.0,
    unit: int = -1,
    recycle_rss_mb: float = 0.0,
    group_videos: int = 0,
) -> Iterator[Any]:
    """Decode several videos one after another, streaming them back in small groups.

    The body of the pipeline's decode task (a Ray streaming generator). Its first item is
    ``UNIT_STARTED`` (or ``UNIT_RETIRING``, after which it decodes nothing and waits to be
    cancelled); then one item per group: the videos' ``(DecodeResult, payload)`` pairs, which
    the driver forwards to a model actor unopened. Each result says its ``place`` (``unit``,
    index in ``items``), so the actor's reply tells the driver what the group held. A group
    closes before a video starts once ``group_ms`` have passed since the last one was sent (0:
    every video is its own group), so slow videos travel alone and only videos that decode in a
    blink share one object, or once it holds ``group_videos`` videos (0: no cap; on a GPU
    cluster the pipeline's cap is 256 clips' worth, which bounds the frames a worker holds).
    After a group that shows this worker's private RSS grown ``recycle_rss_mb`` (0: never) the
    unit stops; the driver gives the videos it did not reach to another unit
    (``cluster.scheduler``). ``decode_fn``
    (default ``decode_item``) is the pipeline's stand-in hook.
    """
    decode = decode_fn or decode_item
    if recycle_rss_mb > 0 and _baseline_rss_mb is not None and rss_growth_mb() >= recycle_rss_mb:
        yield UNIT_RETIRING
        time.sleep(600.0)  # the driver cancels it at once; should it not, the videos go back anyway
        return
    yield UNIT_STARTED  # the deadlines run from here, not from the submission (it may have queued)
    group: list[tuple[DecodeResult, Any]] = []
    sent = time.perf_counter()
    for index, item in enumerate(items):
        if group and ((time.perf_counter() - sent) * 1000.0 >= group_ms or len(group) == group_videos):
            growth = _close(group)
            yield group
            if 0 < recycle_rss_mb <= growth:
                return
            group, sent = [], time.perf_counter()
        try:
            result, payload = decode(item, spec, timed)
        except Exception as exc:  # a stand-in that raises is still one error row, not a lost unit
            result, payload = DecodeResult(error=f"{item.key}: {type(exc).__name__}: {exc}".splitlines()[0]), None
        result.place = (unit, index)
        group.append((result, payload))
    if group:
        _close(group)
        yield group


def _close(group: list[tuple[DecodeResult, Any]]) -> float:
    """The worker's RSS growth, noted on the group's last result (the benchmark reads it)."""
    held_mb = sum(result.payload_bytes for result, _ in group) / 2**20
    growth = group[-1][0].rss_growth_mb = rss_growth_mb(held_mb)
    return growth


def _failed(error: str, start: float, timer: StageTimer, timed: bool) -> DecodeResult:
    result = DecodeResult(error=error, decode_ms=ms_since(start))
    if timed:
        result.stages, result.rss_mb = timer.stages, maxrss_mb()
    return result
