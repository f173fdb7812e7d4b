"""The optional stage timer both halves of the pipeline carry, for the benchmark.

The production decode task and model runner take a timer and book their steps to it; by
default that is ``NULL_TIMER``, which does nothing, so the jobs pay one no-op call per step.
The benchmark switches the real one on (``PipelineConfig.timed``) and so measures the very
code the jobs run, not a copy of it that could drift.
"""

from __future__ import annotations

import resource
import time
from typing import Callable

__all__ = ["NULL_TIMER", "STAGES", "STAGE_MEANING", "StageTimer", "maxrss_mb", "ms_since", "private_rss_mb"]

#: every batch's time is split into these, plus "other" (what no step timer covers)
STAGES = ("read", "decode", "preprocess", "h2d", "forward", "write")
STAGE_MEANING = {
    "read": "list/read bytes: a remote video's bytes from S3 (local files are read by the decoder: in decode)",
    "decode": "decord decoding of the sampled frames",
    "preprocess": "resize, cut to the crops' box (decode task); clip gather, crops, batching, normalisation, memory layout (actor)",
    "h2d": "host-to-device copy of the uint8 frames",
    "forward": "the network, the copy of the logits back to the host and the fusion of views",
    "write": "result rows written as Parquet by the driver through the jobs' one writer",
    "other": "per-batch wall time no stage timer covers (kept small: the tests hold it under 10%)",
}


def ms_since(start: float) -> float:
    """Milliseconds since a ``time.perf_counter()`` reading."""
    return (time.perf_counter() - start) * 1000.0


def maxrss_mb() -> float:
    """This process's peak resident set so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


_PAGE_MB = resource.getpagesize() / 2**20


def private_rss_mb() -> float:
    """This process's own resident memory now: its RSS less the shared pages (Linux ``/proc``;
    elsewhere the peak RSS, which only grows, so a leak still shows).

    Shared pages are left out because a Ray worker's RSS counts the object-store pages it has
    written: a decode worker would look like it leaks every video's frames it ships
    (bench/RESULTS.md, "Pipeline ceiling again").
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * _PAGE_MB
    except (OSError, IndexError, ValueError):
        return maxrss_mb()


class StageTimer:
    """A lap timer: ``charge(stage)`` books the time since the previous mark to ``stage``.

    Consecutive stages leave no gaps: every moment is in some stage except stretches passed
    over with ``skip()`` (bookkeeping), which end up in "other". ``sync`` (e.g. a CUDA
    synchronise) runs before each reading, so asynchronous device work is charged where it ran.
    """

    def __init__(self, sync: Callable[[], None] | None = None):
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.sync = sync
        self.mark = time.perf_counter()

    def charge(self, stage: str) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.stages[stage] += now - self.mark
        self.mark = now

    def skip(self) -> None:
        if self.sync is not None:
            self.sync()
        self.mark = time.perf_counter()


class _NullTimer(StageTimer):
    """What the jobs run with: nothing measured, nothing kept."""

    def __init__(self) -> None:  # noqa: D107 - no state on purpose
        self.stages = {}
        self.sync = None

    def charge(self, stage: str) -> None:
        pass

    def skip(self) -> None:
        pass


NULL_TIMER: StageTimer = _NullTimer()
