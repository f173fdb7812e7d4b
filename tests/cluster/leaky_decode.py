"""A decode task stand-in that leaks, as decord does on some files: ``decode_item`` plus a block
of resident memory per video that the worker never gives back. Free of torch like
``worker.decode_task``, since it runs in the decode workers."""

from __future__ import annotations

import numpy as np

from worker.decode_task import decode_item

LEAK_MB = 64
_kept: list[np.ndarray] = []


def leaky_decode(item, spec, timed=False):
    _kept.append(np.ones(LEAK_MB * 2**20, np.uint8))  # written, so every page is resident
    return decode_item(item, spec, timed)
