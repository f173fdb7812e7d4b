"""SIGINT (Ctrl-C) and SIGTERM (Kubernetes, Slurm, ``ray job stop``) as a clean stop.

Python's default turns Ctrl-C into a ``KeyboardInterrupt`` traceback through ``ray.wait``, and
``ray.init`` installs a SIGTERM handler that leaves the driver to die in Ray's C++ signal dump
(exit 134; ``cluster.runtime.connect`` puts the caller's handlers back after it). Inside ``stop_on_signals`` both signals raise ``JobInterrupted`` in the main
thread instead: the job's ``finally`` blocks run (Ray is shut down, a half-written file is
removed by ``x3d.storage.atomic_local_file``), and ``submit.main`` prints one line and exits
128 + the signal's number. A second signal while stopping is ignored, so the clean-up that
keeps the output valid is not itself interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from cluster.errors import cause_of
from jobs.errors import JobInterrupted

__all__ = ["JobInterrupted", "deferred", "interrupt_behind", "pause_point", "reinstall", "stop_on_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    active = False  # inside stop_on_signals
    received: int | None = None  # the first signal, once one came
    deferring = False  # inside deferred(): a signal is recorded, raised when the block ends


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _State.received is not None:
        return  # already stopping: let the clean-up finish
    _State.received = signum
    if _State.deferring:
        return  # deferred() raises it once the block that must not be cut short is done
    raise JobInterrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block a signal must not cut short (shutting the run's local Ray down: cut mid-way, it
    left Ray's agents running after the driver and the driver exiting 1): a SIGINT or SIGTERM
    that comes meanwhile is raised as ``JobInterrupted`` when the block ends. Ray leaves SIGTERM
    at its default when it shuts down, so the handlers are put back first."""
    if _State.deferring or _State.received is not None:
        yield  # nested, or already stopping: nothing more to defer
        return
    _State.deferring = True
    try:
        yield
    finally:
        _State.deferring = False
        reinstall()
    if _State.received is not None:
        raise JobInterrupted(_State.received)


def reinstall() -> None:
    """Install the handlers (again, should something have replaced them); a no-op outside
    ``stop_on_signals`` or off the main thread."""
    if _State.active and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _on_signal)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``JobInterrupted``; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _State.active, _State.received = True, None
    reinstall()
    try:
        yield
    finally:
        _State.active = False
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def interrupt_behind(exc: BaseException) -> JobInterrupted | None:
    """The ``JobInterrupted`` a native call wrapped, if any.

    Ray's Cython code (``ray.wait`` checks for signals while it blocks) runs the handler, and
    the handler's exception comes back as the cause of a ``SystemError`` ("returned a result
    with an exception set") instead of as itself.
    """
    return cause_of(exc, JobInterrupted)  # type: ignore[return-value]


_paused: set[str] = set()


def pause_point(phase: str) -> None:
    """Test hook: ``X3D_TEST_PAUSE_AT=<phase>`` stops here once, appends the phase's name to
    the file ``X3D_TEST_PAUSE_FILE`` (the test's cue to send a signal) and waits up to two
    minutes for it. Phases: ``startup`` (the cluster is up, nothing written), ``scoring`` (a
    shard is saved, work is left), ``stopping`` (every shard is saved and the run's local Ray shut down, in the block that defers a signal), ``scored`` (every video saved, the summary not begun),
    ``summary`` (the summary is being written). A no-op unless the variable names the phase."""
    if os.environ.get("X3D_TEST_PAUSE_AT") != phase or phase in _paused:
        return
    _paused.add(phase)
    with open(os.environ["X3D_TEST_PAUSE_FILE"], "a") as cue:
        cue.write(f"{phase}\n")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _State.received is None:  # a deferred signal ends the wait
        time.sleep(0.05)  # the signal's handler raises JobInterrupted out of this sleep
