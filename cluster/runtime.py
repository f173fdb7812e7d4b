"""Joining a Ray cluster and sizing the job to what it offers."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import ray

__all__ = ["ClusterError", "ClusterShape", "connect", "cluster_shape"]


class ClusterError(Exception):
    """Ray could not be reached or cannot run the job; one line for the user."""


@dataclass(frozen=True)
class ClusterShape:
    cpus: float
    gpus: float
    nodes: int


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (or $RAY_ADDRESS), else start a local Ray for this run.

    Returns True when this call started Ray (so the caller should shut it down).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)  # ray.init would retry an unreachable GCS for minutes
    env = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)  # start-up chatter is not for the job's users
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=True, runtime_env=env)
        else:
            # "local": a fresh instance for this run, never whatever `ray start` left on this host
            ray.init(
                address="local", num_cpus=num_cpus, logging_level=logging.ERROR, include_dashboard=False, runtime_env=env
            )
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = address or "a local Ray instance"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(
            f"could not connect to Ray at {where} ({first[:160]}); check --address / RAY_ADDRESS, or omit both to run locally"
        ) from None
    finally:
        ray_logger.setLevel(level)
    return not address


REACH_TIMEOUT_S = 5.0


def _check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail in seconds when nothing listens at ``address``.

    ``ray.init`` itself retries an unreachable GCS for minutes, printing warnings as it
    goes; a TCP connect to the host and port answers the common mistake at once. Addresses
    Ray resolves itself (``auto``, ``local``) or that do not end in a port are left to Ray.
    """
    if address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ClusterError(
            f"could not connect to Ray at {address} ({reason}); check --address / RAY_ADDRESS, "
            "or omit both to run locally"
        ) from None


def cluster_shape() -> ClusterShape:
    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return ClusterShape(cpus=float(total.get("CPU", 0)), gpus=float(total.get("GPU", 0)), nodes=nodes)


def start_cluster(address: str | None, local_cpus: int | None = None) -> bool:
    """``connect`` with the job's error type; True when the caller owns the Ray instance."""
    return connect(address, num_cpus=local_cpus)


def stop_cluster(started: bool) -> None:
    if started and ray.is_initialized():
        ray.shutdown()


def pipeline_config_for(
    spec,
    num_actors: int | None = None,
    batch_size: int | None = None,
    decode_timeout_s: float = 300.0,
):
    """Size the pipeline to the cluster: one actor per GPU (one CPU actor without GPUs),
    and the remaining CPUs decoding."""
    from cluster.pipeline import PipelineConfig

    shape = cluster_shape()
    gpus = int(shape.gpus)
    if gpus >= 1:
        actors = num_actors or gpus
        if actors > gpus:
            raise ClusterError(f"--num-actors {actors} needs {actors} GPUs but the cluster has {gpus}")
        actor_gpus, actor_cpus = 1.0, 1.0
    else:
        actors = num_actors or 1
        # On CPU the model is the bottleneck: give the actors half the cores, decode on the rest.
        actor_cpus = float(max(1, int(shape.cpus // 2) // actors))
        actor_gpus = 0.0
        if actors * actor_cpus > shape.cpus:
            raise ClusterError(f"--num-actors {actors} needs {actors * actor_cpus:g} CPUs but the cluster has {shape.cpus:g}")
    decode_slots = max(1, int(shape.cpus - actors * actor_cpus))
    views = spec.views
    batch_views = batch_size or (max(60, views) if actor_gpus else max(views, 30))
    return PipelineConfig(
        spec=spec,
        num_actors=actors,
        actor_gpus=actor_gpus,
        actor_cpus=actor_cpus,
        decode_slots=decode_slots,
        batch_views=batch_views,
        batch_size=batch_size,
        decode_timeout_s=decode_timeout_s,
    )
