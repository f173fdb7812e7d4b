"""The options every model job shares, defined once.

Evaluate, label and benchmark all score videos with one model on one cluster, so they share
the model's options (preset, weights, views, protocol, precision) and the cluster's (where,
how big, batch size, decode deadline). Each job's config adds only what is its own.
``submit.py`` builds its common flags from the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClusterOptions", "ModelOptions", "RunOptions"]


@dataclass(kw_only=True)
class ModelOptions:
    """Which model scores the videos, and how."""

    model: str = "x3d_s"
    checkpoint: str | None = None  # path, URL or s3:// URI; None: the preset's published weights
    views: int = 30
    protocol: str | None = None  # the preset's test protocol; None: its default (mmaction2)
    precision: str = "fp32"  # forward pass: "fp32" (the reference) or "bf16" autocast
    # the model's memory layout: "auto" (channels_last_3d on CPU, NCDHW on GPU), "channels_last_3d", "ncdhw"
    memory_format: str = "auto"
    compile: bool = False  # torch.compile the model in each actor (the first batches pay for it)
    true_frames: bool = False  # the frames the protocol names, not MMAction2's, where they differ (docs/frames.md)


@dataclass(kw_only=True)
class ClusterOptions:
    """Where the job runs and how its pipeline is cut."""

    address: str | None = None  # Ray address; None: $RAY_ADDRESS, else a local Ray for the run
    local_cpus: int | None = None  # size of the local Ray started when no address is given
    batch_size: int | None = None  # clips per forward; None: sized for the device
    actors_per_gpu: int = 1  # model actors sharing each GPU (cluster.sizing)
    decode_timeout_s: float = 300.0
    quiet: bool = False


@dataclass(kw_only=True)
class RunOptions(ModelOptions, ClusterOptions):
    """A job that writes results shard by shard: evaluate and label."""

    num_actors: int | None = None  # None: one per GPU, one on a CPU-only cluster
    shard_size: int = 256  # videos per Parquet file
    # time.monotonic() when the command started (submit.py sets it), so the times a job reports
    # cover the whole process, imports and start-up included; None: when the job was called
    started_at: float | None = None
