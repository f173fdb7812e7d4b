"""A model actor lost in any phase of its life is replaced; the run ends with every row and the
undisturbed scores. When every replacement dies too, the run ends with one ClusterError line.

Real local Ray, the real pipeline, real videos. The actor is the real ``ModelActor`` with a
constructor a second and a half slower (``tests.cluster.actor_bodies``), so the test can SIGKILL
it while ``ray::SlowStartModelActor.__init__`` runs (a checkpoint load OOM-killed, a node lost
at start-up). The process is found by its Ray process title, as the other fault tests do, and
only the first actor process is ever signalled.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import x3d
from cluster.errors import ClusterError
from cluster.pipeline import Shard, run_pipeline
from cluster.runtime import pipeline_config_for
from tests.cluster.actor_bodies import BrokenModelActor, PoisonedModelActor, SlowStartModelActor
from tests.cluster.crashing_decode import SLOW_MARK, slow_first_decode
from tests.cluster.evalset import PRESET, PROB_TOL, VIEWS, EvalSet
from worker.spec import ModelSpec
from worker.items import VideoItem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TITLE = b"ray::SlowStartModelActor"
# the process title to kill on, per phase: in the constructor, idle before its first call, in it
PHASES = {"creation": TITLE + b".__init__", "before_first_call": TITLE, "first_call": TITLE + b".score"}


def _actors_left_from_earlier_runs(grace_s: float = 15.0) -> set[int]:
    """This test's actor processes still alive from an earlier case. ``ray.kill`` (how the
    pipeline ends its actors) is asynchronous, so a process may take a moment to exit; one
    still there after ``grace_s`` was not ended."""
    deadline = time.monotonic() + grace_s
    while True:
        left = {p for p, t in _titles().items() if t.startswith(TITLE)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _titles() -> dict[int, bytes]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].strip()
            except OSError:
                pass
    return found


def _kill_first_actor(phase: str, stop: threading.Event, kill: dict) -> None:
    """SIGKILL the first SlowStartModelActor process when its title says it is in ``phase``."""
    target = PHASES[phase]
    first: int | None = None
    while not stop.is_set():
        for pid, title in _titles().items():
            if not title.startswith(TITLE) or pid in kill["before"]:
                continue
            first = first or pid
            if pid == first and title == target:
                os.kill(pid, signal.SIGKILL)
                kill["pid"] = pid
                return
        stop.wait(0.005)


@pytest.mark.parametrize("phase", list(PHASES))
def test_actor_lost_at_start_is_replaced(phase: str, evalset: EvalSet, ray_local):
    import ray

    model = x3d.load_model(PRESET, str(evalset.checkpoint))
    spec = ModelSpec(model.preset, VIEWS)
    names = evalset.names
    # Before its first call: the first video decodes slowly, so the started actor waits idle.
    keys = [f"{SLOW_MARK}/{n}" if (i == 0 and phase == "before_first_call") else n for i, n in enumerate(names)]
    items = [VideoItem(k, str(evalset.root / n), None) for k, n in zip(keys, names)]
    config = dataclasses.replace(pipeline_config_for(spec), actor_body=SlowStartModelActor, decode_fn=slow_first_decode,
                                 unit_videos=len(items))
    rows: dict[int, list] = {}
    stop, kill = threading.Event(), {"before": _actors_left_from_earlier_runs()}
    killer = threading.Thread(target=_kill_first_actor, args=(phase, stop, kill), daemon=True)
    killer.start()
    try:
        actors = run_pipeline([Shard(0, items[:5]), Shard(1, items[5:])], config, ray.put(model.state_dict()),
                              on_shard=lambda i, outcomes: rows.setdefault(i, outcomes))
    finally:
        stop.set()
        killer.join(10)

    assert "pid" in kill, f"the actor was never seen in phase {phase}"
    outcomes = rows[0] + rows[1]
    assert [o.item.key for o in outcomes] == keys
    for outcome, name in zip(outcomes, names):
        assert outcome.error is None, outcome.error
        assert np.abs(outcome.probs - evalset.probs[name]).max() < PROB_TOL, name
    scorers = {int(o.worker.rsplit(":", 1)[1]) for o in outcomes}
    assert kill["pid"] not in scorers  # the killed one scored nothing: it died before (or in) its first call
    described = {int(a["worker"].rsplit(":", 1)[1]) for a in actors}
    assert scorers <= described
    assert kill["before"] == set()  # the pipeline ends its actors when it is done
    if phase == "creation":
        assert kill["pid"] not in described  # it never answered


def _inputs(evalset: EvalSet, count: int) -> tuple[object, ModelSpec, list[VideoItem]]:
    """The weights (in the object store), the spec and the first ``count`` videos of a run."""
    import ray

    model = x3d.load_model(PRESET, str(evalset.checkpoint))
    items = [VideoItem(n, str(evalset.root / n), None) for n in evalset.names[:count]]
    return ray.put(model.state_dict()), ModelSpec(model.preset, VIEWS), items


@pytest.mark.parametrize("body, expected", [
    # every replacement dies in its constructor
    (BrokenModelActor, ("model actors keep dying (4 lost; last: ", "cannot load the model: out of memory")),
    # every call of every actor fails (a fleet whose CUDA contexts are all poisoned): each actor is
    # replaced after its failed calls, and the run ends instead of writing every video as a row
    (PoisonedModelActor, ("model actors keep dying (", "calls failed in a row: ", "illegal memory access")),
])
def test_every_replacement_failing_is_one_cluster_error(body, expected, evalset: EvalSet, ray_local):
    weights, spec, items = _inputs(evalset, 4)
    config = dataclasses.replace(pipeline_config_for(spec), actor_body=body, actor_restarts=1)
    with pytest.raises(ClusterError) as err:
        run_pipeline([Shard(0, items)], config, weights)
    message = str(err.value)
    assert "\n" not in message and message.startswith(expected[0])
    assert all(part in message for part in expected[1:]), message


def test_an_actor_whose_calls_fail_is_replaced_and_no_video_is_a_row_for_it(evalset: EvalSet, ray_local, tmp_path: Path):
    """A call that fails, not by a lost actor (a CUDA error, an out-of-memory), is the
    infrastructure's failure: its videos go to other calls and the actor whose calls keep failing
    is replaced (its CUDA context may be poisoned). Before, every video of the call was an error
    row and the actor kept failing every later call while the run ended normally."""
    weights, spec, items = _inputs(evalset, len(evalset.names))
    marker = tmp_path / "poisoned"
    config = dataclasses.replace(pipeline_config_for(spec), actor_body=PoisonedModelActor,
                                 runner_options={"poison_marker": str(marker)})
    outcomes = []
    actors = run_pipeline([Shard(0, items)], config, weights, on_video=outcomes.append)
    assert marker.exists()  # the first actor was the poisoned one
    assert len(actors) >= 2  # ... and it was replaced
    assert sorted(o.item.key for o in outcomes) == sorted(evalset.names)
    for o in outcomes:
        assert o.error is None, o.error
        assert np.abs(o.probs - evalset.probs[o.item.key]).max() < PROB_TOL, o.item.key
