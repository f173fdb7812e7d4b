"""The cluster layer's one exception type, and how the pipeline reads the Ray errors it meets.

Importing it loads no Ray: the command line imports it before its name checks.
"""

from __future__ import annotations

__all__ = ["ClusterError", "InfrastructureDown", "cause_of", "caused_by", "lost_input", "node_lost", "short_error"]


class ClusterError(Exception):
    """Ray could not be reached or cannot run the job; one line for the user."""


class InfrastructureDown(ClusterError):
    """The storage (or the model actors' device) failed every request for the stated time: the
    run stops, and the videos it could not score are not outcomes; rerunning finishes them."""


def short_error(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def cause_of(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` or the first exception of ``kind`` behind it: Ray's ``cause`` chain (a task's
    error wraps the worker's) or Python's ``__cause__``; None when there is none."""
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return cause_of(exc, kind) is not None


def lost_input(exc: BaseException) -> bool:
    """Inputs that died with a node: ObjectLostError and all its kinds (owner died,
    reconstruction failed, fetch timed out)."""
    # Imported here, not at the top: submit.py imports this module's ClusterError (and the
    # interrupt handling its cause_of) before any name check, which must answer without Ray.
    from ray.exceptions import ObjectLostError

    return caused_by(exc, ObjectLostError)


def node_lost(exc: BaseException) -> bool:
    """The node went, not the video's fault (NodeDiedError anywhere in the cause chain)."""
    from ray.exceptions import NodeDiedError  # here, not at the top: as in lost_input

    return caused_by(exc, NodeDiedError)
