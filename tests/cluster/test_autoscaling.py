"""The job on a cluster that grows from zero GPUs: Ray's own fake multi-node autoscaler.

The cluster is the test's own: ``ray start --head --autoscaling-config=...`` with
``RAY_FAKE_CLUSTER=1`` and a ``fake_multinode`` provider, shaped like ``cluster/ray-cluster.yaml``:
a head with 2 CPUs and no GPU, and a GPU node type (1 GPU, 1 CPU) with ``min_workers: 0`` and
at most 2. The autoscaler starts a node of that type as a real raylet on this machine when
demand asks for it (here: the run's model actors, which ask for a GPU), and removes it once
idle. On these fake GPU nodes CUDA is absent, so an actor that holds a GPU computes on CPU.

Ray's ``AutoscalingCluster.start()``/``shutdown()`` run ``ray stop --force``, which would end
every Ray on the machine (CI's, other tests'): the head is started here in its own session and
temp dir, and only its processes (and the nodes its autoscaler started, which are its
descendants or name its temp dir) are ended, by pid.

Cases: a run against the head alone ends with its model actors on nodes the autoscaler started
for it, holding GPUs, and every row scored as on a fixed cluster; a GPU node that joins mid-run
gets work; a GPU node removed mid-run loses nothing; after the run every GPU and CPU is free
(nothing of the run holds a node, so an autoscaler can scale to zero).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from cluster.runtime import IDLE_WORKER_KEEP_MS
from tests.cluster.evalset import PRESET, PROB_TOL, VIEWS, EvalSet, replicate_evalset
from tests.cluster.procs import RAY, comm, descendants, free_ports, kill, processes_mentioning, tail, torn_down, wait_ray_started

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
GPU_TYPE = "gpu_worker"
START_TIMEOUT_S = 240.0
JOB_TIMEOUT_S = 480.0
COPIES = 30  # 300 videos: long enough on a 2-core machine for nodes to join and leave mid-run
SHARD_SIZE = 4


def autoscaling_config(gcs_port: int, max_gpu_nodes: int, idle_minutes: float) -> dict:
    """A ``fake_multinode`` cluster config (the wheel does not ship Ray's example)."""
    return {
        "cluster_name": "x3d-fake",
        "max_workers": max_gpu_nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_minutes,
        # The fake provider starts each node's raylet itself: nothing to set up over SSH, and a
        # node updater (which the fake provider refuses) only runs when a node is slow to join.
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}",
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            GPU_TYPE: {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0,
                       "max_workers": max_gpu_nodes},
        },
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }  # fmt: skip


