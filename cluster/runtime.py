"""Joining a Ray cluster (or starting a local one), and reading what it offers."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time

import ray
import ray._private.ray_constants as ray_constants

from cluster.errors import ClusterError
from cluster.config import PipelineConfig
from cluster.sizing import ClusterShape, gpu_decode_slots, share_of, size_pipeline
from worker.spec import ModelSpec

__all__ = ["GPUS_ENV", "ClusterError", "ClusterShape", "ProcessStat", "connect", "cluster_shape", "gpus_wanted",
           "pipeline_config_for", "process_stats", "start_cluster", "stop_cluster"]


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (or $RAY_ADDRESS), else start a local Ray for this run.

    Returns True when this call started Ray (so the caller should shut it down).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)  # ray.init would retry an unreachable GCS for minutes
    env = _driver_runtime_env()
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)  # start-up chatter is not for the job's users
    # ray.init installs its own SIGTERM handler (and its C++ core a signal dump): the caller's
    # handlers (jobs.interrupts: a clean stop, exit 143) are put back once Ray is up.
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    # The driver's core worker would install absl's failure signal handler, and its shutdown
    # puts SIGTERM back to the default action: a SIGTERM during ray.shutdown (every shard saved,
    # the summary not written) then killed the driver mid-clean-up, leaving Ray's agents behind.
    # Without it the caller's handler stays in place throughout. Ray's workers keep theirs.
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    children_before = set(_process_table().get("children", {}).get(os.getpid(), ())) if not address else set()
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=True, runtime_env=env)
        else:
            # "local": a fresh instance for this run, never whatever `ray start` left on this host
            ray.init(
                address="local",
                num_cpus=num_cpus,
                logging_level=logging.ERROR,
                include_dashboard=False,
                runtime_env=env,
                _system_config=LOCAL_RAY_CONFIG,
            )
    except BaseException as exc:  # noqa: BLE001 - whatever Ray raises while starting is one line for the user
        if not isinstance(exc, Exception):  # an interrupt (or Ray's own SIGTERM exit) mid-start
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise
        # Ray raises bare ``Exception`` (a local node that timed out during start-up), OSError
        # (a temp dir it cannot write), ConnectionError, RuntimeError, ValueError...: none is a
        # bug of this job, all are a cluster that did not come up. Kill what it started.
        with contextlib.suppress(Exception):
            ray.shutdown()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = f"{type(exc).__name__}: {first[:160]}" if type(exc) is not Exception else first[:160]
        if address:
            raise ClusterError(
                f"could not connect to Ray at {address} ({detail}); check --address / RAY_ADDRESS, or omit both to run locally"
            ) from None
        raise ClusterError(
            f"could not start a local Ray instance ({detail}); check the RAY_* environment variables "
            "(RAY_TMPDIR), free memory and disk, or pass --address"
        ) from None
    finally:
        ray_logger.setLevel(level)
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    if not address:  # the processes ray.init started (GCS, raylet...): the roots of what stop_cluster reaps
        table = _process_table()
        _STARTED[:] = [(pid, table["start"][pid]) for pid in table.get("children", {}).get(os.getpid(), ())
                       if pid not in children_before and pid in table["start"]]
    return not address


#: (pid, start time) of the processes ray.init started for this run's local Ray
_STARTED: list[tuple[int, int]] = []
REAP_WAIT_S = 5.0  # what ray.shutdown's own stop gets before the run's leftovers are killed


@dataclasses.dataclass(frozen=True)
class ProcessStat:
    """The fields of one process's ``/proc/<pid>/stat`` that the clean-ups read."""

    pid: int
    state: str  # "Z": exited, not yet waited for by its parent
    ppid: int
    session: int
    start: int  # start time in clock ticks: tells a process from a later one that reuses its pid


