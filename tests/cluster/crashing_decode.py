"""A decode task stand-in that dies on one kind of file, as decord does on some corrupt ones.

``decode_item`` for every file, except one whose bytes start with ``KILL_MARK``: for that one
the worker process SIGKILLs itself, as a native abort inside the decoder would end it. Kept
free of torch like ``worker.decode_task``, since it runs in the decode workers.
"""

from __future__ import annotations

import os
import signal

from worker.decode_task import decode_item

KILL_MARK = b"KILL-THE-DECODER"


def crashing_decode(item, spec, timed=False):
    try:
        with open(item.uri, "rb") as f:
            head = f.read(len(KILL_MARK))
    except OSError:
        head = b""
    if head == KILL_MARK:
        os.kill(os.getpid(), signal.SIGKILL)
    return decode_item(item, spec, timed)


SLOW_MARK = "slow-start"
SLOW_S = 6.0


def slow_first_decode(item, spec, timed=False):
    """``decode_item``, after a pause for a video whose key names ``SLOW_MARK``: keeps the first
    unit's videos back, so a model actor that has started waits idle for its first call."""
    if SLOW_MARK in item.key:
        import time

        time.sleep(SLOW_S)
    return decode_item(item, spec, timed)
