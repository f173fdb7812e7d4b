"""The driver's one exception type for requests that cannot run as given."""

from __future__ import annotations

__all__ = ["JobError", "JobInterrupted", "JobStopped"]


class JobError(Exception):
    """A request that cannot run as given; the message says what to fix, in one line."""


class JobStopped(Exception):
    """A run that a failure not of the request's making (storage, the cluster) stopped after it
    had written results: not "nothing written" (exit 2) but exit 5, one line with what failed,
    what is saved (``finished``) and the command that continues the run in ``output``.
    ``status``: the exit status (``submit.EXIT_STOPPED``, 5, unless a cause has its own)."""

    def __init__(self, message: str, output: str, finished: str, status: int = 5):
        super().__init__(message)
        self.output = output
        self.finished = finished
        self.status = status


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