def process_stats() -> list[ProcessStat]:
    """Every process in Linux's /proc now, zombies included; empty where there is no /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    stats = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "(comm)", which may hold spaces
        except OSError:
            continue  # gone meanwhile
        stats.append(ProcessStat(int(name), fields[0].decode(), int(fields[1]), int(fields[3]), int(fields[19])))
    return stats


def _process_table() -> dict:
    """The process table: ``children`` (pid -> child pids) and ``start`` (pid -> start time).
    Empty where there is no /proc."""
    stats = process_stats()
    if not stats:
        return {}
    children: dict[int, list[int]] = {}
    for p in stats:
        children.setdefault(p.ppid, []).append(p.pid)
    return {"children": children, "start": {p.pid: p.start for p in stats}}


def _run_processes() -> list[tuple[int, int]]:
    """The processes of this run's local Ray now: those ray.init started and all their descendants
    (the raylet's workers and agents: DashboardAgent, RuntimeEnvAgent), as (pid, start time)."""
    table = _process_table()
    if not table:
        return []
    out = [(pid, started) for pid, started in _STARTED if table["start"].get(pid) == started]
    todo = [pid for pid, _ in out]
    while todo:
        for child in table["children"].get(todo.pop(), ()):
            if child in table["start"]:
                out.append((child, table["start"][child]))
                todo.append(child)
    return out


def _reap(processes: list[tuple[int, int]], wait_s: float = REAP_WAIT_S) -> None:
    """Kill (by pid) what is left of ``processes`` once ``wait_s`` has passed: no process of the
    run outlives it. A pid whose start time changed is another process now and is left alone."""
    deadline = time.monotonic() + wait_s
    while True:
        table = _process_table()
        alive = [(pid, started) for pid, started in processes if table.get("start", {}).get(pid) == started]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid, _ in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


#: Ray's raylet ends a worker that has been idle for 1 s whenever the node runs more workers than
#: it has CPUs. On a node where the model is the bottleneck, a decode slot idles for seconds
#: between videos, so every decode started a new worker process, which cost more CPU than the
#: decode itself (bench/RESULTS.md, "Decode worker churn").
#: Workers are still recycled when their memory grows (``recycle_rss_mb``), and stop with the run. Clusters
#: started with ``ray start`` get the same setting from the environment variable
#: ``RAY_idle_worker_killing_time_threshold_ms`` (cluster/ launch files set it).
IDLE_WORKER_KEEP_MS = 60_000
LOCAL_RAY_CONFIG = {"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS}


def _driver_runtime_env() -> dict | None:
    """Env vars for the job's workers, less those a submitted job's runtime env already sets.

    Under ``ray job submit`` the job's runtime env (``RAY_JOB_CONFIG_JSON_ENV_VAR``) is merged
    with the one given to ``ray.init``, and Ray refuses the merge when both name the same
    env var, even with the same value; ``--runtime-env-json '{"env_vars":
    {"PYTHONUNBUFFERED": "1"}}'`` would otherwise fail the job.
    """
    env_vars = {"PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY") or OMP_WAIT_POLICY}
    try:
        job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        taken = set((job_config.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        taken = set()
    env_vars = {k: v for k, v in env_vars.items() if k not in taken}
    return {"env_vars": env_vars} if env_vars else None


#: OpenMP threads that wait for work sleep instead of spinning. A model actor's threads share
#: their cores with the decode slot, the driver and whatever else runs on the node; spinning
#: threads then burn the time slices the thread holding the work needs. Passive waiting costs a
#: little on idle cores, which a job's never are, and saves the job from collapsing beside
#: other load (bench/RESULTS.md, "OpenMP threads that sleep while they wait"). A value the user
#: exports is passed on instead.
OMP_WAIT_POLICY = "PASSIVE"

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
    if not sep or not host:
        return  # no port given: left to Ray
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return  # a bare IPv6 address, no port to check
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(
            f"bad Ray address {address!r}: the port {port!r} is not a number from 1 to 65535; "
            "check --address / RAY_ADDRESS (host:port, e.g. 10.0.0.5:6379)"
        )
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


def pipeline_config_for(spec: ModelSpec, num_actors: int | None = None, batch_size: int | None = None,
                        decode_timeout_s: float = 300.0, actors_per_gpu: int = 1, share: tuple[int, int] = (0, 1),
                        gpus: int | str = "auto", gpu_wait_s: float = 0.0) -> PipelineConfig:
    """The pipeline sized to the cluster this process is connected to (``cluster.sizing``) and
    to the GPUs the run wants (``gpus_wanted``); ``share`` (i, n): to driver i of n's part of it
    (``sizing.share_of``). Actors for GPUs the cluster does not have yet wait for them: Ray's
    autoscaler starts nodes for actors it cannot place."""
    shape = cluster_shape()
    wanted, follow = gpus_wanted(gpus, shape.gpus)
    config = size_pipeline(share_of(dataclasses.replace(shape, gpus=float(wanted)), *share), spec, num_actors=num_actors,
                           batch_size=batch_size, decode_timeout_s=decode_timeout_s, actors_per_gpu=actors_per_gpu)
    if config.actor_gpus and wanted > shape.gpus:
        # GPU nodes still to come: how many CPUs they bring is unknown, so an actor asks for one
        # (it fits any GPU node), and decode slots start on the CPUs there are; more join with
        # the nodes (Scheduler.on_capacity)
        config = dataclasses.replace(config, actor_cpus=1.0, actor_threads=1,
                                     decode_slots=gpu_decode_slots(shape.cpus, config.num_actors, 1.0))
    partitioned = share[1] > 1
    mine = config.num_actors * config.actor_gpus
    return dataclasses.replace(config, actors_grow=follow and not partitioned and num_actors is None, gpu_wait_s=gpu_wait_s,
                               cpu_share=mine / wanted if partitioned and config.actor_gpus else 1.0)


#: The GPUs a run wants by default where the cluster says so (``--gpus auto``): the launch files
#: in cluster/ set it to their autoscaling GPU pool's size, which a cluster scaled to zero
#: cannot show at the start.
GPUS_ENV = "X3D_GPUS"


def gpus_wanted(gpus: int | str, present: float) -> tuple[int, bool]:
    """The GPUs a run wants, and whether its pool follows the cluster's GPUs as they join:
    ``--gpus N`` is N; ``auto`` is $X3D_GPUS where it is set, else every GPU the cluster has
    now and each one that joins."""
    if gpus != "auto":
        return int(gpus), False
    env = os.environ.get(GPUS_ENV, "").strip()
    if env:
        try:
            return max(0, int(env)), False
        except ValueError:
            raise ClusterError(f"${GPUS_ENV}={env!r} is not a whole number of GPUs; fix it or pass --gpus N") from None
    return int(present), present >= 1


def cluster_shape() -> ClusterShape:
    total = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in alive]
    return ClusterShape(
        cpus=float(total.get("CPU", 0)),
        gpus=float(total.get("GPU", 0)),
        nodes=len(alive),
        node_cpus=max(node_cpus, default=0.0),
        cpu_nodes=sum(1 for c in node_cpus if c > 0),
    )


def start_cluster(address: str | None, local_cpus: int | None = None) -> bool:
    """``connect`` with the job's error type; True when the caller owns the Ray instance."""
    return connect(address, num_cpus=local_cpus)


def stop_cluster(started: bool) -> None:
    """Shut down the Ray this run started (``started``), and make sure none of its processes
    outlive it: ray.shutdown stops the GCS and the raylet, but the raylet's agents could stay
    behind the driver (a stop that came during the shutdown). Only the run's own processes, by pid."""
    if started and ray.is_initialized():
        processes = _run_processes()  # taken while the raylet still holds its children
        try:
            ray.shutdown()
        finally:
            _reap(processes)
            _STARTED.clear()


