"""Failures before any work: one line, exit 2, in seconds, and nothing of Ray left behind.

Each case runs ``python submit.py`` in its own session with ``RAY_TMPDIR`` set, so a Ray the
command started shows up as a session folder there and its processes in that session:

* Ray cannot start (``RAY_TMPDIR`` names a file: a real ``ray.init`` failure, the kind that
  used to escape ``cluster.runtime.connect`` as a traceback);
* ``--output s3://<no such bucket>/x`` (real S3: the moto server), for evaluate and label:
  reported before Ray starts, not at the first write after the cluster was joined.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import presets
from tests.cluster.evalset import SHAPES, run_in_own_session, write_video_list, write_videos

ROOT = Path(__file__).resolve().parents[1]
MAX_SECONDS = 60.0  # torch's import is most of it; a started local Ray alone takes 10-30 s here


def _run(args: list[str], case_dir: Path, extra_env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, list[int], Path]:
    ray_tmpdir = case_dir / "raytmp"
    ray_tmpdir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"PYTHONPATH": str(ROOT), "X3D_PRESETS_MODULE": "tests.presets", "RAY_TMPDIR": str(ray_tmpdir), **extra_env})
    code, out, err, seconds, leftover = run_in_own_session([sys.executable, str(ROOT / "submit.py"), *args], case_dir, env, 240, 5.0)
    return subprocess.CompletedProcess(args, code, out, err), seconds, leftover, ray_tmpdir


def _assert_one_line(result: subprocess.CompletedProcess, seconds: float, leftover: list[int], words: list[str]) -> None:
    detail = f"argv={result.args}\nstderr={result.stderr[-3000:]!r}"
    assert result.returncode == 2, detail
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, detail
    assert "Traceback" not in result.stderr and result.stderr.startswith("submit.py: error:"), detail
    for word in words:
        assert word in result.stderr, f"{word!r} missing; {detail}"
    assert leftover == [], detail
    assert seconds < MAX_SECONDS, f"took {seconds:.1f} s; {detail}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("startup")
    root = folder / "videos"
    names = write_videos(root, SHAPES[:1])
    ann_file = write_video_list(folder / "list.txt", [(names[0], 0)])
    checkpoint = presets.write_checkpoint(folder / "x3d_test.pth")
    return {"folder": folder, "root": root, "ann_file": ann_file, "checkpoint": checkpoint}


def _evaluate_args(inp: dict[str, Path], output: str) -> list[str]:
    return ["evaluate", "--video-list", str(inp["ann_file"]), "--data-root", str(inp["root"]), "--model", presets.NAME,
            "--checkpoint", str(inp["checkpoint"]), "--views", "1", "--num-cpus", "1", "--output", output, "--quiet"]


def _label_args(inp: dict[str, Path], output: str) -> list[str]:
    return ["label", "--input", str(inp["root"]), "--output", output, "--model", presets.NAME,
            "--checkpoint", str(inp["checkpoint"]), "--views", "1", "--num-cpus", "1", "--quiet"]


def test_ray_that_cannot_start_is_one_line(inputs, tmp_path: Path):
    """A real ``ray.init`` failure (its temp dir is a file): ClusterError's one line, exit 2."""
    not_a_folder = tmp_path / "ray-tmp-is-a-file"
    not_a_folder.write_text("")
    output = tmp_path / "out"
    result, seconds, leftover, _ = _run(_evaluate_args(inputs, str(output)), tmp_path / "case",
                                        {"RAY_TMPDIR": str(not_a_folder)})
    _assert_one_line(result, seconds, leftover, ["could not start a local Ray", "RAY_TMPDIR"])
    assert not (output / "run.json").exists()


def test_output_bucket_that_does_not_exist_fails_before_ray(inputs, tmp_path: Path, s3_env: str, s3_server: str):
    """evaluate and label with ``--output s3://<missing bucket>/x``: one line naming the bucket,
    exit 2, and Ray never started (its temp dir stays empty)."""
    missing = f"s3://{s3_env}-missing/x"
    aws = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                     "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "NO_PROXY")}
    cases = {"evaluate": _evaluate_args(inputs, missing), "label": _label_args(inputs, missing)}
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(_run, args, tmp_path / name, aws) for name, args in cases.items()}
        results = {name: f.result() for name, f in futures.items()}
    for name, (result, seconds, leftover, ray_tmpdir) in results.items():
        _assert_one_line(result, seconds, leftover, [missing, "bucket does not exist"])
        assert list(ray_tmpdir.iterdir()) == [], f"{name}: Ray was started"
