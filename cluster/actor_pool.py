"""The model actors of a run as the scheduler sees them: which are live, which are starting, how
many the run wants, and when to give up on them. Plain Python with the clock passed in, like
``cluster.scheduler``, which owns one.

An actor is a slot (its index) and a generation: a lost actor's slot is started again under the
next generation, and events of an older generation are stale (a late reply, a late loss). The
pool only grows (``grow_to``: a GPU that joined the cluster); an actor lost with its node is
replaced in its slot, and Ray places the replacement when a GPU or CPU for it is free again.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.errors import ClusterError

__all__ = ["ActorPool", "StartActor"]


@dataclass(frozen=True)
class StartActor:
    actor: int  # (re)start the actor of this slot; a previous one there is to be killed
    generation: int


class ActorPool:
    def __init__(self, wanted: int, restarts: int):
        self.restarts = restarts  # replacements allowed per slot before the run gives up
        self.generation: list[int] = []
        self.live: list[bool] = []
        self.asked: list[float | None] = []  # when each slot's current actor was asked for
        self.lost = 0
        self.first_live: float | None = None  # when the first actor of the run answered
        self.first_asked: float | None = None
        self._starts: list[StartActor] = []
        self._told = False  # the current wait for an actor has been told (stall_notice)
        self.grow_to(wanted)

    @property
    def size(self) -> int:
        return len(self.live)

    def live_actors(self) -> list[int]:
        return [a for a, up in enumerate(self.live) if up]

    def starting(self) -> bool:
        return not all(self.live)

    def grow_to(self, wanted: int) -> int:
        """Add slots up to ``wanted``; returns how many were added. A pool never shrinks: an
        actor whose node leaves is lost, and replaced where Ray finds room."""
        added = max(0, wanted - self.size)
        for _ in range(added):
            self.generation.append(0)
            self.live.append(False)
            self.asked.append(None)
            self._starts.append(StartActor(self.size - 1, 0))
        if added:
            self._told = False  # new actors wait: a wait for them is a new stall
        return added

    def take_starts(self, now: float) -> list[StartActor]:
        starts, self._starts = self._starts, []
        for start in starts:
            self.asked[start.actor] = now
        if starts and self.first_asked is None:
            self.first_asked = now
        return starts

    def on_started(self, actor: int, generation: int, now: float) -> bool:
        if generation != self.generation[actor]:
            return False
        self.live[actor] = True
        self._told = False  # an actor runs again: a later wait is a new stall
        if self.first_live is None:
            self.first_live = now
        return True

    def on_lost(self, actor: int, generation: int, error: str) -> bool:
        """The current actor of ``actor`` was lost (starting or later): it is replaced, a bounded
        number of times. False for a stale generation."""
        if generation != self.generation[actor]:
            return False
        self.live[actor] = False
        self.asked[actor] = None  # until its replacement is asked for (take_starts): its wait starts then
        self.lost += 1
        if self.lost > self.restarts * self.size + 2:
            raise ClusterError(
                f"model actors keep dying ({self.lost} lost; last: {error}); "
                "see the Ray logs (ray logs / dashboard) for the cause"
            )
        self.generation[actor] += 1
        self._starts.append(StartActor(actor, self.generation[actor]))
        return True

    # ------------------------------------------------------------------ waiting for actors

    def unplaced_since(self) -> float | None:
        """When the oldest actor still starting was asked for, if none is live; else None."""
        if any(self.live):
            return None
        return min((t for t in self.asked if t is not None), default=None)

    def stall_deadline(self, limit_s: float) -> float:
        since = self.unplaced_since()
        return float("inf") if since is None or self._told else since + limit_s

    def stall_notice(self, now: float, limit_s: float, asks: str) -> str | None:
        """One line per stall: no actor has started in ``limit_s`` and none runs."""
        since = self.unplaced_since()
        if since is None or self._told or now - since < limit_s:
            return None
        self._told = True
        return (f"{self.size - sum(self.live)} model actor(s) have not started in {now - since:.0f} s and none "
                f"runs: the cluster may have no free GPU or CPU for one (each asks {asks}; `ray status` shows what it "
                "has); still waiting")

    def gpu_deadline(self, wait_s: float) -> float:
        """When a run meant for GPUs gives up if no actor has started: ``wait_s`` after the
        first was asked for; never once one has."""
        if wait_s <= 0 or self.first_live is not None or self.first_asked is None:
            return float("inf")
        return self.first_asked + wait_s
