"""Checks ``submit.py`` makes before any work, and what its help and the README say about them.

Name checks must answer before torch or Ray is imported (a subprocess inspects ``sys.modules``);
``label --input`` that does not exist and an ``--output`` that is a file are mistakes (exit 2,
nothing written), not empty work; ``--help`` names the presets, protocols and datasets, and every
flag has help text; the README links the flag reference and the exit statuses, which
docs/exit-codes.md lists exactly as submit.py returns them. No Ray is started by any test here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import x3d
from jobs.datasets import load_registry
from tests import presets
from tests.in_process import run_main

ROOT = Path(__file__).resolve().parents[1]


def _main(args: list[str], capfd, monkeypatch, cwd: Path) -> tuple[int, str, str]:
    """``submit.main(args)`` in this process, which must exit: (exit status, stdout, stderr)."""
    code, out, err = run_main(args, capfd, monkeypatch, cwd, presets_module=None)
    assert code is not None, "submit.main returned instead of exiting"
    return code, out, err


def _one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# --------------------------------------------------------------------------- 14: names, before torch and Ray

NAME_CASES = {
    "unknown_dataset": (["--dataset", "no_such_set"], "no_such_set"),
    "unknown_model": (["--dataset", "sample", "--model", "x3d_nope"], "x3d_nope"),
    "model_of_a_custom_dataset": (["--video-list", "list.txt", "--data-root", ".", "--model", "x3d_nope"], "x3d_nope"),
    "unknown_protocol": (["--dataset", "sample", "--protocol", "mmaction3"], "mmaction3"),
    "protocol_the_preset_lacks": (["--dataset", "sample", "--protocol", "mmaction2-0.x"], "mmaction2-0.x"),
    "label_unknown_model": (["label", "--input", "in/", "--output", "out/", "--model", "x3d_nope"], "x3d_nope"),
    "benchmark_unknown_model": (["benchmark", "--model", "x3d_nope"], "x3d_nope"),
}

_PROBE = """
import json, sys
sys.path.insert(0, {root!r})
import submit
results = {{}}
for name, args in json.loads(sys.argv[1]).items():
    try:
        submit.main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    results[name] = [code, sorted(m for m in ("torch", "ray") if m in sys.modules)]
print(json.dumps(results))
"""


def test_name_mistakes_answer_before_torch_and_ray_are_imported(tmp_path: Path):
    """Every name case exits 2 with one line naming the typo, and the process has imported
    neither torch nor Ray by then (they take 10-25 s to load on a busy machine)."""
    env = {k: v for k, v in os.environ.items() if k != "X3D_PRESETS_MODULE" and not k.startswith("RAY_")}
    cases = {name: args for name, (args, _) in NAME_CASES.items()}
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT)), json.dumps(cases)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(NAME_CASES), proc.stderr  # one line per mistake
    for (name, (_, word)), line in zip(NAME_CASES.items(), lines):
        code, heavy = results[name]
        assert code == 2, (name, line)
        assert heavy == [], f"{name}: {heavy} imported before the name was checked"
        assert word in line and "error:" in line and "Traceback" not in line, (name, line)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 7, 11: inputs and outputs


@pytest.fixture(scope="module")
def checkpoint(test_preset_checkpoint: str) -> str:
    return test_preset_checkpoint


@pytest.mark.parametrize("plan", [False, True], ids=["run", "plan"])
@pytest.mark.parametrize("kind", ["folder", "list_file", "plain_file"])
def test_label_input_that_is_not_there_is_a_mistake(kind: str, plan: bool, tmp_path: Path, checkpoint: str, capfd, monkeypatch):
    """A mistyped --input folder used to list nothing, exit 0 and write a manifest, night after
    night; now it is exit 2, one line, before anything is written (a list file: the same)."""
    (tmp_path / "video.mp4").write_bytes(b"not a list")
    given = {"folder": "videos/incomng/", "list_file": "new_videos.txt", "plain_file": "video.mp4"}[kind]
    args = ["label", "--input", given, "--output", "labels", "--model", presets.NAME, "--checkpoint", checkpoint, "--views", "1"]
    monkeypatch.setenv("X3D_PRESETS_MODULE", "tests.presets")
    code, out, err = _main(args + (["--plan"] if plan else []), capfd, monkeypatch, tmp_path)
    line = _one_line(err)
    assert code == 2 and out == "", line
    assert f"--input {given}" in line and ("is a file, not a folder" if kind == "plain_file" else "no such") in line, line
    assert not (tmp_path / "labels").exists()


def test_output_that_is_a_file_says_so(tmp_path: Path, checkpoint: str, capfd, monkeypatch):
    """--output naming a file: 'is a file, not a folder', for evaluate and label, nothing written."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    target = tmp_path / "results.json"
    target.write_text("{}")
    common = ["--model", presets.NAME, "--checkpoint", checkpoint, "--views", "1", "--output", str(target)]
    monkeypatch.setenv("X3D_PRESETS_MODULE", "tests.presets")
    for args in (["evaluate", "--video-list", "list.txt", "--data-root", "videos", *common],
                 ["label", "--input", "videos", *common]):
        code, out, err = _main(args, capfd, monkeypatch, tmp_path)
        line = _one_line(err)
        assert code == 2 and out == "", line
        assert f"--output {target} is a file, not a folder" in line, line
        assert target.read_text() == "{}"


# --------------------------------------------------------------------------- 18: --separator


