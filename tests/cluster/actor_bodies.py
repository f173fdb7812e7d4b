"""Model actor bodies for the actor-lifecycle tests: the real one, slower to start; one that cannot.

``SlowStartModelActor`` is ``cluster.actors.ModelActor`` with a constructor and a first call
that take a second longer (as loading a large checkpoint from a slow disk, or compiling the
model on its first batch, do), so a test can SIGKILL it while ``ray::SlowStartModelActor.__init__``
or its first ``score`` runs. ``BrokenModelActor`` fails in its constructor every
time (as an actor that is OOM-killed on every node while loading would). ``IdleActor`` holds no
model: for runs in which no video reaches an actor.
"""

from __future__ import annotations

import os
import time

from cluster.actors import ModelActor

START_S = 1.5


class SlowStartModelActor(ModelActor):
    def __init__(self, *args, **kwargs):
        time.sleep(START_S)
        super().__init__(*args, **kwargs)
        self.calls = 0

    def score(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            time.sleep(START_S)
        return super().score(*args, **kwargs)


class BrokenModelActor(ModelActor):
    def __init__(self, *args, **kwargs):
        raise MemoryError("cannot load the model: out of memory")


class IdleActor:
    """A model actor's shape without a model; any call to score is a test failure."""

    def __init__(self, *args, **kwargs):
        pass

    def describe(self) -> dict:
        return {"worker": "idle", "device": "none", "accelerator": "none"}

    def score(self, *args, **kwargs):
        raise AssertionError("no video should have reached a model actor")


class PoisonedModelActor(ModelActor):
    def __init__(self, spec, state_dict, threads, batch_size, options=None):
        options = dict(options or {})
        marker = options.pop("poison_marker", None)
        self.poisoned = True
        if marker is not None:
            try:  # the first actor of the run creates the marker, and is the poisoned one
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                self.poisoned = False
        super().__init__(spec, state_dict, threads, batch_size, options or None)

    def score(self, *args, **kwargs):
        if self.poisoned:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().score(*args, **kwargs)
