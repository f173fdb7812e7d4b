"""bench/gpu_sweep.py, the GPU model-only sweep, runs here on the CPU in its smoke form, and needs
no Ray: a lent GPU box has only torch, so the one device command must not depend on more."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import runpy, sys
class Block:  # what a bare GPU box lacks
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ray", "decord", "boto3", "botocore", "pyarrow", "av"}:
            raise ImportError("not on a bare GPU box: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["gpu_sweep.py", "--device", "cpu", "--models", "x3d_tiny", "--batches", "1,2", "--compile", "off",
            "--repeats", "2", "--cell-s", "0.1", "--warmup", "1", *sys.argv[1:]]
runpy.run_path("bench/gpu_sweep.py", run_name="__main__")
"""


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_gpu_sweep_smoke_run_on_cpu_without_ray() -> None:
    proc = _sweep("--precisions", "fp32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| x3d_tiny |")]
    assert len(rows) == 4, proc.stdout  # 2 layouts x 2 batches
    for row in rows:
        assert int(row.split("|")[6]) == 1, row  # one forward: far under x3d_tiny's index cap
        rate = float(row.split("|")[7])
        assert rate > 0, row


def test_a_failing_cell_is_a_row_and_the_sweep_goes_on(tmp_path) -> None:
    """A cell that raises (here a precision the runner refuses; on a GPU an index-limit or
    compile error) is recorded with its error; the cells after it still run; exit status 1."""
    out = tmp_path / "cells.jsonl"
    proc = _sweep("--precisions", "fp64,fp32", "--layouts", "ncdhw", "--batches", "1", "--json", str(out))
    assert proc.returncode == 1 and "1 of 2 cell(s) failed" in proc.stderr, proc.stderr[-2000:]
    failed, passed = (line for line in proc.stdout.splitlines() if line.startswith("| x3d_tiny |"))
    assert "FAILED: ValueError: precision must be one of" in failed and "| fp64 |" in failed
    assert float(passed.split("|")[7]) > 0
    cells = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["precision"] for c in cells] == ["fp64", "fp32"]
    assert "error" in cells[0] and cells[1]["median"] > 0 and cells[1]["forwards"] == 1


def test_gpu_sweep_without_cuda_is_one_line() -> None:
    if __import__("torch").cuda.is_available():
        return
    proc = subprocess.run([sys.executable, "bench/gpu_sweep.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--device cpu" in proc.stderr
