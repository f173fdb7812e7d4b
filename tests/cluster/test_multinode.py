"""The evaluate job on a real multi-node Ray cluster, and a worker node lost mid-run.

The cluster is the test's own, started on this machine with ``ray start``: a head with no CPUs
(it hosts the GCS, the dashboard and the job's driver, like a cluster launcher or KubeRay
head) and two worker nodes, ``node_a`` and ``node_b``, each ``ray start --block`` in its own
process session with its own ``--temp-dir``, its own free ports and a custom resource named
after it (so the state API says which node is which). Each worker node declares one GPU (a
logical resource: Ray hands it out, torch finds no CUDA and the model runs on the CPU), which
makes it the shape of the GPU nodes in ``cluster/ray-cluster.yaml``: one model actor per GPU,
the node's CPUs decoding. Token authentication uses a token made up here; nothing is read from
or written to ``~/.ray``. Everything is stopped by killing the sessions (and anything that left
them), never with ``ray stop``, which would stop every Ray on the machine.

The job goes in through ``ray job submit --working-dir``: the driver runs on the head, the
workers get the code from the job's runtime environment, and every worker reads the videos by
absolute path (shared storage, no data locality). The video set is the shared evalset copied
``COPIES`` times, in shards of ``SHARD_SIZE``, so that a run lasts long enough to be
interrupted. The oracles: ``x3d.predict_video`` for every video, the accuracy worked out from
the labels (``expected_accuracy``) and, for the node-loss run, the undisturbed run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from cluster.runtime import IDLE_WORKER_KEEP_MS

from tests.cluster.procs import RAY, comm, descendants, free_ports, kill, processes_mentioning, tail, torn_down, wait_ray_started
from tests.cluster.evalset import (
    ACC_KEYS,
    PRESET,
    VIEWS,
    EvalSet,
    assert_rows_scored,
    assert_summary_all_scored,
    replicate_evalset,
    session_pids,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
# Once its workers are up the job scores these tiny videos at over a hundred per second, in
# actor calls of 64 videos, so the set is large enough that the node dies with most of the run
# to go (the test checks that it did).
COPIES = 60  # 600 videos
SHARD_SIZE = 4  # 150 shards
WORKERS = ("node_a", "node_b")
START_TIMEOUT_S = 240.0  # a loaded 2-core machine takes tens of seconds per node
JOB_TIMEOUT_S = 480.0


# ----------------------------------------------------------------------------- processes


# ----------------------------------------------------------------------------- the cluster


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path

    @property
    def sid(self) -> int:
        return self.proc.pid  # started with start_new_session: its pid is the session id

    def pids(self) -> set[int]:
        return set(session_pids(self.sid))

    def raylet(self) -> int:
        found = [pid for pid in self.pids() if comm(pid) == "raylet"]
        assert len(found) == 1, f"{self.name}: expected one raylet, found {found}"
        return found[0]


@dataclass
class Cluster:
    base: Path  # short, under /tmp: Ray's Unix socket paths are limited to ~107 characters
    env: dict[str, str]
    gcs: str = ""  # host:port, what --address takes
    dashboard: str = ""  # http://host:port, where jobs are submitted
    nodes: dict[str, Node] = field(default_factory=dict)
    clients: list[subprocess.Popen] = field(default_factory=list)  # `ray job submit` processes

    def start_node(self, name: str, args: list[str]) -> Node:
        temp = self.base / name
        temp.mkdir()
        node_manager, object_manager, agent_http, agent_grpc, metrics, runtime_env = free_ports(6)
        cmd = RAY + [
            "start", "--block", "--temp-dir", str(temp), "--disable-usage-stats",
            "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
            "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
            "--min-worker-port", "0", "--max-worker-port", "0",  # workers take free ports from the OS
            "--object-store-memory", str(100 * 1024 * 1024),
            *args,
        ]  # fmt: skip
        log = self.base / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=temp, env=self.env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        node = self.nodes[name] = Node(name, proc, temp, log)
        return node

    def wait_started(self, node: Node, deadline: float) -> None:
        wait_ray_started(node.proc, node.log, deadline, node.name)

    def dashboard_up(self) -> bool:
        token = self.env["RAY_AUTH_TOKEN"]
        request = urllib.request.Request(f"{self.dashboard}/api/version", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> list[int]:
        """SIGKILL every process of every node, and whatever left their sessions; returns strays."""
        kill(descendants({p.pid for p in self.clients if p.poll() is None}))
        for _ in range(3):  # a raylet may still be forking workers while we kill
            doomed: set[int] = set()
            for node in self.nodes.values():
                doomed |= node.pids()
            doomed = descendants(doomed) | processes_mentioning(str(self.base))
            doomed.discard(os.getpid())
            if not doomed:
                break
            kill(doomed)
            time.sleep(0.5)
        for node in self.nodes.values():
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return sorted(set().union(*(n.pids() for n in self.nodes.values())) | processes_mentioning(str(self.base)))

    def state(self) -> dict:
        """Nodes and model actors, as Ray's state API (a separate client, via the dashboard) sees them."""
        query = (
            "import json, sys\n"
            "from ray.util.state import list_actors, list_nodes\n"
            "url = sys.argv[1]\n"
            "nodes = {n.node_id: {'state': n.state, 'resources': n.resources_total}"
            " for n in list_nodes(address=url, detail=True, limit=100)}\n"
            "actors = [{'pid': a.pid, 'node_id': a.node_id, 'state': a.state}"
            " for a in list_actors(address=url, filters=[('class_name', '=', 'ModelActor')], detail=True, limit=1000)]\n"
            "print(json.dumps({'nodes': nodes, 'actors': actors}))\n"
        )
        out = subprocess.run([sys.executable, "-c", query, self.dashboard], env=self.env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def node_names(self, state: dict) -> dict[str, str]:
        """node id -> our name (the custom resource it was started with); the head is 'head'."""
        names = {}
        for node_id, info in state["nodes"].items():
            names[node_id] = next((w for w in WORKERS if w in info["resources"]), "head")
        return names


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="x3dmn-", dir="/tmp"))
    gcs, dashboard, client = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_TMPDIR=str(base),  # no ray.init() elsewhere on this machine finds this cluster by default
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_idle_worker_killing_time_threshold_ms=str(IDLE_WORKER_KEEP_MS),  # as cluster/Dockerfile sets it
        # A node whose raylet is gone is declared dead after ~5 failed health checks 1 s apart
        # (Ray's default is 3 s apart): what a worker node loss costs, shortened for the test.
        RAY_health_check_period_ms="1000",
        RAY_health_check_failure_threshold="5",
    )
    env.pop("X3D_PRESETS_MODULE", None)
    c = Cluster(base, env, gcs=f"127.0.0.1:{gcs}", dashboard=f"http://127.0.0.1:{dashboard}")
    with torn_down(c.stop, base):
        deadline = time.monotonic() + START_TIMEOUT_S
        head = c.start_node("head", [
            "--head", "--port", str(gcs), "--num-cpus", "0", "--num-gpus", "0",
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
            "--ray-client-server-port", str(client),
        ])  # fmt: skip
        c.wait_started(head, deadline)
        workers = [
            c.start_node(name, ["--address", c.gcs, "--num-cpus", "2", "--num-gpus", "1", "--resources", json.dumps({name: 1})])
            for name in WORKERS
        ]
        for node in workers:
            c.wait_started(node, deadline)
        while not c.dashboard_up():
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray dashboard (job submission) did not come up at {c.dashboard}:\n{tail(head.log)}")
            time.sleep(0.5)
        yield c


