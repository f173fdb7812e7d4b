"""``python submit.py`` mistakes: one line on stderr, exit status 2, nothing written, no Ray.

All inputs of a case are valid except the one mistake, so the command fails for that reason
and no other; the unreachable-address cases are the strictest, since everything before
joining the cluster passes.

The cases that can only show their problem in a real process (a Ray start, a traceback or a
native warning printed past Python) run ``python submit.py`` in a subprocess: one per kind
of failure point (argparse, the checkpoint, the address check). Each gets ``RAY_TMPDIR``
pointed at an empty folder, which any Ray start, local or connecting, would fill with a
session folder, and each must end in seconds (``ray.init`` retries an unreachable cluster
for minutes). They run a few at a time, since most of their time is importing torch. The
other cases call ``submit.main`` in this process, which already has torch loaded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import x3d
from tests import presets
from tests.cluster.evalset import SHAPES, run_in_own_session, write_video_list, write_videos

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = str(ROOT / "submit.py")
MAX_SECONDS = 60.0  # per case, several cases sharing the CPUs; ray.init retrying an unreachable cluster takes minutes
PARALLEL = 3


@dataclass
class Inputs:
    folder: Path
    root: Path
    ann_file: Path
    checkpoint: Path
    other_checkpoint: Path  # a real checkpoint, of another model
    free_port: int


@dataclass
class Result:
    args: list[str]
    output: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    ray_tmpdir: Path | None  # RAY_TMPDIR of a subprocess case
    leftover_pids: list[int]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    folder = tmp_path_factory.mktemp("cli")
    root = folder / "videos"
    names = write_videos(root, SHAPES[:2])
    ann_file = write_video_list(folder / "list.txt", [(n, i) for i, n in enumerate(names)])
    checkpoint = presets.write_checkpoint(folder / "x3d_test.pth")
    other = x3d.checkpoints.save_mmaction2_checkpoint(x3d.build_model("x3d_tiny"), folder / "x3d_tiny.pth")
    return Inputs(folder, root, ann_file, checkpoint, Path(other), _free_port())


def _good_args(inp: Inputs) -> dict[str, str]:
    return {
        "--video-list": str(inp.ann_file),
        "--data-root": str(inp.root),
        "--model": presets.NAME,
        "--checkpoint": str(inp.checkpoint),
        "--views": "30",
    }


def _command(inp: Inputs, output: Path, replace: dict[str, str | None], extra: list[str]) -> list[str]:
    args = {**_good_args(inp), "--output": str(output), **replace}
    flat = [x for key, value in args.items() if value is not None for x in (key, value)]
    return ["evaluate", *flat, "--quiet", *extra]


# name: (in a subprocess?, flags replaced (None drops the flag), extra args, extra env, words the one line must contain)
CASES = {
    "unknown_flag": (True, {}, ["--bogus"], {}, ["--bogus"]),
    "bad_flag_value": (False, {"--views": "7"}, [], {}, ["--views", "7"]),
    "zero_shard_size": (False, {}, ["--shard-size", "0"], {}, ["--shard-size"]),
    "nothing_to_evaluate": (False, {"--video-list": None, "--data-root": None}, [], {}, ["--dataset", "--video-list"]),
    "unknown_dataset": (False, {"--video-list": None, "--data-root": None}, ["--dataset", "no_such_set"], {}, ["no_such_set"]),
    "unknown_model": (False, {"--model": "x3d_nope"}, [], {}, ["x3d_nope"]),
    "missing_video_list": (False, {"--video-list": "{folder}/missing.txt"}, [], {}, ["{folder}/missing.txt", "--ann-file"]),
    "missing_data_root": (False, {"--data-root": "{folder}/no_videos"}, [], {}, ["{folder}/no_videos", "--data-root"]),
    "missing_checkpoint": (False, {"--checkpoint": "{folder}/missing.pth"}, [], {}, ["{folder}/missing.pth", "--checkpoint"]),
    "checkpoint_of_another_model": (True, {"--checkpoint": "{other}"}, [], {}, [presets.NAME, "--checkpoint", "--model"]),
    "unreachable_address": (True, {}, ["--address", "127.0.0.1:{port}"], {}, ["127.0.0.1:{port}", "--address"]),
    "unreachable_ray_address_env": (True, {}, [], {"RAY_ADDRESS": "127.0.0.1:{port}"}, ["127.0.0.1:{port}", "RAY_ADDRESS"]),
    "malformed_address": (True, {}, ["--address", "127.0.0.1:notaport"], {}, ["127.0.0.1:notaport", "--address"]),
}
SUBPROCESS_CASES = [name for name, case in CASES.items() if case[0]]


def _fill(text: str, inp: Inputs) -> str:
    return text.format(folder=inp.folder, other=inp.other_checkpoint, port=inp.free_port)


def _case_args(name: str, inp: Inputs, output: Path) -> list[str]:
    _, replace, extra, _, _ = CASES[name]
    replace = {k: None if v is None else _fill(v, inp) for k, v in replace.items()}
    return _command(inp, output, replace, [_fill(a, inp) for a in extra])


def _run_subprocess(name: str, inp: Inputs) -> Result:
    extra_env = CASES[name][3]
    case_dir = inp.folder / "cases" / name
    ray_tmpdir = case_dir / "raytmp"
    ray_tmpdir.mkdir(parents=True)
    output = case_dir / "out"
    args = _case_args(name, inp, output)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PYTHONPATH=str(ROOT),
        X3D_PRESETS_MODULE="tests.presets",
        RAY_TMPDIR=str(ray_tmpdir),
        **{k: _fill(v, inp) for k, v in extra_env.items()},
    )
    code, stdout, stderr, seconds, leftover = run_in_own_session([sys.executable, SUBMIT, *args], case_dir, env, 180, 2.0)
    # anything still alive in the command's session (a Ray it started) is a failure
    return Result(args, output, code, stdout, stderr, seconds, ray_tmpdir, leftover)


@pytest.fixture(scope="module")
def subprocess_results(inputs: Inputs) -> dict[str, Result]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(_run_subprocess, name, inputs) for name in SUBPROCESS_CASES}
        return {name: f.result() for name, f in futures.items()}


def _main_in_process(args: list[str], output: Path, cwd: Path, capfd, monkeypatch) -> Result:
    import ray

    import submit

    for key in [k for k in os.environ if k.startswith("RAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "1")  # main() sets it; restored after the test
    monkeypatch.chdir(cwd)
    ray_before = ray.is_initialized()
    capfd.readouterr()
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        submit.main(args)
    seconds = time.monotonic() - start
    captured = capfd.readouterr()
    assert ray.is_initialized() == ray_before  # neither started nor shut down
    code = exit_info.value.code
    return Result(args, output, code if isinstance(code, int) else 1, captured.out, captured.err, seconds, None, [])


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_is_one_line_and_exit_2(name: str, inputs: Inputs, request, tmp_path: Path, capfd, monkeypatch):
    if CASES[name][0]:
        r = request.getfixturevalue("subprocess_results")[name]
    else:
        output = tmp_path / "out"
        r = _main_in_process(_case_args(name, inputs, output), output, tmp_path, capfd, monkeypatch)
    words = [_fill(w, inputs) for w in CASES[name][4]]
    detail = f"{name}: argv={r.args}\nstderr={r.stderr!r}"
    assert r.returncode == 2, detail
    assert r.stdout == "", detail
    assert r.stderr.endswith("\n") and r.stderr.count("\n") == 1, detail  # exactly one line
    line = r.stderr.strip()
    assert "Traceback" not in line and line.startswith("submit.py"), detail
    assert "error:" in line, detail
    for word in words:
        assert word in line, f"{word!r} missing; {detail}"
    assert not r.output.exists(), detail  # nothing written, not even the folder
    if r.ray_tmpdir is not None:
        assert list(r.ray_tmpdir.iterdir()) == [], f"Ray was started: {detail}"
    assert not r.leftover_pids, detail
    assert r.seconds < MAX_SECONDS, f"took {r.seconds:.1f} s; {detail}"


def test_mistakes_leave_an_existing_run_untouched(inputs: Inputs, tmp_path: Path, capfd, monkeypatch):
    """A second run into a finished run's folder (no --resume), or a --resume that changes the
    request: one line, exit 2, and the earlier run's files stay exactly as they were."""
    output = tmp_path / "out"
    (output / "predictions").mkdir(parents=True)
    manifest = {"job": "evaluate", "dataset": "custom", "model": presets.NAME, "views": 10}
    (output / "run.json").write_text(json.dumps(manifest))
    (output / "predictions" / "part-00000.parquet").write_bytes(b"placeholder")

    def files() -> dict[Path, tuple[int, bytes]]:
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in output.rglob("*") if p.is_file()}

    before = files()
    for extra, words in (([], ["--resume", str(output)]), (["--resume"], ["--resume", "views"])):
        r = _main_in_process(_command(inputs, output, {}, extra), output, tmp_path, capfd, monkeypatch)
        detail = f"argv={r.args}\nstderr={r.stderr!r}"
        assert r.returncode == 2 and r.stdout == "", detail
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("submit.py: error:"), detail
        for word in words:
            assert word in r.stderr, detail
        assert files() == before, detail


