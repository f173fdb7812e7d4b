"""The cluster layer's one exception type, and how the pipeline reads the Ray errors it meets."""

from __future__ import annotations

from ray.exceptions import ObjectLostError

__all__ = ["ClusterError", "caused_by", "lost_input", "short_error"]


class ClusterError(Exception):
    """Ray could not be reached or cannot run the job; one line for the user."""


def short_error(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__
    return False


def lost_input(exc: BaseException) -> bool:
    """Inputs that died with a node: ObjectLostError and all its kinds (owner died,
    reconstruction failed, fetch timed out)."""
    return caused_by(exc, ObjectLostError)
