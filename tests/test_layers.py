"""Imports only go down the layers, so a module's path says which process it runs in.

    x3d      the library: model, checkpoints, protocol, decoding, storage    (no Ray)
    worker   what runs inside Ray's worker processes                         (no Ray)
    cluster  the Ray wiring: connect, size, the model actor, the pipeline
    jobs     the drivers: one lifecycle, evaluate, label, benchmark
    submit   the command line

Every ``import`` statement counts, wherever it stands (module level or inside a function), so
a cycle cannot be hidden in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"x3d": 0, "worker": 1, "cluster": 2, "jobs": 3, "submit": 4}
NO_RAY = ("x3d", "worker")


def _modules() -> list[Path]:
    files = [ROOT / "submit.py"]
    for package in ("x3d", "worker", "cluster", "jobs"):
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def _imports(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, top-level name) of every import in the file, relative ones resolved against
    ``package`` (default: the layer the file lies in)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = package or path.relative_to(ROOT).parts[0].removesuffix(".py")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return found


def _layer_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_go_down(path: Path) -> None:
    own = _layer_of(path)
    bad = [
        f"line {line}: {own} imports {name}"
        for line, name in _imports(path)
        if name in LAYERS and LAYERS[name] > LAYERS[own]
    ]
    if own in NO_RAY:
        bad += [f"line {line}: {own} imports ray" for line, name in _imports(path) if name == "ray"]
    assert not bad, "; ".join(bad)


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The walk finds a function-level import too (the way a cycle used to be hidden). The probe
    is written outside the checkout: a test never writes into the source tree."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from jobs import evaluate\n    import ray\n    from . import views\n")
    assert [name for _, name in _imports(probe, package="x3d")] == ["jobs", "ray", "x3d"]


#: modules of plain data and decisions that every layer imports: they must not pull in Ray or
#: torch (a decode worker never loads torch; the driver's checks answer before either starts)
PLAIN = ("worker.spec", "worker.decode_task", "cluster.config", "cluster.scheduler", "cluster.sizing", "jobs.results", "jobs.cli")


@pytest.mark.parametrize("module", PLAIN)
def test_plain_modules_import_neither_ray_nor_torch(module: str) -> None:
    import subprocess
    import sys

    probe = f"import sys, {module}; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{module} imports {out.strip()}"
