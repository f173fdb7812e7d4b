"""The driver's one exception type for requests that cannot run as given."""

from __future__ import annotations

__all__ = ["JobError"]


class JobError(Exception):
    """A request that cannot run as given; the message says what to fix, in one line."""
