"""The driver's one exception type for requests that cannot run as given."""

from __future__ import annotations

__all__ = ["JobError", "JobInterrupted"]


class JobError(Exception):
    """A request that cannot run as given; the message says what to fix, in one line."""


class JobInterrupted(BaseException):
    """SIGINT or SIGTERM stopped the job (``jobs.interrupts``).

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` on the way
    turns the stop into an error row or a StorageError. The job that was running fills in
    ``finished`` (what is saved, for the user) and ``output`` (what ``--resume`` continues);
    ``submit.main`` prints them as one line and exits ``128 + signum`` (130, 143).
    """

    def __init__(self, signum: int, finished: str | None = None, output: str | None = None):
        super().__init__(signum)
        self.signum = signum
        self.finished = finished
        self.output = output
