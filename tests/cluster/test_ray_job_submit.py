"""``ray job submit --working-dir . -- python submit.py evaluate ...`` on a real ``ray start --head``.

The cluster is the test's own: ``ray start --head --block`` in a new process session, with
every port chosen free, its own ``--temp-dir`` and ``RAY_TMPDIR`` (so its address file is not
where another ``ray.init()`` on this machine would find it), token authentication with a
token made up here (nothing read from or written to ``~/.ray``). It is stopped by signalling
that session, never with ``ray stop``, which would stop every Ray on the machine, the
in-process ``ray_local`` and other people's included. Whatever is left after SIGTERM is
SIGKILLed, even when the test fails.

The job reads the shared video set by absolute path and writes to an absolute local folder;
its predictions must equal ``x3d.predict_video``'s, which the in-process tests also equal,
and its summary the accuracy worked out here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from cluster.runtime import IDLE_WORKER_KEEP_MS

from tests.cluster.procs import RAY, free_ports, processes_mentioning, tail
from tests.cluster.evalset import (
    PRESET,
    VIEWS,
    EvalSet,
    assert_rows_scored,
    assert_summary_all_scored,
    kill_session,
    session_pids,
    wait_session_gone,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Head:
    dashboard: str  # http://127.0.0.1:<port>, where jobs are submitted
    env: dict[str, str]  # the environment that reaches it: RAY_TMPDIR and the auth token
    temp_dir: Path
    log: Path


def _dashboard_up(url: str, token: str) -> bool:
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def ray_head() -> Head:
    # /tmp and short: Ray puts Unix sockets under the temp dir, and their paths are limited.
    temp = Path(tempfile.mkdtemp(prefix="x3dh-", dir="/tmp"))
    gcs, dashboard, agent_http, agent_grpc, client, metrics, runtime_env, node_manager, object_manager = free_ports(9)
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(temp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               RAY_idle_worker_killing_time_threshold_ms=str(IDLE_WORKER_KEEP_MS))  # as cluster/Dockerfile sets it
    log = temp / "ray-start.log"
    cmd = RAY + [
        "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--include-dashboard", "true", "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--ray-client-server-port", str(client),
        "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
        "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
        "--temp-dir", str(temp / "ray"), "--disable-usage-stats",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=temp, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while not _dashboard_up(url, token):
            if proc.poll() is not None:
                pytest.fail(f"`ray start --head` exited with {proc.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray dashboard (needed for job submission) did not come up at {url}:\n{tail(log)}")
            time.sleep(0.5)
        yield Head(url, env, temp, log)
    finally:
        # `ray start --block` stops the processes it started when it gets SIGTERM.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        left = wait_session_gone(proc.pid, timeout_s=30)
        if left:
            kill_session(proc.pid)
            wait_session_gone(proc.pid, timeout_s=15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for pid in processes_mentioning(str(temp)):  # anything that left the session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stray = sorted(processes_mentioning(str(temp))) + session_pids(proc.pid)
        shutil.rmtree(temp, ignore_errors=True)
        assert not stray, f"Ray processes left behind: {stray}"


def test_ray_job_submit_gives_the_in_process_results(evalset: EvalSet, ray_head: Head, tmp_path: Path):
    output = tmp_path / "job-out"  # absolute: the job runs in an unpacked copy of the working dir
    runtime_env = {"env_vars": {"X3D_PRESETS_MODULE": "tests.presets", "PYTHONUNBUFFERED": "1"}}
    cmd = RAY + [
        "job", "submit", "--address", ray_head.dashboard, "--working-dir", ".",
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "submit.py", "evaluate", "--video-list", str(evalset.ann_file), "--data-root", str(evalset.root),
        "--model", PRESET, "--checkpoint", str(evalset.checkpoint), "--views", str(VIEWS), "--shard-size", "4",
        "--output", str(output),
    ]
    job = subprocess.run(cmd, cwd=ROOT, env=ray_head.env, capture_output=True, text=True, timeout=360)
    detail = f"stdout:\n{job.stdout[-4000:]}\nstderr:\n{job.stderr[-3000:]}\nray start:\n{tail(ray_head.log, 1500)}"
    assert job.returncode == 0, detail
    assert "succeeded" in job.stdout + job.stderr, detail
    assert "| this run | mmaction2 |" in job.stdout + job.stderr, detail  # the job's own output came back

    rows = ds.dataset(str(output / "predictions"), format="parquet").to_table().to_pydict()
    assert_rows_scored(evalset, rows, evalset.names)
    # Scored on the cluster's workers, not in this process or its ray_local.
    assert os.getpid() not in {int(w.rsplit(":", 1)[1]) for w in rows["worker"]}

    summary = json.loads((output / "summary.json").read_text())
    assert_summary_all_scored(evalset, summary, evalset.names)
    assert summary["output"] == str(output)
