"""The plain data that crosses the pipeline: its configuration, its shards, what a model
actor's call returns (an ``ActorReply``: a ``ScoredVideo`` per video) and each video's outcome.

A module of its own because both ends of an actor call need these types: ``cluster.actors``
builds the replies and ``cluster.pipeline``, which imports the actors, reads them, so they can
live in neither without an import cycle. No Ray and no torch here: the jobs, ``cluster.sizing``
and ``cluster.runtime`` import them from this module, not through ``cluster.pipeline`` (which
imports Ray and, through the actor, torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from worker.spec import DecodeResult, ModelSpec
from worker.items import VideoItem

__all__ = ["INFRASTRUCTURE", "VIDEO", "ActorReply", "PipelineConfig", "ScoredVideo", "Shard", "VideoOutcome"]

#: A failed video's kind (``VideoOutcome.failure``, the rows' ``failure`` column): the video's own
#: fault, which a rerun repeats, or the infrastructure's, which a rerun may not
VIDEO, INFRASTRUCTURE = "video", "infrastructure"


@dataclass(frozen=True)
class Shard:
    index: int
    items: Sequence[VideoItem]


@dataclass
class VideoOutcome:
    """What happened to one video: its decode's result as the decode task gave it (or, for a
    video whose worker hung or crashed, one the driver made with the error), and its scores.
    ``probs`` is None exactly when ``error`` is set (a decode error, a failed call, a crash)."""

    shard: int
    position: int
    item: VideoItem
    decode: DecodeResult
    probs: np.ndarray | None
    error: str | None
    infer_ms: float = 0.0
    actor: str = ""  # the runner that scored it (host:pid); "" when it was not scored
    embedding: np.ndarray | None = None  # the video's embedding, when the job asked for one
    # whose failure it is when ``error`` is set: ``VIDEO`` (it cannot be decoded, is too short,
    # hangs in a careful retry) or ``INFRASTRUCTURE`` (storage, a failed call, after the retries)
    failure: str | None = None

    @property
    def num_views(self) -> int:
        return self.decode.num_views if self.error is None else 0

    @property
    def decode_ms(self) -> float:
        return self.decode.decode_ms

    @property
    def worker(self) -> str:
        """Who gave the outcome: the actor that scored it, else the decode worker (if any)."""
        return self.actor or self.decode.worker

    @property
    def frames_read(self) -> str | None:
        """How its frames were read (``x3d.decode.READ_WAYS``); None when they were not."""
        return self.decode.frames_read or None


@dataclass
class ScoredVideo:
    """One video of a model actor's call, as the actor saw it: its decode's result (errors
    included, so a decode failure travels with its group) and, when it decoded, its scores."""

    decode: DecodeResult
    probs: np.ndarray | None  # fused probabilities; None exactly when ``decode.error`` is set
    infer_ms: float = 0.0  # the video's share of the call's forward time
    embedding: np.ndarray | None = None  # the video's embedding, when the job asked for one


@dataclass
class ActorReply:
    """What a model actor's ``score`` returns: every video of the call's groups, in order, as
    columns. The scores of the videos that decoded travel as one array per call, not one per
    video: Ray ships each array as a buffer of its own, and the driver pays per buffer.
    ``videos`` gives them back one ``ScoredVideo`` per video."""

    results: list[DecodeResult]  # every video's decode result, errors included, in order
    probs: np.ndarray  # (videos that decoded, classes) float32, in the order of ``results``
    infer_ms: np.ndarray  # (videos that decoded,): each one's share of the call's forward time
    actor: str  # the runner's name (host:pid)
    embeddings: np.ndarray | None = None  # (videos that decoded, dim), when the job asked for them
    record: dict[str, Any] | None = None  # the benchmark's record of the call, when timed

    @property
    def videos(self) -> list[ScoredVideo]:
        out: list[ScoredVideo] = []
        row = 0
        for result in self.results:
            if result.error is not None:
                out.append(ScoredVideo(result, None))
                continue
            embedding = None if self.embeddings is None else self.embeddings[row]
            out.append(ScoredVideo(result, self.probs[row], float(self.infer_ms[row]), embedding))
            row += 1
        return out


@dataclass(frozen=True)
class PipelineConfig:
    spec: ModelSpec
    num_actors: int = 1
    actor_gpus: float = 0.0
    actor_cpus: float = 1.0
    actor_threads: int | None = None  # torch threads per actor; None = int(actor_cpus)
    # calls an actor runs at once (Ray's max_concurrency): 2 lets a GPU actor prepare its next
    # call (copies, gather, normalise) while the current one's forward runs
    actor_concurrency: int = 1
    decode_slots: int = 1  # decode tasks running at once
    decode_cpus: float = 1.0
    # clips per actor call, in whole videos: a call never holds more (Scheduler._next_call); the
    # device memory a call needs is bounded by the forward, not the call (docs/scaling.md)
    clips_per_call: int = 30
    clips_per_forward: int | None = None  # inside the actor (--batch-size); None: the runner's choice for its device
    decode_timeout_s: float = 300.0  # per video
    # Videos per decode task: enough that the per-task cost vanishes, few enough that the frames
    # of a unit are not a burst for the object store (cluster.sizing: small on CPU, large on GPU).
    unit_videos: int = 1
    # A unit sends what it decoded at least this often (ms): a video that takes longer travels
    # alone (cluster.scheduler). 20 ms on CPU, where only videos that decode in a blink share
    # an object; 2 s on a GPU cluster, where the driver's CPU per event sets the pace.
    group_ms: float = 20.0
    # ... or once it holds this many videos (0: no cap): 256 clips' worth on a GPU cluster
    # (cluster.sizing.GPU_CLIPS_PER_GROUP), which bounds the frames a decode worker holds while
    # its group fills, a call's worth on CPU; a call takes as many groups as fit its clips
    group_videos: int = 0
    # How often the driver wakes at most (ms): what is ready within one wake-up (groups, replies,
    # stream ends) is handled together. The driver's CPU is paid per wake-up as well as per
    # event; 0 wakes at each event (CPU jobs: their model, not the driver, sets the pace).
    # This is while groups wait for a free actor (the actors set the pace, and a reply seen late
    # is an actor's next call sent late) ...
    wake_ms: float = 0.0
    # ... and this while no group waits for an actor (the decode sets the pace: waking later only
    # delays a group that no actor waits for); 0: ``wake_ms`` throughout
    decode_bound_wake_ms: float = 0.0
    # A decode worker whose private RSS has grown this much since its first group (decord leaks)
    # is recycled: it stops its unit after the group that shows it and refuses the next, which
    # the driver cancels (killing it); the videos it did not reach go to another unit. Measured
    # growth, not a count: a worker start costs CPU, which a count paid whether or not anything
    # leaked (bench/RESULTS.md, "Pipeline ceiling again"). 0 turns it off.
    recycle_rss_mb: float = 1024.0
    # A backstop besides: Ray ends a worker after about this many videos (whole units), leak or not.
    max_decode_calls: int = 65536
    # After this long with decode units waiting for a CPU and none running (or model actors not
    # started and none running), the user is told once (Ray queues a task or actor it cannot
    # place without a word); the run goes on waiting
    stall_notice_s: float = 60.0
    decode_retries: int = 1  # a video whose decode worker crashed is retried this often, alone, then it is a row
    actor_restarts: int = 3  # lost model actors replaced, per actor, before the run gives up
    # The pool follows the cluster's GPUs: an actor is added for each GPU that joins (the run
    # wants whatever GPUs the cluster has, ``--gpus auto``); off, it stays at ``num_actors``
    actors_grow: bool = False
    # A run whose actors ask for GPUs ends with one line when none of them has started this long
    # after they were asked for (a cluster that never brings a GPU); 0: it waits for ever
    gpu_wait_s: float = 0.0
    # Infrastructure failures (a store that cannot serve, a failed actor call) are retried, not
    # outcomes: a video whose storage read failed goes back to the queue after a backoff, up to
    # this many times, then it is an ``INFRASTRUCTURE`` error row (redone by a later run)
    infra_retries: int = 5
    infra_backoff_s: float = 2.0  # the first wait; doubled per retry, at most 30 s
    # A store that has failed every read this long (no video read since) stops the run:
    # ``InfrastructureDown``, its own exit status; the rows written stay, a rerun finishes
    storage_outage_s: float = 120.0
    # A call whose scoring failed (out of memory, a CUDA error) has its groups retried in other
    # calls; a group that failed on this many actors while other calls were answered is
    # ``INFRASTRUCTURE`` rows. An actor with this many failed calls in a row is replaced (a
    # poisoned CUDA context)
    call_retries: int = 2
    # The part of the cluster's CPUs this run's decode slots follow: 1, or a partition's share
    # (``--partition``: its share of the GPUs, ``cluster.sizing.share_of``)
    cpu_share: float = 1.0
    # in-flight calls per actor: one running, one queued (4 on a GPU: cluster.sizing)
    calls_per_actor: int = 2
    extra_video_budget: int = 4
    # The benchmark's switch: the decode tasks and model actors time their steps and every
    # actor call's record goes to ``on_batch``. Off, each step costs a no-op call.
    timed: bool = False
    # Stand-ins for measuring the pipeline without real work (the benchmark's synthetic input):
    # the same call signatures as ``decode_item`` (item, spec, timed) -> (DecodeResult, payload)
    # and ``ModelActor``; the payload travels by ref from the decode task to the actor, unopened.
    decode_fn: Callable[..., Any] | None = None
    actor_body: type | None = None
    # ModelRunner keyword arguments (channels_last, compile): the GPU benchmark's switches
    runner_options: dict[str, Any] | None = None
    # The ``run`` tag of the run's Ray metrics (cluster.run_metrics); "": the Ray job's id
    run_name: str = ""
