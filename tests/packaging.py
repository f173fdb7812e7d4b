"""What the installed package must hold, computed from the code rather than from pyproject.

The top-level names the shipped code imports (every ``import`` statement, function-level ones
included) that are this project's own: a folder with an ``__init__.py`` or a ``.py`` file at the
checkout's root. A package the code imports but the wheel, the image or the launcher check
leaves out is then a failing test, whatever pyproject says.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_MODULE = "submit"  # the console script's module (pyproject: x3d-ray = "submit:main")


def own_top_level() -> set[str]:
    """This checkout's importable top-level names (packages and root modules)."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    modules = {p.stem for p in ROOT.glob("*.py")}
    return packages | modules


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def shipped_top_level() -> set[str]:
    """The entry module and, transitively, every own package it imports: what must ship."""
    own = own_top_level()
    needed, todo = set(), [ENTRY_MODULE]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        files = [ROOT / f"{name}.py"] if (ROOT / f"{name}.py").is_file() else sorted((ROOT / name).rglob("*.py"))
        for path in files:
            todo += sorted((_imports(path) & own) - needed)
    return needed
