"""The options every model job shares, defined once.

Evaluate, label and benchmark all score videos with one model on one cluster, so they share
the model's options (preset, weights, views, protocol, precision) and the cluster's (where,
how big, batch size, decode deadline). Each job's config adds only what is its own.
The flags themselves, and so every default a flag has, are declared once in ``jobs.cli.FLAGS``
(groups "model", "cluster", "run"); the fields here read their defaults from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.cli import default

__all__ = ["ClusterOptions", "ModelOptions", "RunOptions"]


@dataclass(kw_only=True)
class ModelOptions:
    """Which model scores the videos, and how."""

    model: str = "x3d_s"
    checkpoint: str | None = None  # path, URL or s3:// URI; None: the preset's published weights
    views: int = default("views")
    protocol: str | None = None  # the preset's test protocol; None: its default (mmaction2)
    precision: str = default("precision")  # forward pass: x3d.predict.PRECISIONS (fp32, the reference; bf16 autocast; tf32)
    # the model's memory layout: "auto" (channels_last_3d on CPU, NCDHW on GPU), "channels_last_3d", "ncdhw"
    memory_format: str = default("memory_format")
    compile: bool = default("compile")  # torch.compile the model in each actor (the first batches pay for it)
    true_frames: bool = default("true_frames")  # the frames the protocol names, not MMAction2's, where they differ (docs/frames.md)


@dataclass(kw_only=True)
class ClusterOptions:
    """Where the job runs and how its pipeline is cut."""

    address: str | None = None  # Ray address; None: $RAY_ADDRESS, else a local Ray for the run
    local_cpus: int | None = None  # size of the local Ray started when no address is given
    batch_size: int | None = None  # clips per forward; None: sized for the device
    actors_per_gpu: int = default("actors_per_gpu")  # model actors sharing each GPU (cluster.sizing)
    decode_timeout_s: float = default("decode_timeout_s")
    quiet: bool = default("quiet")


@dataclass(kw_only=True)
class RunOptions(ModelOptions, ClusterOptions):
    """A job that writes results shard by shard: evaluate and label."""

    num_actors: int | None = None  # None: one per GPU, one on a CPU-only cluster
    shard_size: int = default("shard_size")  # videos per Parquet file
    gpus: int | str = default("gpus")  # GPUs the run wants (cluster.runtime.gpus_wanted); 0: on CPUs
    gpu_wait_s: float = default("gpu_wait_s")  # a run meant for GPUs stops when none has come this long
    storage_outage_s: float = default("storage_outage_s")  # a storage failing every read this long stops the run (exit 4)
    # time.monotonic() when the command started (submit.py sets it), so the times a job reports
    # cover the whole process, imports and start-up included; None: when the job was called
    started_at: float | None = None
