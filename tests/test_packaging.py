"""What users install is what runs: the wheel holds every package the code imports, and its
installed ``x3d-ray`` command works outside the checkout.

The slow test builds the wheel from a copy of the checkout (the build writes ``build/`` and
``*.egg-info`` next to its sources, so never into this one), installs it non-editable into a
fresh venv and runs the installed command from an empty folder. The venv reuses this
interpreter's site-packages (torch, Ray...) through a ``.pth`` *path* line, not
``--system-site-packages``: the latter would also run the ``.pth`` files there, among them the
finder of an editable install of the checkout (``pip install -e .``, as CI and the dev set-up
do), which would quietly supply any package the wheel lacks.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.schemas import PREDICTION_SCHEMA
from tests.packaging import ENTRY_MODULE, ROOT, shipped_top_level

COPY_IGNORE = shutil.ignore_patterns(".git", "runs", "build", ".venv", ".whl", "__pycache__", "*.egg-info", ".pytest_cache", "tests", "bench")


def test_pyproject_ships_every_package_the_code_imports():
    """The package list is found, not listed: every package the entry point reaches is found
    by setuptools with pyproject's own find settings, and the console script is ours."""
    from setuptools import find_packages

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = project["tool"]["setuptools"]["packages"]["find"]
    assert "include" not in find, "a hand-kept include list leaves the next new package out"
    found = {p.split(".")[0] for p in find_packages(str(ROOT), exclude=find.get("exclude", ()))}
    modules = set(project["tool"]["setuptools"].get("py-modules", []))
    needed = shipped_top_level()
    assert {"x3d", "worker", "cluster", "jobs", "submit"} <= needed  # the walk itself works
    assert needed <= found | modules, f"imported but not packaged: {sorted(needed - found - modules)}"
    assert "tests" not in found and "bench" not in found
    assert project["project"]["scripts"] == {"x3d-ray": f"{ENTRY_MODULE}:main"}


def test_requires_python_is_true():
    """``tomllib`` (jobs.datasets) is 3.11+; pyproject must not promise 3.10."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert spec.replace(" ", "") == ">=3.11", spec


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_installed_wheel_runs_outside_the_checkout(tmp_path: Path):
    # 1. the wheel, built from a copy of the checkout
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE)
    wheels = tmp_path / "wheels"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
                 tmp_path, dict(os.environ))
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("x3d_ray-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0].removesuffix(".py") for name in zf.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert shipped_top_level() <= top, f"missing from the wheel: {sorted(shipped_top_level() - top)}"
    assert "tests" not in top

    # 2. a fresh venv that sees the installed torch/Ray but not the editable checkout
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, dict(os.environ))
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    venv_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, {}).stdout.strip())
    (venv_site / "system-site.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # path lines only: no .pth of theirs runs
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "X3D_PRESETS_MODULE") and not k.startswith("RAY_")}
    installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                     tmp_path, env)
    assert installed.returncode == 0, installed.stderr[-3000:]

    # 3. from an empty folder: every package comes from the venv, then the command runs
    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(python), "-c", f"import {', '.join(sorted(shipped_top_level()))}, sys; "
                  f"print('\\n'.join(m.__file__ for m in ({', '.join(sorted(shipped_top_level()))}))); "
                  "print('finder' if any('editable' in repr(f) for f in sys.meta_path) else 'clean')"], work, env)
    assert where.returncode == 0, where.stderr[-3000:]
    *files, finder = where.stdout.split()
    assert finder == "clean", "the editable install's finder reached the venv"
    assert all(Path(f).is_relative_to(venv_site) for f in files), files

    command = str(venv / "bin" / "x3d-ray")
    helped = _run([command, "--help"], work, env, timeout=120)
    assert helped.returncode == 0 and "usage: x3d-ray" in helped.stdout, helped.stderr[-3000:]
    for sub in ("label", "benchmark"):
        assert _run([command, sub, "--help"], work, env, timeout=120).returncode == 0, sub

    ray_tmp = Path(tempfile.mkdtemp(prefix="x3dw-", dir="/tmp"))  # short: Ray's socket paths live there
    try:
        env.update(X3D_CACHE=str(tmp_path / "cache"), RAY_TMPDIR=str(ray_tmp))
        ran = _run([command, "--dataset", "sample", "--limit", "20", "--views", "1", "--output", "out", "--num-cpus", "2"],
                   work, env, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    table = pq.read_table(work / "out" / "predictions")
    assert table.num_rows == 20
    assert table.column_names == PREDICTION_SCHEMA.names
    assert table.column("error").null_count == 20  # every video scored
    assert (work / "out" / "summary.json").is_file()
