"""The cluster layer's one exception type."""

from __future__ import annotations

__all__ = ["ClusterError"]


class ClusterError(Exception):
    """Ray could not be reached or cannot run the job; one line for the user."""