def test_spaces_in_a_labelled_list_hint_at_separator(tmp_path: Path, capfd, monkeypatch):
    """A list whose paths hold spaces fails in one line that names --separator."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "list.txt").write_text("my clip.mp4 3\nother clip.mp4 4\n")
    code, out, err = _main(["--video-list", "list.txt", "--data-root", "videos", "--model", "x3d_tiny", "--views", "1",
                            "--output", "out"], capfd, monkeypatch, tmp_path)
    line = _one_line(err)
    assert code == 2 and "list.txt:1" in line and "--separator" in line, line
    assert not (tmp_path / "out").exists()


def test_separator_flag_reads_paths_with_spaces(tmp_path: Path):
    import submit

    (tmp_path / "list.txt").write_text("my clip.mp4\t3\nsub dir/other clip.mp4\t4\n")
    args = submit.parse_args(["--video-list", str(tmp_path / "list.txt"), "--data-root", str(tmp_path), "--separator", "tab"])
    from jobs.datasets import iter_items

    items = list(iter_items(submit._dataset_from_args(args)))
    assert [(i.key, i.uri, i.label) for i in items] == [
        ("my clip.mp4", str(tmp_path / "my clip.mp4"), 3),
        ("sub dir/other clip.mp4", str(tmp_path / "sub dir" / "other clip.mp4"), 4),
    ]
    assert submit.parse_args(["--video-list", "x", "--separator", ","]).separator == ","


# --------------------------------------------------------------------------- 17: help, README, entry point


def _subparsers():
    from jobs.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return parser, sub.choices


def test_help_names_presets_protocols_and_datasets_and_every_flag_has_help():
    _, commands = _subparsers()
    protocols = {name for preset in x3d.PRESETS.values() for name in preset.protocols}
    for command, sub in commands.items():
        actions = {a.dest: a for a in sub._actions}
        for action in sub._actions:
            assert action.help, f"{command} {action.option_strings} has no help"
        assert all(name in actions["model"].help for name in x3d.PRESETS), command
        assert set(actions["protocol"].choices) == protocols, command
        if "dataset" in actions:
            assert all(name in actions["dataset"].help for name in load_registry()), command


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_readme_links_the_flag_reference_and_exit_codes_and_names_the_entry_point():
    """Flags are documented once, in docs/cli.md (generated from the parsers), and exit statuses
    once, in docs/exit-codes.md, which lists exactly the statuses submit.py returns."""
    import submit

    section = _readme_section("Commands used most")
    assert "docs/cli.md" in section and "docs/exit-codes.md" in section
    assert "x3d-ray" in _readme_section("Set-up and the main job")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"x3d-ray": "submit:main"}
    codes = (ROOT / "docs" / "exit-codes.md").read_text()
    rows = set(re.findall(r"^\| ([0-9, ]+) \|", codes, flags=re.M))
    statuses = (submit.EXIT_OK, submit.EXIT_USAGE, submit.EXIT_NOTHING_SCORED, submit.EXIT_INFRASTRUCTURE, submit.EXIT_STOPPED)
    assert rows == {*map(str, statuses), f"{submit.EXIT_SIGINT}, {submit.EXIT_SIGTERM}"}


def test_usage_and_errors_name_the_command_typed(monkeypatch, capsys):
    import submit
    from jobs.cli import build_parser

    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/x3d-ray"])
    parser = build_parser()
    assert parser.prog == "x3d-ray"
    with pytest.raises(SystemExit):
        submit.main(["--dataset", "no_such_set"])
    assert capsys.readouterr().err.startswith("x3d-ray: error: unknown dataset 'no_such_set'")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "submit.py")])
    assert build_parser().prog == "submit.py"


# --------------------------------------------------------------------------- 21: packaging and set-up


def _torch_pins(text: str) -> list[str]:
    return re.findall(r"pip install[^\n]*?torch==([0-9.]+)", text)


def test_torch_is_not_pinned_by_the_package_but_by_the_set_up_commands():
    """`pip install -e .` must not replace a CUDA torch; the README's two set-up commands and CI
    install the one CPU build the project is tested on, and the image runs the tested Ray."""
    import ray
    import torch

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_dep,) = [d for d in deps if re.match(r"torch\b", d)]
    assert "==" not in torch_dep and ">=" in torch_dep, torch_dep
    readme = (ROOT / "README.md").read_text()
    tested = torch.__version__.split("+")[0]
    assert _torch_pins(readme) == [tested, tested], "the set-up and the test commands pin the tested torch"
    assert readme.count("pip install torch==") == 2 and "pip install -e ." in readme
    assert _torch_pins((ROOT / ".ci" / "run").read_text()) == [tested]
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(r'"ray\[default\]==([0-9.]+)"', dockerfile).group(1) == ray.__version__


# --------------------------------------------------------------------------- issue 30: a bug is not a request mistake


def test_a_programming_error_in_label_is_a_traceback_and_exit_1(tmp_path: Path, checkpoint: str):
    """label used to map every ValueError, bugs included, to exit 2 and one line ("a mistake in
    the request"); a bug is a traceback and exit 1 (tests/jobs/label_bug.py puts one in --plan)."""
    (tmp_path / "videos").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), X3D_PRESETS_MODULE="tests.presets,tests.jobs.label_bug")
    proc = subprocess.run([sys.executable, str(ROOT / "submit.py"), "label", "--input", "videos", "--output", "out", "--plan",
                           "--model", presets.NAME, "--checkpoint", checkpoint, "--views", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "ValueError: a bug in the job, not a mistake in the request" in proc.stderr, proc.stderr
