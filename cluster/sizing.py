"""How many model actors and decode slots a cluster of a given shape gets: a pure function.

Kept apart from connecting to Ray so that the rule can be read, and tested, on any shape
(a 64-GPU cluster on a laptop) without starting one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.errors import ClusterError
from cluster.config import PipelineConfig  # not cluster.pipeline: sizing is read before Ray is imported (jobs.preflight)
from worker.spec import ModelSpec

__all__ = ["ClusterShape", "GPU_ACTOR_CONCURRENCY", "GPU_ACTOR_CPUS", "GPU_CALLS_PER_ACTOR", "GPU_CALL_VOXELS",
           "GPU_CLIPS_PER_GROUP", "GPU_DECODE_BOUND_WAKE_MS", "GPU_GROUPS_PER_UNIT", "GPU_GROUP_MS",
           "GPU_MAX_GROUPS_PER_CALL", "GPU_WAKE_MS", "capacity_for", "gpu_decode_slots", "gpu_groups_per_call", "share_of", "size_pipeline",
           "unit_videos_for", "videos_per_call"]


@dataclass(frozen=True)
class ClusterShape:
    cpus: float
    gpus: float
    nodes: int
    node_cpus: float = 0.0  # CPUs of the largest node
    cpu_nodes: int = 0  # nodes that have any CPU


def share_of(shape: ClusterShape, index: int, count: int) -> ClusterShape:
    """The part of a GPU cluster that driver ``index`` of ``count`` sizes its pipeline to
    (``--partition``): its share of the GPUs (the remainder to the first drivers) and the
    CPUs that go with them. Each driver sized to the whole cluster would ask for every GPU,
    and the later drivers' actors would wait for GPUs that never come free while the first
    runs. A CPU-only cluster is not split: there the model sets the pace, not the driver, so
    partitions on it simply take turns at the cores."""
    gpus = int(shape.gpus)
    if count <= 1 or gpus < 1:
        return shape
    mine = gpus // count + (1 if index < gpus % count else 0)
    if mine < 1:
        raise ClusterError(f"--partition {index}/{count}: the cluster's {gpus} GPU(s) do not go round {count} drivers; "
                           f"run at most {gpus} partitions")
    return ClusterShape(cpus=shape.cpus * mine / gpus, gpus=float(mine), nodes=shape.nodes, node_cpus=shape.node_cpus,
                        cpu_nodes=shape.cpu_nodes)


def size_pipeline(
    shape: ClusterShape,
    spec: ModelSpec,
    num_actors: int | None = None,
    batch_size: int | None = None,
    decode_timeout_s: float = 300.0,
    actors_per_gpu: int = 1,
) -> PipelineConfig:
    """Size the pipeline to a cluster: ``actors_per_gpu`` actors per GPU (each holding that
    fraction of one, ``GPU_ACTOR_CPUS`` CPUs where there are CPUs to spare, else one, and two
    calls at once) and the remaining CPUs decoding; without GPUs, one CPU actor (or ``num_actors``) whose threads take its node's
    cores, each with a half-CPU decode slot beside it. Raises ``ClusterError`` when it cannot fit."""
    if actors_per_gpu < 1:
        raise ClusterError(f"--actors-per-gpu must be at least 1, got {actors_per_gpu}")
    gpus = int(shape.gpus)
    actor_threads = None
    decode_cpus = 1.0
    concurrency = 1
    if gpus >= 1:
        slots = gpus * actors_per_gpu
        actors = num_actors or slots
        if actors > slots:
            raise ClusterError(f"--num-actors {actors} needs {math.ceil(actors / actors_per_gpu)} GPUs at {actors_per_gpu} "
                               f"actor(s) per GPU but the cluster has {gpus}")
        # Two CPUs where the cluster has them to spare (at least one left per actor to decode);
        # on small GPU nodes (2 CPUs per GPU) one, as an actor taking every CPU of its node would
        # leave its node's decode slots unplaceable and the run waiting for them.
        spare = shape.cpus / actors >= GPU_ACTOR_CPUS + 1
        actor_gpus, actor_cpus = 1.0 / actors_per_gpu, (GPU_ACTOR_CPUS if spare else 1.0)
        actor_threads = int(actor_cpus)
        concurrency = GPU_ACTOR_CONCURRENCY
        decode_slots = gpu_decode_slots(shape.cpus, actors, actor_cpus)
    else:
        # On CPU the forward dwarfs the decode and speeds up with every thread it gets. So each
        # actor's threads take its node's cores, and one decode slot per actor holds half a CPU:
        # it runs beside the model, not in place of one of its threads (bench/RESULTS.md,
        # "The CPU fast path").
        actors = num_actors or 1
        per_node = math.ceil(actors / max(shape.cpu_nodes, 1))
        actor_threads = max(1, int(shape.node_cpus // per_node))
        decode_cpus = 0.5
        decode_slots = actors
        actor_cpus = max(0.5, actor_threads - decode_cpus)
        actor_gpus = 0.0
        needed = actors * actor_cpus + decode_slots * decode_cpus
        if needed > shape.cpus:
            raise ClusterError(f"--num-actors {actors} needs {needed:g} CPUs but the cluster has {shape.cpus:g}")
    views = spec.views
    # Three sizes, apart: clips per forward (``--batch-size``, else the runner's choice for its
    # device), clips per decode group (GPU: GPU_CLIPS_PER_GROUP; CPU: a call's worth) and clips
    # per actor call (GPU: gpu_groups_per_call groups). A --batch-size also makes the call and the
    # group that size, so a call is exactly one forward.
    clips_per_call = batch_size or (max(GPU_CLIPS_PER_GROUP, views) if actor_gpus else max(views, 30))
    if actor_gpus:  # the driver's CPU is paid per event: few, large ones (see the constants)
        group_clips = clips_per_call  # --batch-size: calls of one group, as large as asked
        if not batch_size:
            clips_per_call = group_clips * gpu_groups_per_call(spec)
        per_event = dict(unit_videos=unit_videos_for(group_clips, views, calls=GPU_GROUPS_PER_UNIT), group_ms=GPU_GROUP_MS,
                         group_videos=videos_per_call(group_clips, views), wake_ms=GPU_WAKE_MS,
                         decode_bound_wake_ms=GPU_DECODE_BOUND_WAKE_MS, calls_per_actor=GPU_CALLS_PER_ACTOR)
    else:  # a group never holds more than a call's videos, so no call needs to (Scheduler._next_call)
        per_event = dict(unit_videos=unit_videos_for(clips_per_call, views), group_videos=videos_per_call(clips_per_call, views))
    return PipelineConfig(
        spec=spec,
        num_actors=actors,
        actor_gpus=actor_gpus,
        actor_cpus=actor_cpus,
        actor_threads=actor_threads,
        actor_concurrency=concurrency,
        decode_slots=decode_slots,
        decode_cpus=decode_cpus,
        clips_per_call=clips_per_call,
        clips_per_forward=batch_size,
        decode_timeout_s=decode_timeout_s,
        **per_event,
    )


#: CPUs (and torch threads) of a GPU model actor: one thread prepares the next call (pinning a
#: call's frames is a host copy of every video's frames) while another launches the current
#: one's forwards and waits for its results.
GPU_ACTOR_CPUS = 2.0

#: Calls a GPU model actor runs at once (Ray's max_concurrency): the one whose forwards run and
#: the next, being prepared (``worker.model_runner.ModelRunner``: only the compute step is locked).
GPU_ACTOR_CONCURRENCY = 2


#: Clips per decode group on a GPU cluster: what a decode worker holds while its group fills
#: and what the driver reads as one stream item.
GPU_CLIPS_PER_GROUP = 256

#: Input voxels (clip frames x crop pixels) an actor call on a GPU may hold: X3D-M's 256 clips of
#: 16x256x256, ~3.2 GB once normalised to fp32 on the device. A model with smaller clips takes
#: more groups per call (X3D-S: 2, ~2.6 GB), up to ``GPU_MAX_GROUPS_PER_CALL``: the driver pays
#: per call as well as per group, so fewer calls cost it less CPU per video (bench/RESULTS.md,
#: "Driver CPU per video: calls of two groups"). Not yet measured on a GPU.
GPU_CALL_VOXELS = 256 * 16 * 256 * 256
GPU_MAX_GROUPS_PER_CALL = 2


# On a GPU cluster the driver, not the model, sets the ceiling: its CPU is paid per event (a
# unit's start and end, a group's stream item, an actor call and its reply, a wake-up), hardly
# per video. So GPU pipelines make the events few and large (bench/RESULTS.md, "Driver CPU per
# video with few, large events"); CPU jobs keep the small ones, as their model sets the pace.

#: How long a decode unit gathers videos into one group on a GPU cluster (ms), at most: a group
#: also closes once it holds ``GPU_CLIPS_PER_GROUP`` clips' worth of videos
#: (``PipelineConfig.group_videos``), so at a real decode's pace it closes full. The price is
#: memory: a decode worker holds up to a group's frames while it fills, and a crash sends them
#: to a careful unit (both in bench/RESULTS.md, "Driver CPU per video with few, large events").
GPU_GROUP_MS = 2000.0

#: Groups' worth of videos per decode unit on a GPU cluster: a unit's start, header and end are
#: the driver's dearest events, so a unit carries several groups (bench/RESULTS.md, "Driver CPU
#: per video with few, large events").
GPU_GROUPS_PER_UNIT = 4

#: How often the driver wakes at most on a GPU cluster (ms) while groups wait for an actor:
#: what arrived in between is handled in one ``ray.wait``. A reply may so be seen up to this
#: late ...
GPU_WAKE_MS = 100.0

#: ... so a GPU actor has four calls in flight: two running (``GPU_ACTOR_CONCURRENCY``) and two
#: queued behind them, which keep it busy for a late-seen reply while a call takes 50 ms or more
#: (X3D-S, 512 clips, up to ~10,000 clips/s; faster than that it may idle part of a wake-up: not
#: yet measured on a GPU). The price is a call's frames more per actor in the object store.
GPU_CALLS_PER_ACTOR = 4

#: How often the driver wakes at most on a GPU cluster (ms) while no group waits for an actor:
#: the decode sets the pace (as on a node whose GPU outruns its CPUs), so a group that arrives
#: meanwhile waits at most this long and no actor waits for it. A wake-up costs the driver
#: CPU whatever it finds (bench/RESULTS.md, "Driver CPU per video: calls of two groups").
GPU_DECODE_BOUND_WAKE_MS = 250.0


def capacity_for(config: PipelineConfig, cpus: float, gpus: float, actors: int) -> tuple[int, int]:
    """Model actors and decode slots for a cluster that now has ``cpus`` and ``gpus``, given the
    ``actors`` the run has: on GPUs, an actor per GPU share when the pool follows the cluster
    (``actors_grow``), and every CPU the actors leave decoding; on CPU, the sizing's own
    (each CPU actor's threads take its node's cores, a half-CPU slot beside each)."""
    if not config.actor_gpus:
        return actors, config.decode_slots
    if config.actors_grow:
        actors = max(actors, int(gpus) * round(1 / config.actor_gpus))
    return actors, gpu_decode_slots(cpus * config.cpu_share, actors, config.actor_cpus)


def gpu_decode_slots(cpus: float, actors: int, actor_cpus: float) -> int:
    """Decode slots on a GPU cluster: every whole CPU the model actors leave, one at least."""
    return max(1, int(cpus - actors * actor_cpus))


def gpu_groups_per_call(spec: ModelSpec) -> int:
    """Decode groups per actor call on a GPU: as many as fit ``GPU_CALL_VOXELS``, 1 to
    ``GPU_MAX_GROUPS_PER_CALL`` (X3D-S 2, X3D-M 1)."""
    protocol = spec.test_protocol()
    clip_voxels = protocol.clip_len * spec.view_plan.crop_size ** 2
    return max(1, min(GPU_MAX_GROUPS_PER_CALL, GPU_CALL_VOXELS // (GPU_CLIPS_PER_GROUP * clip_voxels)))


def videos_per_call(clips_per_call: int, views: int) -> int:
    """Whole videos in about ``clips_per_call`` clips: an actor call's (or, on a GPU, a group's)."""
    return max(1, clips_per_call // max(views, 1))


def unit_videos_for(clips_per_call: int, views: int, calls: int = 2) -> int:
    """Videos per decode unit: about ``calls`` times ``clips_per_call`` clips' worth (actor calls';
    on a GPU, groups'), 4 to ``32 * calls``.

    Enough that the per-task cost vanishes against the model's (tiny models, GPUs), few enough
    that a CPU job starts scoring soon and a crash sends few videos to a careful unit.
    """
    return max(4, min(32 * calls, calls * videos_per_call(clips_per_call, views)))