@dataclass
class FakeCluster:
    base: Path
    env: dict[str, str]
    head: subprocess.Popen
    log: Path
    gcs: str

    def pids(self) -> set[int]:
        return descendants({self.head.pid}) | processes_mentioning(str(self.base))

    def gpu_raylets(self) -> list[int]:
        """Raylets of the nodes the autoscaler started (the head's is the oldest)."""
        raylets = sorted(p for p in self.pids() if comm(p) == "raylet")
        return raylets[1:]

    def resources(self, available: bool = False) -> dict[str, float]:
        """The cluster's resources (``available``: those no task or actor holds), as a driver sees them."""
        read = "available_resources" if available else "cluster_resources"
        query = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                 f"print('RESOURCES', json.dumps(ray.{read}()))")
        out = subprocess.run([sys.executable, "-c", query, self.gcs], env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        line = next(line for line in out.stdout.splitlines() if line.startswith("RESOURCES "))
        return json.loads(line.split(" ", 1)[1])

    def logs(self) -> str:
        """The autoscaler's own log, for a failure message: why a node launch failed."""
        logs = self.base / "ray" / "session_latest" / "logs"
        return "\n".join(f"--- {name}:\n{tail(logs / name, 3000)}" for name in ("monitor.err", "monitor.log"))

    def stop(self) -> list[str]:
        """SIGKILL the head's processes and the nodes its autoscaler started, until none is
        left: a node being launched as the monitor dies may still fork for a moment."""
        deadline = time.monotonic() + 30
        quiet = 0
        while quiet < 3 and time.monotonic() < deadline:
            doomed = self.pids() - {os.getpid()}
            quiet = 0 if doomed else quiet + 1
            kill(doomed)
            time.sleep(0.5)
        try:
            self.head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 15  # and whatever was still on its way in or out
        while self.pids() and time.monotonic() < deadline:
            kill(self.pids() - {os.getpid()})
            time.sleep(1.0)
        return sorted(f"{pid} {comm(pid)}" for pid in self.pids() if comm(pid))  # no comm: gone as we looked


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[FakeCluster]:
    base = Path(tempfile.mkdtemp(prefix="x3das-", dir="/tmp"))  # short: Ray's socket paths are limited
    gcs, node_manager, object_manager, metrics = free_ports(4)
    config = base / "autoscaling.yaml"
    config.write_text(json.dumps(autoscaling_config(gcs, max_gpu_nodes=2, idle_minutes=0.1)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_FAKE_CLUSTER="1",
        RAY_AUTH_MODE="disabled",  # every process of a local multi-node Ray 2.60 needs it
        RAY_TMPDIR=str(base),
        RAY_USAGE_STATS_ENABLED="0",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        RAY_idle_worker_killing_time_threshold_ms=str(IDLE_WORKER_KEEP_MS),
    )
    env.pop("X3D_PRESETS_MODULE", None)
    env.pop("X3D_GPUS", None)
    log = base / "head.log"
    cmd = RAY + [
        "start", "--head", "--block", "--port", str(gcs), "--temp-dir", str(base / "ray"), "--disable-usage-stats",
        "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
        "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
        "--metrics-export-port", str(metrics), "--min-worker-port", "0", "--max-worker-port", "0",
        "--object-store-memory", str(200 * 1024 * 1024), f"--autoscaling-config={config}",
    ]  # fmt: skip
    with open(log, "wb") as out:
        head = subprocess.Popen(cmd, cwd=base, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    c = FakeCluster(base, env, head, log, f"127.0.0.1:{gcs}")
    with torn_down(c.stop, base):
        wait_ray_started(head, log, time.monotonic() + START_TIMEOUT_S, "the fake autoscaling head")
        yield c


@dataclass
class Job:
    proc: subprocess.Popen
    output: Path
    started: float  # time.time() at launch


def start_job(c: FakeCluster, ev: EvalSet, root: Path, ann_file: Path, output: Path, *flags: str) -> Job:
    env = dict(c.env, X3D_PRESETS_MODULE="tests.presets")
    cmd = [
        sys.executable, "submit.py", "evaluate", "--video-list", str(ann_file), "--data-root", str(root),
        "--model", PRESET, "--checkpoint", str(ev.checkpoint), "--views", str(VIEWS), "--address", c.gcs,
        "--shard-size", str(SHARD_SIZE), "--output", str(output), *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    return Job(proc, output, time.time())


def finish(c: FakeCluster, job: Job) -> tuple[dict[str, list], dict, str]:
    try:
        log, _ = job.proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill(descendants({job.proc.pid}))
        log, _ = job.proc.communicate()
        pytest.fail(f"the job did not finish in {JOB_TIMEOUT_S:g} s:\n{log[-4000:]}\nhead:\n{tail(c.log)}")
    assert job.proc.returncode == 0, f"the job exited with {job.proc.returncode}:\n{log[-5000:]}"
    rows = ds.dataset(str(job.output / "predictions"), format="parquet").to_table().to_pydict()
    return rows, json.loads((job.output / "summary.json").read_text()), log


def scored_rows(output: Path) -> int:
    count = 0
    for path in sorted((output / "predictions").glob("part-*.parquet")):
        try:
            count += pq.read_metadata(path).num_rows
        except OSError:  # pragma: no cover - shards are renamed into place whole
            pass
    return count


def landed_workers(output: Path) -> set[str]:
    """The model actors (host:pid) that scored the rows landed so far."""
    workers: set[str] = set()
    for path in sorted((output / "predictions").glob("part-*.parquet")):
        try:
            workers |= set(pq.read_table(path, columns=["worker"]).column("worker").to_pylist())
        except OSError:  # pragma: no cover - shards are renamed into place whole
            pass
    return workers


def check_scores(ev: EvalSet, origin: dict[str, str], rows: dict[str, list]) -> None:
    assert rows["video"] == list(origin)  # every listed video once, in list order
    for i, name in enumerate(rows["video"]):
        assert rows["error"][i] is None, rows["error"][i]
        assert np.abs(np.asarray(rows["probs"][i], dtype=np.float32) - ev.probs[origin[name]]).max() < PROB_TOL, name


def wait_for(condition, timeout_s: float, what: str, job: Job | None = None, c: FakeCluster | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if job is not None and job.proc.poll() is not None:
            log = "\n".join(line for line in job.proc.communicate()[0].splitlines() if "(autoscaler +" not in line)
            pytest.fail(f"the job ended before {what}:\n{log[-3000:]}\n{c.logs() if c else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} in {timeout_s:g} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def evalset_copies(evalset: EvalSet, tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    return replicate_evalset(evalset, tmp_path_factory.mktemp("autoscaling-set"), COPIES)


def test_a_run_on_a_head_without_gpus_grows_its_pool_on_autoscaled_gpu_nodes(
        fake_cluster: FakeCluster, evalset: EvalSet, evalset_copies, tmp_path: Path):
    """``--gpus 2`` against a head that has no GPU: the run's actors wait for GPU nodes the
    autoscaler starts for them, one node joins mid-run and gets work, one is removed mid-run
    (its raylet killed) and nothing is lost; at the end the GPU nodes go back to zero."""
    root, ann_file, origin = evalset_copies
    c = fake_cluster
    assert c.resources().get("GPU", 0) == 0  # the run starts on a cluster without GPUs
    job = start_job(c, evalset, root, ann_file, tmp_path / "grown", "--gpus", "2", "--gpu-wait", "300")
    wait_for(lambda: scored_rows(job.output) >= SHARD_SIZE, JOB_TIMEOUT_S, "scored shard", job, c)
    first_scored = time.time() - job.started
    # The second GPU node joins mid-run and its actor gets work; then the first node is removed.
    wait_for(lambda: len(landed_workers(job.output)) >= 2, START_TIMEOUT_S, "video scored on a second GPU node", job, c)
    landed = scored_rows(job.output)
    os.kill(c.gpu_raylets()[0], signal.SIGKILL)
    assert landed < len(origin), "the run was over before a node left; nothing was tested"

    rows, summary, log = finish(c, job)
    check_scores(evalset, origin, rows)
    assert (summary["num_videos"], summary["num_ok"], summary["num_failed"]) == (len(origin), len(origin), 0)

    # Every row was scored by a model actor that held a GPU on a node the autoscaler started.
    workers = {w["worker"]: w for w in summary["workers"]}
    assert set(rows["worker"]) <= set(workers), (set(rows["worker"]), workers)
    used = [workers[w] for w in set(rows["worker"])]
    assert all(w["gpu_ids"] for w in used), used  # the head has no GPU: these ran on the autoscaled nodes
    assert len({w["node"] for w in used}) >= 2, f"the node that joined got no work: {used}"
    print(f"\nfirst shard scored {first_scored:.1f} s after the job started; {len(used)} GPU actor(s) scored, "
          f"{len(summary['workers'])} started")

    # Released at the end: every GPU (and CPU) is free again, so an autoscaler can remove the
    # nodes. (This v1 fake provider cannot idle-terminate its local nodes itself: their raylets
    # report the machine's IP, not the node id the provider names them by.)
    def released() -> bool:
        total, free = c.resources(), c.resources(available=True)
        return all(free.get(r, 0) == total.get(r, 0) for r in ("GPU", "CPU"))
    wait_for(released, 60, "release of every GPU and CPU after the run")