def test_help_lists_every_flag_and_exits_0():
    proc = subprocess.run([sys.executable, SUBMIT, "evaluate", "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stderr == ""
    for flag in ("--dataset", "--video-list", "--data-root", "--model", "--checkpoint", "--views", "--protocol", "--output",
                 "--address", "--num-actors", "--batch-size", "--shard-size", "--limit", "--resume", "--save-probs"):
        assert flag in proc.stdout, flag


def test_every_job_config_field_with_a_flag_defaults_to_the_flags_default():
    """Flag defaults are declared once (jobs.cli.FLAGS): a job run from Python (the configs'
    own defaults) behaves as the command run without that flag."""
    import dataclasses

    from jobs.benchmark import BenchmarkConfig
    from jobs.cli import FIELD_FOR_DEST, dest_of, flags_of
    from jobs.evaluate import EvaluateConfig
    from jobs.label import LabelConfig

    checked = 0
    for cls, command in ((EvaluateConfig, "evaluate"), (LabelConfig, "label"), (BenchmarkConfig, "benchmark")):
        flags = {dest_of(f): f for f in flags_of(command)}
        for field in dataclasses.fields(cls):
            flag = flags.get(FIELD_FOR_DEST.get(field.name, field.name))
            if flag is None or field.default is dataclasses.MISSING:
                continue
            expected = flag.default_for(command)
            if expected is None:  # the job decides (its help says how): the field's default is that decision
                continue
            assert field.default == expected, (cls.__name__, field.name, field.default, expected)
            checked += 1
    assert checked >= 25


def test_copied_choices_equal_their_sources():
    """The parser cannot import torch (a flag mistake answers at once), so a few choices are
    copied; each copy is held to its source here."""
    import x3d
    from jobs import cli
    from jobs.features import FEATURE_DTYPES

    choices = {dest: f.options.get("choices") for f in cli.FLAGS for dest in [cli.dest_of(f)]}
    assert tuple(choices["features"]) == tuple(x3d.features.FEATURE_KINDS)
    assert tuple(choices["features_dtype"]) == tuple(FEATURE_DTYPES)
    assert tuple(cli.PRECISIONS) == tuple(x3d.predict.PRECISIONS)