# ----------------------------------------------------------------------------- the job


@dataclass
class Dataset:
    root: Path
    ann_file: Path
    origin: dict[str, str]  # listed name -> evalset name (whose reference scores it must get)

    @property
    def names(self) -> list[str]:
        return list(self.origin)


@pytest.fixture(scope="module")
def dataset(evalset: EvalSet, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root, ann_file, origin = replicate_evalset(evalset, tmp_path_factory.mktemp("multinode-set"), COPIES)
    return Dataset(root, ann_file, origin)


def submit_command(c: Cluster, ev: EvalSet, data: Dataset, output: Path) -> list[str]:
    # The code travels as the job's working dir; the test preset comes in through its env.
    runtime_env = {"env_vars": {"X3D_PRESETS_MODULE": "tests.presets"}, "excludes": [".git"]}
    return RAY + [
        "job", "submit", "--address", c.dashboard, "--working-dir", str(ROOT),
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "submit.py", "evaluate", "--video-list", str(data.ann_file), "--data-root", str(data.root),
        "--model", PRESET, "--checkpoint", str(ev.checkpoint), "--views", str(VIEWS),
        "--address", c.gcs, "--num-actors", "2", "--shard-size", str(SHARD_SIZE), "--output", str(output),
    ]  # fmt: skip


@dataclass
class Run:
    output: Path
    rows: dict[str, list]
    summary: dict
    log: str


def finish(c: Cluster, proc: subprocess.Popen, output: Path) -> Run:
    try:
        log, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill(descendants({proc.pid}))
        log, _ = proc.communicate()
        pytest.fail(f"the job did not finish in {JOB_TIMEOUT_S:g} s:\n{log[-4000:]}\nhead:\n{tail(c.nodes['head'].log)}")
    assert proc.returncode == 0, f"`ray job submit` exited with {proc.returncode}:\n{log[-5000:]}"
    assert "succeeded" in log, log[-5000:]
    rows = ds.dataset(str(output / "predictions"), format="parquet").to_table().to_pydict()
    return Run(output, rows, json.loads((output / "summary.json").read_text()), log)


def start_job(c: Cluster, ev: EvalSet, data: Dataset, output: Path) -> subprocess.Popen:
    proc = subprocess.Popen(submit_command(c, ev, data, output), cwd=ROOT, env=c.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    c.clients.append(proc)
    return proc


def shard_files(output: Path) -> list[Path]:
    return sorted((output / "predictions").glob("part-*.parquet"))


def check_results(ev: EvalSet, data: Dataset, run: Run) -> None:
    """One row per listed video, in list order, each with its reference scores; the summary's
    accuracy is the one the labels give."""
    assert_rows_scored(ev, run.rows, data.names, data.origin)
    assert_summary_all_scored(ev, run.summary, [data.origin[n] for n in data.names])


@pytest.fixture(scope="module")
def undisturbed(cluster: Cluster, evalset: EvalSet, dataset: Dataset, tmp_path_factory) -> Run:
    output = tmp_path_factory.mktemp("multinode") / "undisturbed"
    return finish(cluster, start_job(cluster, evalset, dataset, output), output)


# ----------------------------------------------------------------------------- tests


def test_job_runs_on_both_worker_nodes(cluster: Cluster, evalset: EvalSet, dataset: Dataset, undisturbed: Run):
    check_results(evalset, dataset, undisturbed)

    # Which node scored each video: the `worker` column's pid, looked up among the model
    # actors the state API lists (it keeps finished jobs' actors, with their node).
    state = cluster.state()
    names = cluster.node_names(state)
    assert sorted(names.values()) == ["head", "node_a", "node_b"]
    actor_node = {a["pid"]: names[a["node_id"]] for a in state["actors"] if a["pid"]}
    pids = {int(w.rsplit(":", 1)[1]) for w in undisturbed.rows["worker"]}
    assert pids <= set(actor_node), (pids, state["actors"])
    used = {actor_node[p] for p in pids}
    assert used == {"node_a", "node_b"}, f"model actors ran on {sorted(used)} only"
    assert undisturbed.summary["num_workers"] == 2


def test_worker_node_loss_loses_no_video(cluster: Cluster, evalset: EvalSet, dataset: Dataset, undisturbed: Run,
                                         tmp_path: Path):
    """SIGKILL node_b's raylet (its object store goes with it, and its workers follow) as soon
    as a landed shard shows node_b's model actor at work: decodes, decoded views and calls
    queued on that actor are lost mid-run. The run must still end with every video once and the
    undisturbed run's results."""
    output = tmp_path / "node-loss"
    victim = cluster.nodes["node_b"]
    proc = start_job(cluster, evalset, dataset, output)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not scored_on(victim, output):
        if proc.poll() is not None:
            pytest.fail(f"the job ended before node_b had scored a video:\n{proc.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            kill(descendants({proc.pid}))
            pytest.fail("node_b scored no video in time")
        time.sleep(0.1)
    os.kill(victim.raylet(), signal.SIGKILL)
    landed = len(shard_files(output))
    assert landed < -(-len(dataset.names) // SHARD_SIZE), "the run was over before the node died; nothing was tested"

    run = finish(cluster, proc, output)
    check_results(evalset, dataset, run)
    for column in ("video", "label", "pred", "topk_classes", "num_views", "error"):
        assert run.rows[column] == undisturbed.rows[column], column
    for key in ACC_KEYS:
        assert run.summary[key] == undisturbed.summary[key], key

    state = cluster.state()
    names = cluster.node_names(state)
    alive = sorted(names[i] for i, info in state["nodes"].items() if info["state"] == "ALIVE")
    assert alive == ["head", "node_a"], state["nodes"]


def scored_on(node: Node, output: Path) -> bool:
    """Whether a landed shard holds a video scored by a process of ``node``."""
    pids = node.pids()
    for path in shard_files(output):
        try:
            workers = pq.read_table(path, columns=["worker"]).column("worker").to_pylist()
        except (OSError, pa.ArrowInvalid):  # pragma: no cover - shards are renamed into place whole
            continue
        if any(int(w.rsplit(":", 1)[1]) in pids for w in workers):
            return True
    return False
